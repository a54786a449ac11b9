"""Cross-fitted scores: stable folds, a warm-up per fold on the other folds, each pair scored by the model that
never trained on it."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import config_arg, loop_logps, make_pairs

from prefselect.cli import main
from prefselect.config import ConfigError
from prefselect.crossfit import fold_of, in_fold, join

BETA = 0.1


def test_folds_are_stable_and_cover_the_pairs():
    ids = make_pairs(200)["id"]
    folds = fold_of(ids, 3, seed=0)
    assert set(folds) == {0, 1, 2} and min(np.bincount(folds)) > 40
    more = pd.concat([make_pairs(260)["id"].iloc[200:], ids.iloc[::-1]])  # more pairs, another order
    moved = dict(zip(more, fold_of(more, 3, seed=0)))
    assert [moved[row_id] for row_id in ids] == list(folds)
    assert (fold_of(ids, 3, seed=1) != folds).any()
    with pytest.raises(ValueError, match="crossfit.folds 1"):
        fold_of(ids, 1, seed=0)
    with pytest.raises(ValueError, match="fold 3 is outside 0..2"):
        in_fold(make_pairs(4), 3, 3, seed=0)


def test_each_pair_is_scored_by_the_fold_model_that_never_trained_on_it(tiny_lm, tmp_path):
    pairs = make_pairs(40)
    ref = loop_logps(tiny_lm, pairs, 64)
    pairs.to_parquet(tmp_path / "train.parquet")
    ref.to_parquet(tmp_path / "ref.parquet")
    common = [
        "--data",
        str(tmp_path / "train.parquet"),
        "--ref",
        str(tmp_path / "ref.parquet"),
        *config_arg(
            seed=5, method={"beta": BETA}, crossfit={"folds": 2}, training={"batch_size": 4, "learning_rate": 1e-2}
        ),
    ]
    for fold in (0, 1):
        main(
            [
                "train",
                "--model",
                tiny_lm,
                *common,
                "--stage",
                "crossfit",
                "--holdout-fold",
                str(fold),
                "--out",
                str(tmp_path / f"xfit-{fold}"),
            ]
        )
        main(
            [
                "crossfit-score",
                "--model",
                str(tmp_path / f"xfit-{fold}"),
                *common,
                "--fold",
                str(fold),
                "--out",
                str(tmp_path / f"{fold}-of-2.parquet"),
            ]
        )
    folds = fold_of(pairs["id"], 2, seed=5)
    for fold in (0, 1):  # warm-up k trained on the other fold only: one step per batch of 4 of its pairs
        log = json.loads((tmp_path / f"xfit-{fold}" / "training_log.json").read_text())
        assert log[-1]["step"] == -(-int((folds != fold).sum()) // 4)
        scored = pd.read_parquet(tmp_path / f"{fold}-of-2.parquet")
        assert sorted(scored["id"]) == sorted(pairs["id"][folds == fold])
    scores = pd.DataFrame({"id": pairs["id"], "irm": 0.0})
    scores.to_parquet(tmp_path / "scores.parquet")
    main(
        [
            "join-crossfit",
            "--scores",
            str(tmp_path / "scores.parquet"),
            "--folds",
            str(tmp_path / "0-of-2.parquet"),
            str(tmp_path / "1-of-2.parquet"),
            "--out",
            str(tmp_path / "crossfit.parquet"),
        ]
    )
    joined = pd.read_parquet(tmp_path / "crossfit.parquet").set_index("id")
    assert list(joined.columns) == ["irm", "xfit_irm", "xfit_loss"] and len(joined) == len(pairs)
    # Recomputed one pair at a time under each fold's model: the score is that of the model that left the pair out.
    under = {fold: loop_logps(str(tmp_path / f"xfit-{fold}"), pairs, 64).set_index("id") for fold in (0, 1)}
    margin = {
        fold: BETA
        * (
            (under[fold]["chosen_logp"] - ref.set_index("id")["chosen_logp"])
            - (under[fold]["rejected_logp"] - ref.set_index("id")["rejected_logp"])
        )
        for fold in (0, 1)
    }
    own = np.where(folds == 0, margin[0].loc[pairs["id"]], margin[1].loc[pairs["id"]])
    other = np.where(folds == 0, margin[1].loc[pairs["id"]], margin[0].loc[pairs["id"]])
    np.testing.assert_allclose(joined.loc[pairs["id"], "xfit_irm"], own, atol=1e-6)
    assert np.abs(own - other).max() > 1e-3  # the two fold models differ, so the check can tell them apart
    np.testing.assert_allclose(joined["xfit_loss"], np.logaddexp(0, -joined["xfit_irm"]), rtol=1e-12)


def test_a_pair_missing_from_every_fold_is_an_error():
    scores = pd.DataFrame({"id": ["a", "b", "c"]})
    fold = pd.DataFrame({"id": ["a", "b"], "xfit_irm": [0.1, 0.2], "xfit_loss": [0.6, 0.5]})
    with pytest.raises(ValueError, match="miss 1 training ids"):
        join(scores, [fold])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"crossfit": {"folds": 1}}, "config key crossfit.folds"),
        (
            {"selectors": {"sel": {"bands": {"xfit_loss": [0, 50]}}}},
            "selectors.sel.bands.xfit_loss: needs crossfit.folds",
        ),
        (
            {
                "crossfit": {"folds": 2},
                "influence": {"enabled": True},
                "selectors": {"sel": {"bands": {"xfit_loss": [0, 50], "influence": [10, 90]}}},
            },
            "selectors.sel.bands: influence and cross-fitted scores are not read together",
        ),
    ],
)
def test_crossfit_settings_are_checked(change, message):
    from prefselect.config import validate

    config = {"model": {"path": "org/m"}, "data": {"source": "p.jsonl"}, **change}
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate(config)
