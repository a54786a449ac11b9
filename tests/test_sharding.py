"""Sharding is deterministic: the merged scores, and the selections made from them, do not depend on how many shards
computed them; shards of different inputs do not merge; a shard killed mid-way leaves nothing and reruns alone."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import build_tiny_lm, config_arg, make_pairs

from prefselect import provenance
from prefselect.cli import main
from prefselect.scoring import shard_rows

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("n_rows", [0, 1, 7, 24])
@pytest.mark.parametrize("shards", [1, 2, 3, 5])
def test_shards_cover_every_row_once_in_order(n_rows, shards):
    rows = [i for shard in range(shards) for i in range(n_rows)[shard_rows(n_rows, shard, shards)]]
    assert rows == list(range(n_rows))


BATCH_4 = config_arg(scoring={"batch_size": 4})


def shard_scores(tmp_path, data, sft, warmup, aux, shards: int) -> list[str]:
    """Reference log-probs and scores of every shard through the `logps` and `score` steps."""
    parts = []
    for shard in range(shards):
        ref, scores = tmp_path / f"ref-{shard}-of-{shards}.parquet", tmp_path / f"scores-{shard}-of-{shards}.parquet"
        main(
            [
                "logps",
                *BATCH_4,
                "--model",
                sft,
                "--data",
                str(data),
                "--shard",
                str(shard),
                "--shards",
                str(shards),
                "--out",
                str(ref),
            ]
        )
        main(
            [
                "score",
                *BATCH_4,
                "--warmup",
                warmup,
                "--aux",
                aux,
                "--data",
                str(data),
                "--ref",
                str(ref),
                "--out",
                str(scores),
            ]
        )
        parts.append(str(scores))
    return parts


def merged_scores(tmp_path, data, *models, shards: int) -> Path:
    out = tmp_path / f"scores-{shards}.parquet"
    main(
        [
            "merge-scores",
            "--shards",
            *shard_scores(tmp_path, data, *models, shards),
            "--data",
            str(data),
            "--out",
            str(out),
        ]
    )
    return out


SELECTORS = {
    "lossdiff_irm": {"bands": {"lossdiff": [10, 90], "irm": [10, 90]}},
    "aux_low30": {"bands": {"aux_irm": [30, 100]}},
    "random": {"kind": "random", "fraction": 0.5},
}


def selections(tmp_path, scores: Path, data: Path) -> dict[str, Path]:
    paths = {}
    for name, spec in SELECTORS.items():
        paths[name] = tmp_path / f"{name}-{scores.stem}.parquet"
        main(
            [
                "select",
                "--selector",
                name,
                *config_arg(seed=3, selectors={name: spec}),
                "--scores",
                str(scores),
                "--data",
                str(data),
                "--out",
                str(paths[name]),
            ]
        )
    return paths


def test_scores_and_selections_are_the_same_for_one_and_several_shards(tmp_path, tiny_lm, tiny_lm_other):
    """Each shard count recomputes everything (log-probs, scores, merge, selections): a rerun, too."""
    data = tmp_path / "train.parquet"
    make_pairs(23).to_parquet(data)
    models = build_tiny_lm(tmp_path / "sft", seed=2), tiny_lm, tiny_lm_other
    one = merged_scores(tmp_path, data, *models, shards=1)
    chosen = {name: pd.read_parquet(path) for name, path in selections(tmp_path, one, data).items()}
    for shards in (2, 3):
        many = merged_scores(tmp_path, data, *models, shards=shards)
        pd.testing.assert_frame_equal(
            pd.read_parquet(one), pd.read_parquet(many), check_exact=False, rtol=1e-5, atol=1e-5
        )
        assert provenance.read(many) == {**provenance.read(one), "shards": shards}
        for name, path in selections(tmp_path, many, data).items():
            pd.testing.assert_frame_equal(pd.read_parquet(path), chosen[name])
            assert provenance.read(path) == provenance.read(tmp_path / f"{name}-{one.stem}.parquet")
    # Three different models: no score is trivially zero, and the selections are not trivial.
    assert (pd.read_parquet(one)[["irm", "aux_irm", "lossdiff"]].abs() > 1e-3).any().all()
    assert all(0 < s["selected"].mean() < 1 for s in chosen.values())
    record = provenance.read(tmp_path / f"lossdiff_irm-{one.stem}.parquet")
    assert record["inputs"]["scores"] == provenance.read(one)["fingerprint"]
    assert record["config"]["spec"] == {**SELECTORS["lossdiff_irm"], "kind": "bands"} and record["config"]["seed"] == 3


def test_merge_refuses_shards_of_different_models(tmp_path, tiny_lm, tiny_lm_other, capsys):
    """The state a partial rerun leaves when the warm-up model changed in between: one stale shard."""
    data = tmp_path / "train.parquet"
    make_pairs(8).to_parquet(data)
    fresh = shard_scores(tmp_path / "fresh", data, tiny_lm, tiny_lm_other, tiny_lm, shards=2)
    stale = shard_scores(tmp_path / "stale", data, tiny_lm, tiny_lm, tiny_lm, shards=2)
    out = tmp_path / "scores.parquet"
    with pytest.raises(SystemExit):
        main(["merge-scores", "--shards", fresh[0], stale[1], "--data", str(data), "--out", str(out)])
    error = capsys.readouterr().err
    assert "score shards come from different models" in error
    assert f"{fresh[0]}: inputs.warmup=" in error and f"{stale[1]}: inputs.warmup=" in error
    assert "inputs.aux" not in error  # only what differs
    assert not out.exists()


def test_scores_refuse_reference_log_probs_of_other_pairs(tmp_path, tiny_lm, capsys):
    old, new = tmp_path / "old.parquet", tmp_path / "new.parquet"
    make_pairs(8).to_parquet(old)
    make_pairs(9).to_parquet(new)
    ref = tmp_path / "ref.parquet"
    main(["logps", "--model", tiny_lm, "--data", str(old), "--out", str(ref)])
    with pytest.raises(SystemExit):
        main(
            [
                "score",
                "--warmup",
                tiny_lm,
                "--aux",
                tiny_lm,
                "--data",
                str(new),
                "--ref",
                str(ref),
                "--out",
                str(tmp_path / "scores.parquet"),
            ]
        )
    assert f"reference log-probs {ref} were computed on other pairs" in capsys.readouterr().err


def test_a_shard_killed_mid_way_leaves_nothing_and_its_rerun_merges_to_the_same_scores(
    tmp_path, tiny_lm, tiny_lm_other
):
    data = tmp_path / "train.parquet"
    make_pairs(64).to_parquet(data)
    shards = shard_scores(tmp_path, data, tiny_lm, tiny_lm_other, tiny_lm, shards=2)
    killed = tmp_path / "out" / "1-of-2.parquet"
    killed.parent.mkdir()
    command = [
        sys.executable,
        "-m",
        "prefselect",
        "--threads",
        "1",
        "score",
        "--warmup",
        tiny_lm_other,
        "--aux",
        tiny_lm,
        "--data",
        str(data),
        "--ref",
        str(tmp_path / "ref-1-of-2.parquet"),
        *BATCH_4,
        "--out",
        str(killed),
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    )
    # Mid-shard: the warm-up model's log-probs are done, the auxiliary model's are under way.
    for line in process.stdout:
        if f"under {tiny_lm}" in line:
            process.send_signal(signal.SIGKILL)
            break
    assert process.wait() == -signal.SIGKILL
    assert list(killed.parent.iterdir()) == []  # no partial file, under its name or a temporary one
    main(
        [
            "score",
            "--warmup",
            tiny_lm_other,
            "--aux",
            tiny_lm,
            "--data",
            str(data),
            "--ref",
            str(tmp_path / "ref-1-of-2.parquet"),
            *BATCH_4,
            "--out",
            str(killed),
        ]
    )
    merged = {}
    for name, parts in (("uninterrupted", shards), ("rerun", [shards[0], str(killed)])):
        merged[name] = tmp_path / f"{name}.parquet"
        main(["merge-scores", "--shards", *parts, "--data", str(data), "--out", str(merged[name])])
    pd.testing.assert_frame_equal(
        pd.read_parquet(merged["uninterrupted"]), pd.read_parquet(merged["rerun"]), check_exact=True
    )
    assert provenance.read(merged["uninterrupted"]) == provenance.read(merged["rerun"])
