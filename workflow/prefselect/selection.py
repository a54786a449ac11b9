"""Selectors: which training pairs to keep.

A band rule keeps a pair when, for every named score column, its value lies between the column's lo-th and
hi-th percentiles (both bounds inclusive, so tied values fall on the same side and [0, 100] keeps all). Bands on
several columns intersect. LossDiff-IRM, LossDiff alone, IRM alone, one-sided cuts and TIF are all band rules.

A band rule given a target kept fraction keeps the shape of its bands and scales their cuts: [lo, hi] becomes
[s·lo, 100 − s·(100 − hi)] with one factor s for every column, the largest that still keeps the target. An
external selector keeps the pairs with the highest external quality score (a data column, or a reward model's
margin), exactly the target's share of them; an alignment_potential selector those with the highest AP.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .kinds import EXTERNAL_SCORE, KINDS


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


def fit_bands(scores: pd.DataFrame, shape: dict[str, list[float]], fraction: float) -> dict[str, list[float]]:
    """The bands of `shape` with their cuts scaled by one factor, the largest that keeps at least `fraction`."""
    cuts = {column: (lo, 100 - hi) for column, (lo, hi) in shape.items()}
    if not any(lo or hi for lo, hi in cuts.values()):
        raise ValueError(f"bands {shape} cut nothing, so no scaling of them reaches a kept fraction of {fraction}")
    widest_scale = 100 / max(lo + hi for lo, hi in cuts.values())  # beyond it some band is empty

    def scaled(factor: float) -> dict[str, list[float]]:
        return {column: [factor * lo, 100 - factor * hi] for column, (lo, hi) in cuts.items()}

    keeps, cuts_too_much = 0.0, widest_scale
    for _ in range(40):  # to widest_scale / 2^40: far finer than one pair's share of the percentiles
        middle = (keeps + cuts_too_much) / 2
        if select_bands(scores, scaled(middle)).mean() >= fraction:
            keeps = middle
        else:
            cuts_too_much = middle
    return scaled(keeps)


def select_top(values: np.ndarray, n_keep: int) -> np.ndarray:
    """Keep the `n_keep` highest values; among equal values, the earlier rows."""
    keep = np.zeros(len(values), dtype=bool)
    keep[np.argsort(-values, kind="stable")[:n_keep]] = True
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
    """Apply selector `spec` (a `selectors` entry of the config) and return `id`, `selected` in score order; a band
    rule's bands as applied (fitted to a target kept fraction where it has one) are in the frame's attrs["bands"]."""
    kind = spec.get("kind", "bands")
    train = train.set_index("id").loc[scores["id"]].reset_index()
    # The kept fraction asked for: that of the `like` selection, or `fraction`; bands may go without one.
    target = like["selected"].mean() if like is not None else spec.get("fraction")
    n_target = None if target is None else int(round(target * len(scores)))
    if kind == "bands":
        bands = spec["bands"] if target is None else fit_bands(scores, spec["bands"], target)
        keep = select_bands(scores, bands)
    elif kind == "full":
        keep = np.ones(len(scores), dtype=bool)
    elif kind == "random":
        keep = select_random(len(scores), n_target, seed)
    elif kind in EXTERNAL_SCORE:
        keep = select_top(scores[EXTERNAL_SCORE[kind]].to_numpy(dtype=float), n_target)
    elif kind == "oracle":
        keep = select_oracle(train)
    else:
        raise ValueError(f"selectors.{name}.kind: {kind!r} is not one of {list(KINDS)}")
    if not keep.any():
        raise ValueError(f"selector {name!r} keeps no pairs; widen its bands")
    selection = pd.DataFrame({"id": scores["id"].to_numpy(), "selected": keep})
    if kind == "bands":
        selection.attrs["bands"] = bands
    return selection
