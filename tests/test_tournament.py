"""The auto selector: grids of candidates, the dev criterion against a plain loop, the choice, its report."""

from __future__ import annotations

import json
import os
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
from conftest import build_tiny_lm, config_arg, loop_logps, make_pairs

from prefselect.cli import main
from prefselect.config import ConfigError, validate
from prefselect.kinds import candidate_names, grid_selectors
from prefselect.selection import select
from prefselect.tournament import (
    adopt_winner,
    choose,
    decide,
    gate_sentence,
    halving_cost,
    ranked,
    report,
    report_markdown,
)

MAX_LENGTH = 64
BETA = 0.1
GUARD = {"criterion": "dev_accuracy", "confidence": 0.8}


def config_with(selectors: dict) -> dict:
    return {"model": {"path": "m"}, "data": {"source": "pairs.jsonl"}, "selectors": selectors}


def test_a_grid_expands_to_band_rules_that_keep_their_fraction():
    grid = {"shapes": ["top", "bottom", "middle"], "columns": ["irm", "lossdiff+irm"], "fractions": [0.5, 0.8]}
    selectors = validate(config_with({"full": {"kind": "full"}, "auto": {"kind": "auto", "grid": grid}}))["selectors"]
    made = grid_selectors(grid)
    assert len(made) == 12 and set(made) <= set(selectors)
    assert made["irm_bottom50"] == {"kind": "bands", "bands": {"irm": [0, 50]}, "fraction": 0.5}  # small margins
    assert made["lossdiff_irm_middle80"] == {
        "kind": "bands",
        "bands": {"lossdiff": [10, 90], "irm": [10, 90]},
        "fraction": 0.8,
    }  # the paper's shape
    assert selectors["auto"] == {
        "kind": "auto",
        "grid": grid,
        "candidates": [],
        "criterion": "dev_margin",
        "screen_epochs": None,
        "finalists": None,
        "fallback": "full",
        "confidence": 0,
        "guard": GUARD,
        "final": {"label_smoothing": 0},
    }
    assert candidate_names(selectors["auto"])[-1] == "full"  # the fallback competes too
    rng = np.random.default_rng(0)
    scores = pd.DataFrame(
        {"id": [f"p{i}" for i in range(1000)], "irm": rng.normal(size=1000), "lossdiff": rng.normal(size=1000)}
    )
    for name, spec in made.items():
        kept = select(name, spec, scores, scores[["id"]])["selected"].to_numpy()
        assert kept.mean() == pytest.approx(spec["fraction"], abs=0.002), name
        irm = scores["irm"].to_numpy()
        if name.startswith("irm_top"):
            assert irm[kept].min() >= irm[~kept].max()
        if name.startswith("irm_bottom"):
            assert irm[kept].max() <= irm[~kept].min()
        if name.startswith("irm_middle"):
            assert irm[~kept].min() < irm[kept].min() and irm[kept].max() < irm[~kept].max()


