"""The small statistics every report shares: outcomes with half credit for ties, 95% intervals, rank correlation."""

from __future__ import annotations

import numpy as np
import pandas as pd

Z95 = 1.96  # the two-sided 95% normal quantile


def outcome(difference: np.ndarray) -> np.ndarray:
    """1 where `difference` is positive (a win, a pair right), 0 where negative, 0.5 for a tie."""
    return np.sign(difference) * 0.5 + 0.5


def half_width(values: np.ndarray) -> float:
    """The half width of the 95% interval of the mean of independent values (normal approximation; nan for one)."""
    values = np.asarray(values, dtype=float)
    return Z95 * float(values.std(ddof=1)) / np.sqrt(len(values)) if len(values) > 1 else float("nan")


def interval(values: np.ndarray) -> tuple[float, float, float]:
    """The mean with its 95% interval."""
    mean, half = float(np.mean(values)), half_width(values)
    return mean, mean - half, mean + half


def correlation(x: pd.Series, y: pd.Series) -> dict:
    # Spearman's ρ is Pearson's r of the ranks.
    return {"pearson": float(x.corr(y)), "spearman": float(x.rank().corr(y.rank()))}


def spearman(x: list[float], y: list[float]) -> float | None:
    """Rank correlation of two equally long lists; None below 3 values or without spread."""
    if len(x) < 3:
        return None
    rho = correlation(pd.Series(x), pd.Series(y))["spearman"]
    return None if np.isnan(rho) else rho
