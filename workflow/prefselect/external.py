"""External quality scores for the model-agnostic baselines: a column of the data, or a reward model's margin.

The paper compares LossDiff-IRM with filters that ignore the model being trained: keep the pairs that GPT-4 rated
best (UltraFeedback's ratings, a column of the dataset) or that a reward model prefers most clearly. The
`external` selector keeps the top share of pairs by the score computed here.

Alignment Potential (Huang et al., ICML 2025) adds the model before preference training: with m_ext that margin and
ℓ̄ the mean per-token log-prob of a completion under the SFT model,

    AP = z(m_ext) − w · z(|ℓ̄(chosen) − ℓ̄(rejected)|),

z the z-score over the training pairs: a pair is worth more the more clearly it is rated, and the less the SFT
model already tells its two answers apart. The `alignment_potential` selector keeps the top share by AP.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .config import judge_settings
from .judges import reward_scores


def column_score(train: pd.DataFrame, column: str, minus: str | None = None) -> np.ndarray:
    """A numeric column of the training data, less another one (e.g. score_chosen − score_rejected)."""
    values = np.zeros(len(train))
    for sign, name in ((1, column), (-1, minus)):
        if name is None:
            continue
        if name not in train.columns:
            raise ValueError(f"the training data has no column {name!r}; it has {sorted(train.columns)}")
        numbers = pd.to_numeric(train[name], errors="coerce")
        if numbers.isna().any():
            bad = train["id"][numbers.isna()]
            raise ValueError(f"column {name!r} is missing or not a number in {len(bad)} rows, e.g. id {bad.iloc[0]!r}")
        values += sign * numbers.to_numpy(dtype=float)
    return values


def reward_margin(train: pd.DataFrame, model: str, trust_remote_code: bool = False) -> np.ndarray:
    """r(prompt + chosen) − r(prompt + rejected) under a reward model (a one-output sequence classifier)."""
    judge = judge_settings({"kind": "reward_model", "model": model, "trust_remote_code": trust_remote_code})
    prompts = train["prompt"].tolist()
    rewards = reward_scores(judge, prompts * 2, train["chosen"].tolist() + train["rejected"].tolist())
    return rewards[: len(train)] - rewards[len(train) :]


def zscore(values: np.ndarray) -> np.ndarray:
    """(x − mean) / standard deviation over the pairs (a constant column scores 0 throughout)."""
    spread = values.std()
    return (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)


def alignment_potential(margin: np.ndarray, sft: pd.DataFrame, weight: float) -> np.ndarray:
    """AP per pair from the external margin and `sft`: summed log-probs `chosen_logp`, `rejected_logp` under the SFT
    model with the token counts they sum over, `chosen_tokens`, `rejected_tokens`, in the same row order."""
    mean_chosen = sft["chosen_logp"].to_numpy() / sft["chosen_tokens"].to_numpy()
    mean_rejected = sft["rejected_logp"].to_numpy() / sft["rejected_tokens"].to_numpy()
    return zscore(margin) - weight * zscore(np.abs(mean_chosen - mean_rejected))


def external_scores(train: pd.DataFrame, spec: dict, sft: pd.DataFrame | None = None) -> pd.DataFrame:
    """`id` and `external` (m_ext) of every training pair for an external selector's `spec`, plus `ap` for an
    alignment_potential selector, which needs `sft` (see `alignment_potential`) for the same pairs."""
    if spec.get("reward_model"):
        values = reward_margin(train, spec["reward_model"], spec.get("trust_remote_code", False))
    else:
        values = column_score(train, spec["column"], spec.get("minus"))
    scores = pd.DataFrame({"id": train["id"].to_numpy(), "external": values})
    if spec["kind"] == "alignment_potential":
        sft = scores[["id"]].merge(sft, on="id", how="left", validate="one_to_one")
        if sft.isna().any().any():
            raise ValueError("the SFT model's log-probs are missing for some training pairs; rerun ref_logps")
        scores["ap"] = alignment_potential(values, sft, spec["weight"])
    return scores