@pytest.mark.parametrize(
    "selectors, message",
    [
        (
            {"a": {"kind": "auto", "candidates": ["full", "nope"]}, "full": {"kind": "full"}},
            "selectors.a.candidates.1: 'nope' is no selector to compete",
        ),
        (
            {
                "a": {"kind": "auto", "candidates": ["full", "oracle"]},
                "full": {"kind": "full"},
                "oracle": {"kind": "oracle"},
            },
            "selectors.a.candidates.1: 'oracle' reads the ground truth",
        ),
        (
            {"a": {"kind": "auto", "candidates": ["full"]}, "full": {"kind": "full"}},
            "selectors.a: an auto selector needs at least two candidates",
        ),
        (
            {
                "a": {"kind": "auto", "candidates": ["full", "r"]},
                "full": {"kind": "full"},
                "r": {"kind": "random", "like": "a"},
            },
            "selectors.a.candidates.1: 'r' waits for this selector's own choice",
        ),
        (
            {
                "a": {"kind": "auto", "candidates": ["full", "x"]},
                "b": {"kind": "auto", "candidates": ["full", "x"]},
                "full": {"kind": "full"},
                "x": {"kind": "full"},
            },
            "selectors.b: only one selector of kind 'auto'",
        ),
        ({"full": {"kind": "full", "criterion": "dev_loss"}}, "selectors.full.criterion: allowed for kind 'auto' only"),
        (
            {
                "a": {"kind": "auto", "candidates": ["full", "x"], "fraction": 0.5},
                "full": {"kind": "full"},
                "x": {"kind": "full"},
            },
            "selectors.a: `like` and `fraction` do not apply to kind 'auto'",
        ),
        (
            {
                "a": {
                    "kind": "auto",
                    "grid": {"shapes": ["top"], "columns": ["irm"], "fractions": [0.5]},
                    "candidates": ["full"],
                },
                "irm_top50": {"kind": "full"},
                "full": {"kind": "full"},
            },
            "selectors.a.grid: it makes a selector 'irm_top50', but selectors.irm_top50 is already another rule",
        ),
        (
            {"a": {"kind": "auto", "grid": {"shapes": ["top"], "columns": ["irm+nope"], "fractions": [0.5]}}},
            "selectors.a.grid.columns.0",
        ),
        (
            {
                "a": {"kind": "auto", "candidates": ["full", "x"], "criterion": "judge"},
                "full": {"kind": "full"},
                "x": {"kind": "full"},
            },
            "selectors.a.criterion",
        ),
        (
            {
                "a": {"kind": "auto", "candidates": ["full", "x"], "screen_epochs": 2},
                "full": {"kind": "full"},
                "x": {"kind": "full"},
            },
            "selectors.a.screen_epochs: 2 must be below training.final_epochs",
        ),
        (
            {
                "a": {"kind": "auto", "candidates": ["full", "x"], "finalists": 1},
                "full": {"kind": "full"},
                "x": {"kind": "full"},
            },
            "selectors.a.finalists: needs screen_epochs",
        ),
        (
            {
                "a": {"kind": "auto", "candidates": ["full", "x"], "screen_epochs": 1, "finalists": 0},
                "full": {"kind": "full"},
                "x": {"kind": "full"},
            },
            "selectors.a.finalists",
        ),
    ],
)
def test_bad_auto_selectors_name_the_key(selectors, message):
    with pytest.raises(ConfigError, match="config key " + message.replace("(", r"\(").replace("+", r"\+")):
        validate(config_with(selectors))


def test_ties_go_to_the_candidate_that_keeps_more_then_to_the_earlier():
    criteria = {
        name: {"loss": loss, "accuracy": acc}
        for name, loss, acc in [("a", 0.70, 0.6), ("b", 0.70, 0.6), ("c", 0.69, 0.6), ("d", 0.71, 0.6)]
    }
    kept = {"a": 0.5, "b": 1.0, "c": 0.4, "d": 0.8}
    assert choose(criteria, kept, "dev_loss") == "c"
    assert choose(criteria, kept, "dev_accuracy") == "b"
    assert choose(criteria, {**kept, "b": 0.5, "d": 0.5}, "dev_accuracy") == "a"


@pytest.fixture(scope="module")
def candidates(tmp_path_factory):
    """Three 'final models' (tiny LMs of different weights) beside the SFT one, and their selections."""
    root = tmp_path_factory.mktemp("tournament")
    models = {name: build_tiny_lm(root / name, seed=seed) for name, seed in (("sft", 0), ("a", 1), ("b", 2), ("c", 3))}
    dev = make_pairs(20)
    dev.to_parquet(root / "dev.parquet")
    train = make_pairs(10)
    for name, n_kept in (("a", 5), ("b", 10), ("c", 7)):
        pd.DataFrame({"id": train["id"], "selected": np.arange(10) < n_kept}).to_parquet(root / f"sel-{name}.parquet")
    for name, folder in models.items():  # the workflow's own log-prob step
        main(
            [
                "logps",
                "--model",
                folder,
                "--data",
                str(root / "dev.parquet"),
                *config_arg(data={"max_length": MAX_LENGTH}, scoring={"batch_size": 7}),
                "--out",
                str(root / f"logps-{name}.parquet"),
            ]
        )
    return root, models, dev


def run_tournament(root, criterion: str, fallback: str | None = None, confidence: float = 0.9) -> dict:
    auto = {
        "kind": "auto",
        "candidates": list("abc"),
        "criterion": criterion,
        "fallback": fallback,
        "confidence": confidence,
        "guard": None,
    }
    main(
        [
            "tournament",
            "--names",
            "a",
            "b",
            "c",
            "--logps",
            *(str(root / f"logps-{n}.parquet") for n in "abc"),
            "--ref",
            str(root / "logps-sft.parquet"),
            "--selections",
            *(str(root / f"sel-{n}.parquet") for n in "abc"),
            "--selector",
            "auto",
            "--out-selection",
            str(root / "auto.parquet"),
            *config_arg(method={"beta": BETA}, selectors={"auto": auto}),
            "--out-choice",
            str(root / "choice.json"),
        ]
    )
    return json.loads((root / "choice.json").read_text())


