"""Sharding is deterministic: the merged scores do not depend on how many shards computed them."""

import pandas as pd
import pytest
from conftest import build_tiny_lm, make_pairs

from prefselect.cli import main
from prefselect.scoring import merge_shards, shard_rows


@pytest.mark.parametrize("n_rows", [0, 1, 7, 24])
@pytest.mark.parametrize("shards", [1, 2, 3, 5])
def test_shards_cover_every_row_once_in_order(n_rows, shards):
    rows = [i for shard in range(shards) for i in range(n_rows)[shard_rows(n_rows, shard, shards)]]
    assert rows == list(range(n_rows))


def merged_scores(tmp_path, data, sft, warmup, aux, shards: int) -> pd.DataFrame:
    """Reference log-probs and scores of every shard through the `logps` and `score` steps, then merged."""
    parts = []
    for shard in range(shards):
        ref, scores = tmp_path / f"ref-{shard}-of-{shards}.parquet", tmp_path / f"scores-{shard}-of-{shards}.parquet"
        main(["logps", "--model", sft, "--data", str(data), "--shard", str(shard), "--shards", str(shards),
              "--batch-size", "4", "--out", str(ref)])
        main(["score", "--warmup", warmup, "--aux", aux, "--data", str(data), "--ref", str(ref), "--batch-size", "4",
              "--out", str(scores)])
        parts.append(pd.read_parquet(scores))
    return merge_shards(parts, pd.read_parquet(data)["id"])


def test_merged_scores_are_the_same_for_one_and_several_shards(tmp_path, tiny_lm, tiny_lm_other):
    data = tmp_path / "train.parquet"
    make_pairs(23).to_parquet(data)
    models = build_tiny_lm(tmp_path / "sft", seed=2), tiny_lm, tiny_lm_other
    one = merged_scores(tmp_path, data, *models, shards=1)
    for shards in (2, 3):
        many = merged_scores(tmp_path, data, *models, shards)
        pd.testing.assert_frame_equal(one, many, check_exact=False, rtol=1e-5, atol=1e-5)
    # Three different models: no score is trivially zero.
    assert (one[["irm", "aux_irm", "lossdiff"]].abs() > 1e-3).any().all()
