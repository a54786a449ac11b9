"""The likelihood evaluation: log-prob ratios of held-out pairs, checked against a plain loop over the logits."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import config_arg, loop_logps, make_pairs
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefselect.cli import main
from prefselect.config import ConfigError, validate
from prefselect.evaluation import likelihood_win_rates
from prefselect.judges import compare
from prefselect.logps import pair_logps

MAX_LENGTH = 64  # longer than every test pair: nothing is truncated


@pytest.fixture(scope="module")
def heldout():
    return make_pairs(16)


@pytest.fixture(scope="module")
def logps(tiny_lm, tiny_lm_other, heldout):
    """Our log-probs (logps.pair_logps) of the held-out pairs under the opponent and a 'trained' model."""
    out = {}
    for name, folder in (("sft", tiny_lm), ("trained", tiny_lm_other)):
        model = AutoModelForCausalLM.from_pretrained(folder)
        out[name] = pair_logps(model, heldout, AutoTokenizer.from_pretrained(folder), MAX_LENGTH, batch_size=5)
    return out


def test_likelihood_win_rate_matches_a_plain_loop(tiny_lm, tiny_lm_other, heldout, logps):
    ours = likelihood_win_rates({"trained": logps["trained"], "sft": logps["sft"]}, logps["sft"])

    sft, trained = loop_logps(tiny_lm, heldout, MAX_LENGTH), loop_logps(tiny_lm_other, heldout, MAX_LENGTH)
    margin = (trained.chosen_logp - sft.chosen_logp) - (trained.rejected_logp - sft.rejected_logp)
    won = (margin > 0).astype(float).to_numpy()
    assert 0 < won.mean() < 1  # both outcomes occur, so the check can fail
    half = 1.96 * won.std(ddof=1) / np.sqrt(len(won))
    expected = {
        "win_rate": won.mean(),
        "ci_low": won.mean() - half,
        "ci_high": won.mean() + half,
        "n": 16,
        "malformed": 0,
        "mean_margin": margin.mean(),
        "chosen_likelier": (trained.chosen_logp > trained.rejected_logp).mean(),
        "opponent_chosen_likelier": (sft.chosen_logp > sft.rejected_logp).mean(),
    }
    assert ours["trained"] == pytest.approx(expected, abs=1e-5)  # float32 logits, in another order
    # the opponent against itself: every margin is exactly 0, every pair a tie
    assert ours["sft"]["win_rate"] == 0.5 and ours["sft"]["mean_margin"] == 0.0
    assert ours["sft"]["ci_low"] == ours["sft"]["ci_high"] == 0.5


def test_pairs_must_match(logps):
    with pytest.raises(ValueError, match="not scored on the same pairs"):
        likelihood_win_rates({"trained": logps["trained"]}, logps["sft"].iloc[:-1])


def test_evaluate_step_with_the_likelihood_judge(tmp_path, heldout, logps):
    train = make_pairs(10)
    paths = {}
    for name, frame in (("trained", logps["trained"]), ("sft", logps["sft"])):
        paths[name] = tmp_path / f"{name}.parquet"
        frame.to_parquet(paths[name])
    train.to_parquet(tmp_path / "train.parquet")
    selection = pd.DataFrame({"id": train["id"], "selected": [True] * 6 + [False] * 4})
    selection.to_parquet(tmp_path / "selection.parquet")
    half = len(heldout) // 2  # the opponent's log-probs come in shards, as `ref_logps` writes them
    logps["sft"].iloc[:half].to_parquet(tmp_path / "ref-0.parquet")
    logps["sft"].iloc[half:].to_parquet(tmp_path / "ref-1.parquet")
    main(
        [
            "evaluate",
            "--names",
            "sel",
            "--selections",
            str(tmp_path / "selection.parquet"),
            "--samples",
            str(paths["trained"]),
            "--opponent",
            str(tmp_path / "ref-0.parquet"),
            str(tmp_path / "ref-1.parquet"),
            "--prompts",  # empty, as the workflow passes it for the likelihood judge
            "--data",
            str(tmp_path / "train.parquet"),
            *config_arg(evaluation={"judge": "likelihood"}),
            "--out-json",
            str(tmp_path / "results.json"),
            "--out-md",
            str(tmp_path / "results.md"),
        ]
    )
    results = json.loads((tmp_path / "results.json").read_text())
    expected = likelihood_win_rates({"sel": logps["trained"]}, logps["sft"])["sel"]
    assert results["judge"]["kind"] == "likelihood" and results["opponent"] == "sft"
    assert results["selectors"]["sel"] == pytest.approx({"kept": 6, "kept_fraction": 0.6, **expected})
    table = (tmp_path / "results.md").read_text()
    assert "| sel | 0.60 | " in table and "mean margin | chosen likelier |" in table


def test_likelihood_needs_test_pairs_and_no_continuations(tiny_lm):
    base = {"model": {"path": tiny_lm}, "data": {"source": "pairs.jsonl"}, "evaluation": {"judge": "likelihood"}}
    with pytest.raises(ConfigError, match="data.test_fraction: the likelihood judge needs test pairs"):
        validate(base)
    with pytest.raises(ConfigError, match="val_fraction \\+ data.test_fraction must stay below 1"):
        validate({**base, "data": {"source": "pairs.jsonl", "val_fraction": 0.5, "test_fraction": 0.5}})
    valid = validate({**base, "data": {"source": "pairs.jsonl", "test_fraction": 0.2}})
    assert valid["evaluation"]["judge"] == {**valid["evaluation"]["judge"], "kind": "likelihood", "model": None}
    with pytest.raises(ValueError, match="does not compare continuations"):
        compare("likelihood", ["p"], ["a"], ["b"])