def test_dev_criterion_equals_a_plain_loop_and_the_choice_is_its_best(candidates):
    root, models, dev = candidates
    choice = run_tournament(root, "dev_loss")
    sft = loop_logps(models["sft"], dev, MAX_LENGTH)
    expected = {}
    for name in "abc":
        own = loop_logps(models[name], dev, MAX_LENGTH)
        h = ((own.chosen_logp - sft.chosen_logp) - (own.rejected_logp - sft.rejected_logp)).to_numpy()
        per_pair = {"margin": BETA * h, "accuracy": (h > 0).astype(float), "loss": np.log1p(np.exp(-BETA * h))}
        expected[name] = {"n": 20}
        for key, values in per_pair.items():
            half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
            expected[name] |= {
                key: values.mean(),
                f"{key}_low": values.mean() - half,
                f"{key}_high": values.mean() + half,
            }
        assert 0 < per_pair["accuracy"].mean() < 1  # both outcomes occur, so the check can fail
        got = {key: choice["candidates"][name][key] for key in expected[name]}
        assert got == pytest.approx(expected[name], abs=1e-5)  # float32 logits, in another order
    assert choice["chosen"] == min(expected, key=lambda n: expected[n]["loss"])
    assert choice["candidates"][choice["chosen"]]["gap"] == 0.0
    assert choice["candidates"]["b"]["kept_fraction"] == 1.0
    # the auto selection is the chosen candidate's, row for row
    pd.testing.assert_frame_equal(
        pd.read_parquet(root / "auto.parquet"),
        pd.read_parquet(root / f"sel-{choice['chosen']}.parquet"),
        check_exact=True,
    )
    for criterion, key, best in (("dev_accuracy", "accuracy", max), ("dev_margin", "margin", max)):
        top = best(expected[n][key] for n in "abc")
        assert run_tournament(root, criterion)["chosen"] in [n for n in "abc" if expected[n][key] == top]


@pytest.mark.parametrize("finalists, fallback", [(1, "b"), (2, None), (3, "a")])
def test_the_screen_rung_lets_the_k_best_and_the_fallback_continue(candidates, finalists, fallback):
    """The screen rung's criteria are the tournament's on the same models; its finalists the k best by them (ties
    as the tournament breaks them), then the fallback where it is not among them."""
    root, _, _ = candidates
    auto = {
        "kind": "auto",
        "candidates": list("abc"),
        "criterion": "dev_loss",
        "fallback": fallback,
        "screen_epochs": 1,
        "finalists": finalists,
    }
    main(
        [
            "screen-rung",
            "--names",
            "a",
            "b",
            "c",
            "--logps",
            *(str(root / f"logps-{n}.parquet") for n in "abc"),
            "--ref",
            str(root / "logps-sft.parquet"),
            "--selections",
            *(str(root / f"sel-{n}.parquet") for n in "abc"),
            "--selector",
            "auto",
            *config_arg(method={"beta": BETA}, selectors={"auto": auto}),
            "--out",
            str(root / "rung.json"),
        ]
    )
    rung = json.loads((root / "rung.json").read_text())
    tournament = run_tournament(root, "dev_loss")["candidates"]
    for name, row in rung["candidates"].items():
        assert row == {key: tournament[name][key] for key in row}
    order = sorted("abc", key=lambda n: tournament[n]["loss"])
    assert len(set(tournament[n]["loss"] for n in "abc")) == 3  # no tie: the order is the losses'
    assert ranked(rung["candidates"], {n: 1.0 for n in "abc"}, "dev_loss") == order
    expected = order[:finalists] + ([fallback] if fallback and fallback not in order[:finalists] else [])
    assert rung["finalists"] == expected and rung["cut"] == [n for n in order if n not in expected]


def test_halving_cost_counts_every_screen_run_and_the_finalists_remaining_steps():
    screens = {
        "a": {"steps": 4, "max_steps": 16, "seconds": 10.0},
        "b": {"steps": 2, "max_steps": 8, "seconds": 6.0},
        "c": {"steps": 3, "max_steps": 12, "seconds": 8.0},
    }
    cost = halving_cost(screens, {"b": 20.0})
    # screens 4 + 2 + 3; b continues its 8 - 2; a full tournament trains 16 + 8 + 12
    assert (cost["screen_steps"], cost["finalist_steps"], cost["steps"], cost["full_tournament_steps"]) == (
        9,
        6,
        15,
        36,
    )
    assert cost["share_of_full"] == pytest.approx(15 / 36)
    assert (cost["screen_seconds"], cost["finalist_seconds"]) == (24.0, 20.0)


