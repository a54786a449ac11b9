"""Where the demo's flipped labels sit in each score: deciles and AUCs against the ground truth."""

from __future__ import annotations

import numpy as np
import pandas as pd

# The scores the selectors cut on, and the cross-fitted margin where the scores have it (crossfit.folds).
SCORES = ("lossdiff", "irm", "aux_irm", "xfit_irm")


def auc_flipped_low(values: np.ndarray, flipped: np.ndarray) -> float:
    """P(a clean pair scores above a flipped pair), ties counting half (the Mann–Whitney AUC)."""
    ranks = pd.Series(values).rank(method="average").to_numpy()
    n_clean, n_flipped = (~flipped).sum(), flipped.sum()
    if not n_clean or not n_flipped:
        raise ValueError("AUC needs both flipped and clean pairs")
    return float((ranks[~flipped].sum() - n_clean * (n_clean + 1) / 2) / (n_clean * n_flipped))


def decile_table(scores: pd.DataFrame, train: pd.DataFrame, column: str) -> pd.DataFrame:
    """Flipped share and mean oracle margin per decile of `column` (decile 1 = lowest scores)."""
    truth = train.set_index("id").loc[scores["id"], ["flipped", "oracle_margin"]].reset_index(drop=True)
    decile = pd.qcut(scores[column].rank(method="first"), 10, labels=range(1, 11))
    return (
        truth.assign(decile=decile.to_numpy())
        .groupby("decile", observed=True)
        .agg(pairs=("flipped", "size"), flipped_share=("flipped", "mean"), mean_oracle_margin=("oracle_margin", "mean"))
        .reset_index()
    )


def diagnose(scores: pd.DataFrame, train: pd.DataFrame) -> dict:
    flipped = train.set_index("id").loc[scores["id"], "flipped"].to_numpy(dtype=bool)
    return {
        column: {
            "auc_flipped_low": auc_flipped_low(scores[column].to_numpy(), flipped),
            "deciles": decile_table(scores, train, column).to_dict(orient="records"),
        }
        for column in SCORES
        if column in scores
    }


def diagnostics_markdown(diagnostics: dict) -> str:
    lines = [
        "AUC: probability that a clean pair scores higher than a flipped one (0.5 = the score does not see the noise).",
        "",
        "| score | AUC | " + " | ".join(f"d{d}" for d in range(1, 11)) + " |",
        "|---|---|" + "---|" * 10,
    ]
    for column, d in diagnostics.items():
        shares = " | ".join(f"{row['flipped_share']:.2f}" for row in d["deciles"])
        lines.append(f"| {column} | {d['auc_flipped_low']:.3f} | {shares} |")
    lines.append("")
    lines.append("Cells d1..d10: share of flipped labels in each decile of the score, lowest scores first.")
    return "\n".join(lines) + "\n"
