"""Selectors: which training pairs to keep.

A band rule keeps a pair when, for every named score column, its value lies between the column's lo-th and
hi-th percentiles (both bounds inclusive, so tied values fall on the same side and [0, 100] keeps all). Bands on
several columns intersect. LossDiff-IRM, LossDiff alone, IRM alone, one-sided cuts and TIF are all band rules.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

KINDS = ("bands", "full", "random", "oracle")


def band_mask(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if not 0 <= lo < hi <= 100:
        raise ValueError(f"band [{lo}, {hi}] must satisfy 0 <= lo < hi <= 100")
    lower, upper = np.percentile(values, [lo, hi])
    return (values >= lower) & (values <= upper)


def select_bands(scores: pd.DataFrame, bands: dict[str, list[float]]) -> np.ndarray:
    """Keep-mask of the intersection of the percentile bands over `scores`' columns."""
    keep = np.ones(len(scores), dtype=bool)
    for column, (lo, hi) in bands.items():
        if column not in scores.columns:
            raise ValueError(f"band on unknown score column {column!r}; columns are {sorted(scores.columns)}")
        keep &= band_mask(scores[column].to_numpy(dtype=float), lo, hi)
    return keep


def select_random(n_rows: int, n_keep: int, seed: int) -> np.ndarray:
    """Keep exactly `n_keep` pairs drawn uniformly with a seeded generator."""
    keep = np.zeros(n_rows, dtype=bool)
    keep[np.random.default_rng(seed).choice(n_rows, size=n_keep, replace=False)] = True
    return keep


def select_oracle(train: pd.DataFrame) -> np.ndarray:
    """Keep exactly the pairs whose label was not flipped (only where the ground truth exists: the demo)."""
    if "flipped" not in train.columns:
        raise ValueError("the oracle selector needs a `flipped` column in the training data (the demo has one)")
    return ~train["flipped"].to_numpy(dtype=bool)


def select(
    name: str,
    spec: dict,
    scores: pd.DataFrame,
    train: pd.DataFrame,
    seed: int = 0,
    like: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Apply selector `spec` (a `selectors` entry of the config) and return `id`, `selected` in score order."""
    kind = spec.get("kind", "bands")
    train = train.set_index("id").loc[scores["id"]].reset_index()
    if kind == "bands":
        keep = select_bands(scores, spec["bands"])
    elif kind == "full":
        keep = np.ones(len(scores), dtype=bool)
    elif kind == "random":
        fraction = like["selected"].mean() if like is not None else spec["fraction"]
        keep = select_random(len(scores), int(round(fraction * len(scores))), seed)
    elif kind == "oracle":
        keep = select_oracle(train)
    else:
        raise ValueError(f"selectors.{name}.kind: {kind!r} is not one of {list(KINDS)}")
    if not keep.any():
        raise ValueError(f"selector {name!r} keeps no pairs; widen its bands")
    return pd.DataFrame({"id": scores["id"].to_numpy(), "selected": keep})