def test_the_fallback_is_kept_unless_the_best_leads_it_by_the_corrected_z(candidates):
    """The gate's z is the paired lead's mean over its standard error (a hand computation); the bar is the
    one-sided normal quantile of the confidence, Bonferroni-corrected for the two rivals."""
    root, models, dev = candidates
    open_choice = run_tournament(root, "dev_margin")
    best = open_choice["best"]
    fallback = next(n for n in "abc" if n != best)
    sft = loop_logps(models["sft"], dev, MAX_LENGTH)

    def margins(name):
        own = loop_logps(models[name], dev, MAX_LENGTH)
        return BETA * ((own.chosen_logp - sft.chosen_logp) - (own.rejected_logp - sft.rejected_logp)).to_numpy()

    lead = margins(best) - margins(fallback)
    z = lead.mean() / (lead.std(ddof=1) / np.sqrt(len(lead)))
    assert z > 0
    confidence_at = {bar: 1 - 2 * (1 - NormalDist().cdf(bar)) for bar in (0.5 * z, 2 * z)}  # bars below and above z
    passed = run_tournament(root, "dev_margin", fallback, confidence_at[0.5 * z])
    kept = run_tournament(root, "dev_margin", fallback, confidence_at[2 * z])
    for choice, bar in ((passed, 0.5 * z), (kept, 2 * z)):
        assert choice["gate"]["z"] == pytest.approx(z, rel=1e-4)
        assert choice["gate"]["z_needed"] == pytest.approx(bar) and choice["gate"]["rivals"] == 2
        assert choice["best"] == best
    assert passed["chosen"] == best and passed["gate"]["passed"]
    assert kept["chosen"] == fallback and not kept["gate"]["passed"]
    assert kept["gate"]["dev_pairs_needed"] == int(np.ceil(len(dev) * 4))  # twice the z: four times the pairs
    assert kept["candidates"][fallback]["gap"] == 0.0  # gaps are taken to the candidate chosen
    pd.testing.assert_frame_equal(
        pd.read_parquet(root / "auto.parquet"), pd.read_parquet(root / f"sel-{fallback}.parquet"), check_exact=True
    )
    assert run_tournament(root, "dev_margin", fallback, 0)["chosen"] == best  # confidence 0: no test


def test_a_lead_bought_with_worse_dev_accuracy_keeps_the_fallback():
    """A candidate whose margin grows by confidence on half the pairs while it gets the other half wrong leads the
    fallback on the dev margin, and trails it on dev accuracy: the guard keeps the fallback; without it, or when
    its accuracy is no worse, the candidate is chosen."""
    n = 40
    ids = [f"p{i}" for i in range(n)]
    steady = pd.Series(np.where(np.arange(n) < 30, 1.0, -1.0), index=ids)  # right on 30 of 40, small margins
    bold = pd.Series(np.where(np.arange(n) % 2 == 0, 10.0, -1.0), index=ids)  # right on 20, large margins
    better = pd.Series(np.where(np.arange(n) < 34, 10.0, -1.0), index=ids)  # large margins and right more often
    kept = {"full": 1.0, "bold": 0.6, "better": 0.6}
    guarded = decide({"full": steady, "bold": bold}, kept, BETA, "sigmoid", "dev_margin", "full", 0.8, GUARD)
    gate = guarded["gate"]
    lead = BETA * (bold - steady)
    assert gate["z"] == pytest.approx(lead.mean() / lead.std(ddof=1) * np.sqrt(n)) and gate["z"] > gate["z_needed"]
    accuracy = (bold > 0).astype(float) - (steady > 0).astype(float)
    assert gate["guard_z"] == pytest.approx(accuracy.mean() / accuracy.std(ddof=1) * np.sqrt(n))
    assert gate["guard_bound"] == pytest.approx(-NormalDist().inv_cdf(0.8)) and gate["harmed"]
    assert guarded["best"] == "bold" and guarded["chosen"] == "full"
    assert "trails it on dev_accuracy" in gate_sentence(gate, "dev_margin")
    assert (
        decide({"full": steady, "bold": bold}, kept, BETA, "sigmoid", "dev_margin", "full", 0.8, None)["chosen"]
        == "bold"
    )
    assert (
        decide({"full": steady, "better": better}, kept, BETA, "sigmoid", "dev_margin", "full", 0.8, GUARD)["chosen"]
        == "better"
    )


