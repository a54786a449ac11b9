"""Outputs appear under their name only once complete: a write that fails leaves the previous file, or none."""

import pandas as pd
import pyarrow as pa
import pytest

from prefselect.io import write_parquet


def test_a_failed_write_leaves_no_partial_file_and_keeps_the_previous_one(tmp_path):
    path = tmp_path / "scores.parquet"
    unwritable = pd.DataFrame({"id": ["a", "b"], "value": [1.0, object()]})  # pyarrow cannot convert an object
    with pytest.raises(pa.ArrowInvalid):
        write_parquet(unwritable, path)
    assert list(tmp_path.iterdir()) == []
    write_parquet(pd.DataFrame({"id": ["a"], "value": [1.0]}), path)
    with pytest.raises(pa.ArrowInvalid):
        write_parquet(unwritable, path)
    assert list(tmp_path.iterdir()) == [path]
    assert pd.read_parquet(path)["value"].tolist() == [1.0]
