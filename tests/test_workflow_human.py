"""The human-label case through the real DAG: single-rater pairs in, the gold test pairs judged by likelihood."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import loop_logps
from test_workflow import snakemake

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("e2e-human")
    snakemake(workdir, config="config_human.yaml")
    return workdir / "results"


def test_the_splits_are_the_rated_pairs_and_the_test_pairs_are_gold(out):
    stats = json.loads((out / "demo/pairs_stats.json").read_text())
    report = json.loads((out / "data/report.json").read_text())
    for split in ("train", "val", "dev", "test"):
        made = pd.read_json(out / f"demo/{split}.jsonl", lines=True)
        prepared = pd.read_parquet(out / f"data/{split}.parquet")
        assert len(made) == stats[split]["pairs"] and len(prepared) == report[split] <= len(made)
        assert set(prepared.chosen) <= set(made.chosen)
    test = pd.read_parquet(out / "data/test.parquet")
    assert not test.flipped.any() and (test.oracle_margin >= 1.0).all()
    train = pd.read_parquet(out / "data/train.parquet")
    assert 0 < train.flipped.mean() < 0.3  # single raters disagree with the consensus on some pairs


def test_the_judge_is_implicit_reward_accuracy_on_the_gold_pairs(out):
    """eval/results.json against a plain loop over the test pairs: each final model's margin over the SFT model."""
    results = json.loads((out / "eval/results.json").read_text())
    assert results["judge"]["kind"] == "likelihood" and results["opponent"] == "sft"
    test = pd.read_parquet(out / "data/test.parquet")
    sft = loop_logps(str(out / "models/sft"), test, 48)
    for name in ("full", "lossdiff_irm"):
        own = loop_logps(str(out / f"models/final-{name}"), test, 48)
        margin = (own.chosen_logp - sft.chosen_logp) - (own.rejected_logp - sft.rejected_logp)
        row = results["selectors"][name]
        assert row["win_rate"] == pytest.approx(float((np.sign(margin) * 0.5 + 0.5).mean()), abs=1e-9)
        assert row["chosen_likelier"] == pytest.approx(float((own.chosen_logp > own.rejected_logp).mean()))
        assert row["n"] == len(test)


def test_the_tournament_states_its_gate(out):
    choice = json.loads((out / "eval/dev/choice.json").read_text())
    gate = choice["gate"]
    assert list(choice["candidates"]) == ["lossdiff_irm", "random", "full"]  # the fallback competes too
    assert gate["fallback"] == "full" and gate["rivals"] == 2 and gate["confidence"] == 0.5
    assert choice["chosen"] == (choice["best"] if gate["passed"] else "full")
    page = (out / "eval/tournament.md").read_text()
    if gate["best"] != "full":  # the page says which way the gate went
        assert ("Kept the fallback `full`" in page) == (not gate["passed"])
