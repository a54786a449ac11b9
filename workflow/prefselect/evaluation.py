"""Win rates of trained models against an opponent: judged on sampled continuations of held-out prompts, or
(`likelihood`) read from the log-probs both give the chosen and rejected answers of held-out pairs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .judges import compare
from .scoring import margins_against
from .stats import half_width, outcome


def win_rates(
    judge: str | dict, prompts: list[str], samples: dict[str, pd.DataFrame], opponent: pd.DataFrame
) -> dict[str, dict]:
    """Win rate of each model's samples (by name) against the opponent's samples of the same (prompt, sample).

    Every model is judged in one call, so that a judge model is loaded once and an LLM judge's requests share
    one pool. Each frame holds `prompt_index`, `sample`, `continuation`.
    """
    paired = pd.concat([_paired(df, opponent).assign(model=name) for name, df in samples.items()], ignore_index=True)
    verdicts = compare(
        judge,
        [prompts[i] for i in paired["prompt_index"]],
        paired["continuation"].tolist(),
        paired["continuation_opp"].tolist(),
    )
    paired["outcome"], paired["malformed"] = verdicts.outcome, verdicts.malformed
    return {
        name: {**win_rate(rows["outcome"], rows["prompt_index"]), "malformed": int(rows["malformed"].sum())}
        for name, rows in paired.groupby("model", sort=False)
    }


def likelihood_win_rates(logps: dict[str, pd.DataFrame], opponent: pd.DataFrame) -> dict[str, dict]:
    """Per model (by name), the share of held-out pairs whose chosen answer it favours more than the opponent does.

    Each frame holds `id`, `chosen_logp`, `rejected_logp` (summed completion log-probs, `logps.pair_logps`) of the
    same pairs. A pair is won when the margin (log π(y_w|x) − log π_opp(y_w|x)) − (log π(y_l|x) − log π_opp(y_l|x))
    is positive, lost when negative, tied when zero (the opponent against itself); against the SFT model this is
    DPO's implicit-reward accuracy. Also `mean_margin` (nats, without β) and `chosen_likelier`, the share of pairs
    where the model itself gives the chosen answer the higher log-prob, and `opponent_chosen_likelier`.
    """
    results = {}
    for name, own in logps.items():
        paired = margins_against(own, opponent, name)  # the opponent is the reference
        margin = paired["h"]
        results[name] = {
            **win_rate(outcome(margin), np.arange(len(paired))),
            "malformed": 0,
            "mean_margin": float(margin.mean()),
            "chosen_likelier": float((paired["chosen_logp"] > paired["rejected_logp"]).mean()),
            "opponent_chosen_likelier": float((paired["chosen_logp_ref"] > paired["rejected_logp_ref"]).mean()),
        }
    return results


def _paired(samples: pd.DataFrame, opponent: pd.DataFrame) -> pd.DataFrame:
    paired = samples.merge(opponent, on=["prompt_index", "sample"], suffixes=("", "_opp"), validate="1:1")
    if len(paired) != len(samples):
        raise ValueError("model and opponent were not sampled on the same prompts")
    return paired


def win_rate(outcomes, prompt_index) -> dict:
    """Mean of the outcomes (1 win, 0.5 tie, 0 loss) with a 95% interval.

    The interval is a normal approximation over per-prompt means, since the samples of one prompt are not
    independent.
    """
    outcomes = pd.Series(np.asarray(outcomes, dtype=float))
    half = half_width(outcomes.groupby(np.asarray(prompt_index)).mean())
    rate = float(outcomes.mean())
    return {"win_rate": rate, "ci_low": rate - half, "ci_high": rate + half, "n": int(len(outcomes))}


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
    likelihood = any("mean_margin" in r for r in results.values())
    header = (
        f"| selector | kept | win rate vs {opponent} | 95% interval | n |"
        + (" flipped share kept |" if has_truth else "")
        + (" mean margin | chosen likelier |" if likelihood else "")
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, r in results.items():
        line = (
            f"| {name} | {r['kept_fraction']:.2f} | {r['win_rate']:.3f} | "
            f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['n']} |"
        )
        if has_truth:
            line += f" {r['flipped_share_kept']:.3f} |"
        if likelihood:
            line += f" {r['mean_margin']:.3f} | {r['chosen_likelier']:.3f} |"
        lines.append(line)
    if likelihood:
        first = next(iter(results.values()))
        lines.append(
            f"\nHeld-out pairs; a pair is won when the model's log-prob ratio to {opponent} is higher on the chosen "
            f"answer than on the rejected one (mean margin: that difference in nats). Chosen likelier: the share of "
            f"pairs where the model's log-prob of the chosen answer is the higher ({opponent}: "
            f"{first['opponent_chosen_likelier']:.3f})."
        )
    return "\n".join(lines) + "\n"
