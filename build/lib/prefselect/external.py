"""External quality scores for the model-agnostic baselines: a column of the data, or a reward model's margin.

The paper compares LossDiff-IRM with filters that ignore the model being trained: keep the pairs that GPT-4 rated
best (UltraFeedback's ratings, a column of the dataset) or that a reward model prefers most clearly. The
`external` selector keeps the top share of pairs by the score computed here.
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
    return rewards[: len(train)] - rewards[len(train):]


def external_scores(train: pd.DataFrame, spec: dict) -> pd.DataFrame:
    """`id` and `external` of every training pair, for an `external` selector's `spec`."""
    if spec.get("reward_model"):
        values = reward_margin(train, spec["reward_model"], spec.get("trust_remote_code", False))
    else:
        values = column_score(train, spec["column"], spec.get("minus"))
    return pd.DataFrame({"id": train["id"].to_numpy(), "external": values})
