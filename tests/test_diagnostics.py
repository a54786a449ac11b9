import numpy as np
import pandas as pd
import pytest

from prefselect.diagnostics import auc_flipped_low, decile_table, diagnose


def test_auc_by_hand():
    flipped = np.array([True, False, True, False])
    assert auc_flipped_low(np.array([1.0, 2.0, 3.0, 4.0]), flipped) == pytest.approx(0.75)  # 3 of 4 pairs ordered
    assert auc_flipped_low(np.array([1.0, 1.0, 1.0, 1.0]), flipped) == pytest.approx(0.5)  # ties count half
    assert auc_flipped_low(np.array([0.0, 5.0, 1.0, 6.0]), flipped) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        auc_flipped_low(np.array([1.0, 2.0]), np.array([False, False]))


def test_deciles_locate_the_flips():
    ids = [f"p{i}" for i in range(100)]
    scores = pd.DataFrame({"id": ids, "lossdiff": np.arange(100.0), "irm": -np.arange(100.0), "aux_irm": 0.0})
    train = pd.DataFrame(
        {"id": ids[::-1], "flipped": [i >= 90 for i in range(100)][::-1], "oracle_margin": np.arange(100.0)[::-1]}
    )
    table = decile_table(scores, train, "lossdiff")
    assert list(table["pairs"]) == [10] * 10
    assert list(table["flipped_share"]) == [0.0] * 9 + [1.0]
    assert table["mean_oracle_margin"].iloc[0] == pytest.approx(4.5)
    result = diagnose(scores, train)
    assert result["lossdiff"]["auc_flipped_low"] == pytest.approx(0.0)
    assert result["irm"]["auc_flipped_low"] == pytest.approx(1.0)