def test_the_winners_model_is_adopted_without_a_second_copy(candidates, tmp_path):
    root, models, _ = candidates
    (root / "b" / ".snakemake_timestamp").touch()  # as Snakemake leaves in a folder output
    out = tmp_path / "final-auto"
    assert adopt_winner({"chosen": "b"}, {n: models[n] for n in "abc"}, str(out)) == "b"
    files = [file for file in os.listdir(models["b"]) if not file.startswith(".")]
    assert sorted(os.listdir(out)) == sorted(files) and "model.safetensors" in files
    for file in files:
        assert (out / file).read_bytes() == (root / "b" / file).read_bytes()
        assert os.path.samefile(out / file, root / "b" / file)  # a hard link on one file system


def test_report_correlates_the_criterion_with_the_judge_and_states_the_regret():
    choice = {
        "chosen": "b",
        "best": "b",
        "gate": None,
        "criterion": "dev_loss",
        "candidates": {
            name: {
                "kept_fraction": kept,
                "loss": loss,
                "loss_low": loss - 0.1,
                "loss_high": loss + 0.1,
                "accuracy": 0.6,
                "accuracy_low": 0.5,
                "accuracy_high": 0.7,
                "n": 10,
                "margin": 1 - loss,
                "margin_low": 0.0,
                "margin_high": 1.0,
                "gap": 0.0,
                "gap_low": 0.0,
                "gap_high": 0.0,
            }
            for name, kept, loss in (("a", 1.0, 0.9), ("b", 0.64, 0.5), ("c", 0.64, 0.7), ("d", 0.5, 0.6))
        },
    }
    results = {
        "opponent": "sft",
        "selectors": {
            name: {"win_rate": rate, "ci_low": rate - 0.05, "ci_high": rate + 0.05, "flipped_share_kept": 0.2}
            for name, rate in (("a", 0.55), ("b", 0.60), ("c", 0.62), ("d", 0.58))
        },
    }
    specs = {
        "a": {"kind": "full"},
        "b": {"kind": "bands", "bands": {"irm": [0, 50]}, "fraction": 0.64},
        "c": {"kind": "bands", "bands": {"lossdiff": [10, 90], "irm": [10, 90]}},
        "d": {"kind": "random", "like": "b"},
    }
    rep = report(choice, results, specs, "final")
    # by the criterion (lower loss better): b > d > c > a; by the judge: c > b > d > a
    assert rep["spearman_criterion_vs_judge"] == pytest.approx(0.4)
    assert rep["regret"] == pytest.approx(0.02) and rep["best_in_hindsight"] == "c"
    assert rep["candidates"]["b"]["rule"] == "irm [0, 50], 64% kept"
    assert rep["candidates"]["c"]["rule"] == "lossdiff [10, 90] ∩ irm [10, 90]"
    assert rep["candidates"]["d"]["rule"] == "random, as many as b"
    table = report_markdown(rep)
    assert "| **b** | irm [0, 50], 64% kept | 0.64 |" in table and "hindsight is `c`" in table
    assert "| dev_loss (configured) | b | 0.40 | 0.020 |" in table
    assert "| dev_accuracy | a | – | 0.070 |" in table  # every accuracy ties: the one that keeps the most pairs
    assert "No fallback: the best candidate is taken" in table
    gated = {
        **choice,
        "chosen": "a",
        "gate": {
            "best": "b",
            "fallback": "a",
            "confidence": 0.9,
            "rivals": 3,
            "lead": 0.01,
            "z": 1.2,
            "z_needed": 2.13,
            "guard": None,
            "guard_z": None,
            "guard_bound": -np.inf,
            "harmed": False,
            "passed": False,
            "dev_pairs": 250,
            "dev_pairs_needed": 788,
        },
    }
    kept = report(gated, results, specs, "final")
    assert kept["chosen"] == "a" and kept["best"] == "b" and kept["regret"] == pytest.approx(0.07)
    assert (
        "**Kept the fallback `a`**: 250 dev pairs cannot tell `b` from it (paired lead of `b` over `a` on the "
        "250 dev pairs: z = 1.20; 2.13 needed for 90% confidence against 3 rival candidates); the same lead "
        "would need about 788 dev pairs."
    ) in report_markdown(kept)
    screened = report(choice, results, specs, "screen")  # the judge saw other models than the dev criterion did
    assert screened["regret"] is None and "win_rate" not in screened["candidates"]["a"]
