"""Win rates of trained models against an opponent, judged on sampled continuations of held-out prompts."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .judges import compare


def win_rates(judge: str | dict, prompts: list[str], samples: dict[str, pd.DataFrame],
              opponent: pd.DataFrame) -> dict[str, dict]:
    """Win rate of each model's samples (by name) against the opponent's samples of the same (prompt, sample).

    Every model is judged in one call, so that a judge model is loaded once and an LLM judge's requests share
    one pool. Each frame holds `prompt_index`, `sample`, `continuation`.
    """
    paired = pd.concat([_paired(df, opponent).assign(model=name) for name, df in samples.items()], ignore_index=True)
    verdicts = compare(judge, [prompts[i] for i in paired["prompt_index"]], paired["continuation"].tolist(),
                       paired["continuation_opp"].tolist())
    paired["outcome"], paired["malformed"] = verdicts.outcome, verdicts.malformed
    return {
        name: {**win_rate(rows["outcome"], rows["prompt_index"]), "malformed": int(rows["malformed"].sum())}
        for name, rows in paired.groupby("model", sort=False)
    }


def _paired(samples: pd.DataFrame, opponent: pd.DataFrame) -> pd.DataFrame:
    paired = samples.merge(opponent, on=["prompt_index", "sample"], suffixes=("", "_opp"), validate="1:1")
    if len(paired) != len(samples):
        raise ValueError("model and opponent were not sampled on the same prompts")
    return paired


def win_rate(outcome, prompt_index) -> dict:
    """Mean of the outcomes (1 win, 0.5 tie, 0 loss) with a 95% interval.

    The interval is a normal approximation over per-prompt means, since the samples of one prompt are not
    independent.
    """
    outcome = pd.Series(np.asarray(outcome, dtype=float))
    per_prompt = outcome.groupby(np.asarray(prompt_index)).mean()
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
