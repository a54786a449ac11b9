"""External selectors and target kept fractions: a data column, a reward model's margin, scaled bands."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import completion_tokens, config_arg, loop_logps
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from prefselect.cli import main
from prefselect.external import alignment_potential, column_score, external_scores
from prefselect.logps import completion_lengths
from prefselect.models import load_tokenizer
from prefselect.selection import fit_bands, select, select_bands, select_top


def numbered(n: int, **columns) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"p{i}" for i in range(n)], **columns})


def test_top_keeps_the_highest_and_breaks_ties_by_row_order():
    values = np.array([1.0, 5.0, 3.0, 5.0, 3.0, 0.0])
    assert list(np.flatnonzero(select_top(values, 3))) == [1, 2, 3]


def test_column_score_subtracts_and_names_a_bad_row():
    train = numbered(3, score_chosen=[9.0, 7.0, 8.0], score_rejected=[1.0, 6.5, 8.0])
    assert column_score(train, "score_chosen", "score_rejected").tolist() == [8.0, 0.5, 0.0]
    train.loc[1, "score_chosen"] = None
    with pytest.raises(ValueError, match="'score_chosen'.* 1 rows, e.g. id 'p1'"):
        column_score(train, "score_chosen")
    with pytest.raises(ValueError, match="no column 'rating'"):
        column_score(train, "rating")


def test_external_selector_keeps_the_target_share_of_the_best_rated():
    train = numbered(10, rating=[3, 9, 1, 7, 5, 8, 2, 6, 4, 0])
    scores = external_scores(train, {"kind": "external", "column": "rating"})
    chosen = select("gpt4", {"kind": "external", "column": "rating", "fraction": 0.3}, scores, train)
    assert chosen.loc[chosen["selected"], "id"].tolist() == ["p1", "p3", "p5"]
    like = numbered(10, selected=np.arange(10) < 4)
    chosen = select("gpt4", {"kind": "external", "column": "rating", "like": "x"}, scores, train, like=like)
    assert sorted(train.loc[chosen["selected"], "rating"]) == [6, 7, 8, 9]


def test_reward_margin_is_the_difference_of_single_forward_passes(reward_model):
    train = numbered(
        4,
        prompt=["The film", "A plot", "It", "The cast"],
        chosen=[" was fun!", " so bad", " is great!", " was a joy to watch from start to finish"],
        rejected=[" was dull.", " so good!", " is!", " shone"],
    )
    margin = external_scores(train, {"kind": "external", "reward_model": reward_model})["external"].to_numpy()
    model = AutoModelForSequenceClassification.from_pretrained(reward_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(reward_model)

    def reward(text: str) -> float:  # one unpadded sequence at a time
        with torch.no_grad():
            return model(**tokenizer(text, return_tensors="pt")).logits[0, 0].item()

    expected = [reward(p + c) - reward(p + r) for p, c, r in train[["prompt", "chosen", "rejected"]].to_numpy()]
    np.testing.assert_allclose(margin, expected, atol=1e-5)
    assert (margin[:1] > 5).all() and (margin[1:2] < -5).all()  # '!' ends only the chosen, then only the rejected


def test_external_score_step_writes_one_row_per_pair(tmp_path):
    train = numbered(5, prompt="p", chosen="c", rejected="r", rating=[1, 2, 3, 4, 5])
    train.to_parquet(tmp_path / "train.parquet")
    out = tmp_path / "external.parquet"
    main(
        [
            "external-score",
            "--selector",
            "rated",
            *config_arg(selectors={"rated": {"kind": "external", "column": "rating", "fraction": 0.5}}),
            "--data",
            str(tmp_path / "train.parquet"),
            "--out",
            str(out),
        ]
    )
    assert pd.read_parquet(out).to_dict("list") == {"id": train["id"].tolist(), "external": [1.0, 2, 3, 4, 5]}


def test_alignment_potential_is_a_hand_computation():
    """m_ext = [1, −1, 1, −1] has mean 0 and standard deviation 1, so z(m_ext) = m_ext. The SFT model's mean
    per-token log-probs differ by ℓ̄(chosen) − ℓ̄(rejected) = [−2, 0, 0, 2]: absolute [2, 0, 0, 2], z = [1, −1, −1, 1]
    (a gap of −2 counts as much as one of 2). AP = z(m_ext) − w·z(gap)."""
    sft = pd.DataFrame(
        {
            "chosen_logp": [-6.0, -8, -15, -2],
            "chosen_tokens": [2, 4, 5, 1],
            "rejected_logp": [-1.0, -4, -15, -12],
            "rejected_tokens": [1, 2, 5, 3],
        }
    )
    margin = np.array([1.0, -1, 1, -1])
    np.testing.assert_allclose(alignment_potential(margin, sft, weight=1), [0, 0, 2, -2])
    np.testing.assert_allclose(alignment_potential(margin, sft, weight=0.5), [0.5, -0.5, 1.5, -1.5])
    np.testing.assert_allclose(alignment_potential(margin, sft, weight=0), margin)
    train = numbered(4, rating=margin)
    spec = {"kind": "alignment_potential", "column": "rating", "weight": 1, "fraction": 0.25}
    scores = external_scores(train, spec, sft.assign(id=train["id"]))
    assert scores["external"].tolist() == margin.tolist()
    chosen = select("ap", spec, scores, train)
    assert chosen.loc[chosen["selected"], "id"].tolist() == ["p2"]


def test_completion_lengths_count_the_tokens_the_log_probs_sum_over(tiny_lm, pairs):
    ours = completion_lengths(pairs, load_tokenizer(tiny_lm), 64)
    counted = completion_tokens(tiny_lm, pairs)
    assert ours["chosen_tokens"].tolist() == counted["chosen"].tolist()
    assert ours["rejected_tokens"].tolist() == counted["rejected"].tolist()
    prompt = pairs["prompt"].map(lambda text: len(load_tokenizer(tiny_lm)(text)["input_ids"]))
    limit = int(prompt.max()) + 3  # cut as TRL cuts prompt + completion: the completion gets what room is left
    short = completion_lengths(pairs, load_tokenizer(tiny_lm), limit)
    assert (short["chosen_tokens"] < counted["chosen"]).any()
    assert (short["chosen_tokens"] == np.minimum(counted["chosen"], limit - prompt)).all()


def test_alignment_potential_step_reads_the_sft_models_log_probs(tiny_lm, pairs, tmp_path):
    rated = pairs.assign(rating=np.linspace(-1, 2, len(pairs)) ** 2)
    rated.to_parquet(tmp_path / "train.parquet")
    sft = loop_logps(tiny_lm, pairs, 64)
    sft.to_parquet(tmp_path / "ref.parquet")
    spec = {"kind": "alignment_potential", "column": "rating", "weight": 1, "fraction": 0.4}
    argv = [
        "external-score",
        "--selector",
        "ap",
        *config_arg(selectors={"ap": spec}, data={"max_length": 64}),
        "--data",
        str(tmp_path / "train.parquet"),
        "--out",
        str(tmp_path / "ap.parquet"),
    ]
    for without in ([], ["--ref", "--tokenizer"]):  # left out, or empty as the workflow passes them for other kinds
        with pytest.raises(SystemExit):
            main([*argv, *without])  # without the SFT model's log-probs
    main([*argv, "--ref", str(tmp_path / "ref.parquet"), "--tokenizer", tiny_lm])
    tokens = completion_tokens(tiny_lm, pairs)
    mean_gap = np.abs(sft["chosen_logp"] / tokens["chosen"] - sft["rejected_logp"] / tokens["rejected"]).to_numpy()

    def z(x):
        return (x - x.mean()) / x.std()

    expected = z(rated["rating"].to_numpy()) - z(mean_gap)
    np.testing.assert_allclose(pd.read_parquet(tmp_path / "ap.parquet")["ap"], expected, rtol=1e-6)


def test_fitted_bands_keep_their_shape_and_reach_the_target():
    rng = np.random.default_rng(0)
    scores = numbered(1000, lossdiff=rng.normal(size=1000), irm=rng.normal(size=1000))
    two_sided = fit_bands(scores, {"lossdiff": [10, 90], "irm": [10, 90]}, 0.64)
    (lo, hi), (lo2, hi2) = two_sided["lossdiff"], two_sided["irm"]
    assert lo == pytest.approx(100 - hi) and (lo, hi) == (lo2, hi2)  # symmetric, the same on both
    kept = select_bands(scores, two_sided).mean()
    assert 0.64 <= kept <= 0.64 + 0.003
    one_sided = fit_bands(scores, {"lossdiff": [30, 100]}, 0.5)
    assert one_sided["lossdiff"][1] == 100 and one_sided["lossdiff"][0] == pytest.approx(50, abs=0.1)
    uneven = fit_bands(scores, {"lossdiff": [10, 70]}, 0.8)  # cuts 10 below and 30 above: scaled alike
    assert uneven["lossdiff"][0] * 3 == pytest.approx(100 - uneven["lossdiff"][1])


def test_a_band_selector_matches_the_kept_fraction_of_another():
    scores = numbered(200, lossdiff=np.arange(200.0), irm=np.arange(200.0) * 37 % 200)  # no ties
    like = numbered(200, selected=np.arange(200) < 90)
    chosen = select("lossdiff_irm", {"bands": {"lossdiff": [10, 90], "irm": [10, 90]}}, scores, scores, like=like)
    assert 90 <= chosen["selected"].sum() <= 92
    lo, hi = chosen.attrs["bands"]["lossdiff"]
    assert lo > 10 and hi == pytest.approx(100 - lo)  # 45% kept: the [10, 90] shape cut deeper


def test_bands_that_cut_nothing_cannot_reach_a_fraction():
    with pytest.raises(ValueError, match="cut nothing"):
        fit_bands(numbered(10, irm=np.arange(10.0)), {"irm": [0, 100]}, 0.5)
