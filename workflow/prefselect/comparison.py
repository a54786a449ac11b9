"""The comparison over seeds: each selector's mean ± std across runs, and paired differences to baselines.

Each run (one seed) is a whole workflow run; differences are taken within a run first, so that what the runs
share (the data, the warm-up model, the sampled prompts) cancels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

METRICS = ("kept_fraction", "win_rate", "flipped_share_kept")


def _mean_std(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def compare_runs(result_files: list[str], baselines: list[str]) -> dict:
    runs = [json.loads(Path(f).read_text())["selectors"] for f in result_files]
    selectors = list(runs[0])
    if any(list(run) != selectors for run in runs):
        raise ValueError("the runs compared must have the same selectors")
    table = {}
    for name in selectors:
        row = {m: _mean_std([run[name][m] for run in runs]) for m in METRICS if m in runs[0][name]}
        for base in baselines:
            if base in selectors and base != name:
                row[f"vs_{base}"] = _mean_std([run[name]["win_rate"] - run[base]["win_rate"] for run in runs])
        table[name] = row
    comparison = {"runs": result_files, "n_runs": len(runs), "baselines": baselines, "selectors": table}
    for name, summarise in (("tournament", tournament_summary), ("deciles", auc_summary)):
        beside = [Path(f).with_name(f"{name}.json") for f in result_files]
        if all(path.exists() for path in beside):
            comparison[name] = summarise([json.loads(path.read_text()) for path in beside])
    return comparison


def auc_summary(reports: list[dict]) -> dict:
    """Over the runs (`deciles.json` beside each results.json, where the ground truth is known): each score's AUC
    for "flipped pairs score low"."""
    return {score: _mean_std([rep[score]["auc_flipped_low"] for rep in reports]) for score in reports[0]}


def tournament_summary(reports: list[dict]) -> dict:
    """Over the runs (`tournament.json` beside each results.json): the best candidate by the judge in each, and
    per dev criterion what it chose in each run, with the mean regret of those choices and the mean rank
    correlation of the criterion with the judge."""
    summary = {
        "criterion": reports[0]["criterion"],
        "best_in_hindsight": [rep["best_in_hindsight"] for rep in reports],
        "chosen": [rep["chosen"] for rep in reports],
        "by_criterion": {},
    }
    regrets = [rep["regret"] for rep in reports if rep.get("regret") is not None]
    summary["regret"] = _mean_std(regrets) if regrets else None
    for criterion in reports[0]["by_criterion"]:
        made = [rep["by_criterion"][criterion] for rep in reports]
        row = {"chosen": [m["chosen"] for m in made]}
        for key in ("regret", "spearman"):
            values = [m[key] for m in made if m[key] is not None]
            row[key] = _mean_std(values) if values else None
        summary["by_criterion"][criterion] = row
    return summary


def comparison_markdown(comparison: dict) -> str:
    baselines = [b for b in comparison["baselines"] if b in comparison["selectors"]]
    has_truth = any("flipped_share_kept" in row for row in comparison["selectors"].values())
    header = (
        ["selector", "kept", "win rate"] + [f"Δ vs {b}" for b in baselines] + (["flipped kept"] if has_truth else [])
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cell(stat):
        return f"{stat['mean']:+.3f} ± {stat['std']:.3f}" if stat else "–"

    for name, row in comparison["selectors"].items():
        cells = [
            name,
            f"{row['kept_fraction']['mean']:.2f}",
            f"{row['win_rate']['mean']:.3f} ± {row['win_rate']['std']:.3f}",
        ]
        cells += [cell(row.get(f"vs_{b}")) for b in baselines]
        if has_truth:
            cells.append(f"{row['flipped_share_kept']['mean']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Mean ± standard deviation over {comparison['n_runs']} runs (seeds); Δ = paired difference of win rates."
    )
    if "tournament" in comparison:
        lines += ["", *tournament_markdown(comparison["tournament"], comparison["n_runs"])]
    if "deciles" in comparison:
        lines += [
            "",
            'AUC of each score for "flipped pairs score low" (0.5: the score does not see the noise), mean '
            f"± std over {comparison['n_runs']} runs:",
            "",
            "| score | AUC |",
            "|---|---|",
        ]
        lines += [f"| {score} | {auc['mean']:.3f} ± {auc['std']:.3f} |" for score, auc in comparison["deciles"].items()]
    return "\n".join(lines) + "\n"


def tournament_markdown(summary: dict, n_runs: int) -> list[str]:
    def stat(value, spec):
        return "–" if value is None else f"{value['mean']:{spec}} ± {value['std']:{spec}}"

    best = ", ".join(str(name or "– (not judged)") for name in summary["best_in_hindsight"])
    lines = [
        f"Tournament over the runs; best candidate by the judge in each run: {best}.",
        "",
        "| criterion | chose, per run | regret | Spearman vs judge |",
        "|---|---|---|---|",
    ]
    for criterion, row in summary["by_criterion"].items():
        mark = " (configured)" if criterion == summary["criterion"] else ""
        lines.append(
            f"| {criterion}{mark} | {', '.join(row['chosen'])} | {stat(row['regret'], '.3f')} | "
            f"{stat(row['spearman'], '.2f')} |"
        )
    lines.append(
        f"| the choice made, after the fallback's gate | {', '.join(summary['chosen'])} | "
        f"{stat(summary['regret'], '.3f')} | – |"
    )
    lines += ["", f"Regret: the best candidate's win rate minus the chosen one's, mean ± std over {n_runs} runs."]
    return lines
