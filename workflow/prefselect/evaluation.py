"""Win rates of trained models against an opponent, judged on sampled continuations of held-out prompts."""

from __future__ import annotations

import numpy as np
import pandas as pd


def judge_scores(judge: str, prompts: list[str], samples: pd.DataFrame) -> np.ndarray:
    """Score each sampled continuation (rows of `samples`) in the context of its prompt."""
    if judge != "vader":
        raise ValueError(f"evaluation.judge: {judge!r} is not one of ['vader']")
    from .demo import vader_scores

    texts = [prompts[i] + c for i, c in zip(samples["prompt_index"], samples["continuation"])]
    return vader_scores(texts)


def win_rate(model_scores: pd.DataFrame, opponent_scores: pd.DataFrame) -> dict:
    """Share of (prompt, sample) comparisons the model wins, ties counting half, with a 95% interval.

    Both frames hold `prompt_index`, `sample`, `score`. The interval is a normal approximation over per-prompt
    means, since the samples of one prompt are not independent.
    """
    paired = model_scores.merge(opponent_scores, on=["prompt_index", "sample"], suffixes=("", "_opp"), validate="1:1")
    if len(paired) != len(model_scores):
        raise ValueError("model and opponent were not sampled on the same prompts")
    outcome = np.sign(paired["score"] - paired["score_opp"]) * 0.5 + 0.5
    per_prompt = outcome.groupby(paired["prompt_index"]).mean()
    half_width = 1.96 * per_prompt.std(ddof=1) / np.sqrt(len(per_prompt))
    rate = float(outcome.mean())
    return {"win_rate": rate, "ci_low": rate - half_width, "ci_high": rate + half_width, "n": int(len(outcome))}


def selection_summary(selection: pd.DataFrame, train: pd.DataFrame) -> dict:
    """Kept fraction and, where the ground truth exists (the demo), the share of flipped labels kept."""
    summary = {"kept": int(selection["selected"].sum()), "kept_fraction": float(selection["selected"].mean())}
    if "flipped" in train.columns:
        flipped = train.set_index("id").loc[selection["id"], "flipped"].to_numpy(dtype=bool)
        summary["flipped_share_kept"] = float(flipped[selection["selected"].to_numpy()].mean())
        summary["flipped_share_all"] = float(flipped.mean())
    return summary


def results_markdown(results: dict, opponent: str) -> str:
    has_truth = any("flipped_share_kept" in r for r in results.values())
    header = f"| selector | kept | win rate vs {opponent} | 95% interval | n |" + (" flipped share kept |" if has_truth else "")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, r in results.items():
        line = (
            f"| {name} | {r['kept_fraction']:.2f} | {r['win_rate']:.3f} | "
            f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['n']} |"
        )
        if has_truth:
            line += f" {r['flipped_share_kept']:.3f} |"
        lines.append(line)
    return "\n".join(lines) + "\n"
