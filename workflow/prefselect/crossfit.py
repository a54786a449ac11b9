"""Cross-fitted scores: each training pair scored by a warm-up model that never trained on it.

The warm-up θ sees every pair it scores, and on a small model it memorises them, so its IRM measures how easily a
pair was learned rather than how the model generalises. With `crossfit.folds: K` the pairs split into K stable
folds (a hash of the seed and the pair's id); warm-up k trains from the SFT model on the other K − 1 folds, and
scores the pairs of fold k:

    xfit_irm = β·[(log π_k(y_w|x) − log π_ref(y_w|x)) − (log π_k(y_l|x) − log π_ref(y_l|x))]
    xfit_loss = the DPO loss of `method.loss_type` at xfit_irm

SelectiveDPO (arXiv 2502.09650) keeps the pairs of lowest held-out loss, {xfit_loss: [0, 50]}; it also trains
them easy to hard, which prefselect does not (TRL's trainer shuffles every epoch).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .data import hash_position
from .scoring import margins_against, merge_shards, pair_loss
from .tables import CROSSFIT

SALT = "crossfit:"


def fold_of(ids: pd.Series, folds: int, seed: int) -> np.ndarray:
    """The fold (0 … folds − 1) of each id: the same on every rerun, whatever the other pairs."""
    if folds < 2:
        raise ValueError(f"crossfit.folds {folds}: needs at least 2 folds")
    return np.array([int(hash_position(row_id, seed, SALT) * folds) for row_id in ids])


def in_fold(pairs: pd.DataFrame, fold: int, folds: int, seed: int) -> pd.Series:
    """Mask of the pairs of fold `fold`."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold {fold} is outside 0..{folds - 1}")
    return pd.Series(fold_of(pairs["id"], folds, seed) == fold, index=pairs.index)


def fold_scores(ref: pd.DataFrame, logps: pd.DataFrame, beta: float, loss_type: str) -> pd.DataFrame:
    """`id`, `xfit_irm`, `xfit_loss` of the pairs in `logps` (under their fold's model), against `ref` (the SFT
    model's log-probs; both frames hold `id`, `chosen_logp`, `rejected_logp`)."""
    table = margins_against(logps, ref, "the fold's log-probs", same_pairs=False)
    irm = beta * table["h"].to_numpy()
    return pd.DataFrame({"id": table["id"], "xfit_irm": irm, "xfit_loss": pair_loss(irm, loss_type)})


def join(scores: pd.DataFrame, folds: list[pd.DataFrame]) -> pd.DataFrame:
    """The scores with the cross-fitted columns; every scored pair in exactly one fold."""
    merged = merge_shards(folds, scores["id"])
    return scores.merge(merged[["id", *CROSSFIT]], on="id", how="left", validate="one_to_one")
