"""The paper's group study: training pairs of small, medium and large influence, and what each group is made of.

Groups are the terciles of IF (not the TIF band edges): three groups of equal size make their optional DPO runs
comparable, with the same number of steps each. Where the ground truth exists (the demo), each group reports its
share of flipped labels and its mean oracle margin; with `influence.group_training`, each group is also trained on
from θ and its validation loss and reward margin are logged as training goes.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from .plots import save

GROUPS = ("small", "medium", "large")
CURVES = (("eval_loss", "validation DPO loss"), ("eval_rewards/margins", "validation reward margin"))


def influence_groups(influence: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One selection (`id`, `selected`) per IF tercile; ties broken by order, so every pair is in exactly one."""
    tercile = pd.qcut(influence["influence"].rank(method="first"), len(GROUPS), labels=GROUPS)
    return {g: pd.DataFrame({"id": influence["id"], "selected": (tercile == g).to_numpy()}) for g in GROUPS}


def validation_curve(log_history: list[dict]) -> list[dict]:
    """The evaluation entries of a TRL log history: step, validation loss and reward margin."""
    return [{"step": e["step"], **{key: e[key] for key, _ in CURVES}} for e in log_history if "eval_loss" in e]


def group_summary(members: pd.DataFrame) -> dict:
    """Size and IF of one group (rows of the training pairs joined with IF) and, on the demo, its ground truth."""
    summary = {
        "pairs": len(members),
        "influence_mean": float(members["influence"].mean()),
        "influence_range": [float(members["influence"].min()), float(members["influence"].max())],
    }
    if "flipped" in members:
        summary["flipped_share"] = float(members["flipped"].mean())
        summary["oracle_margin_mean"] = float(members["oracle_margin"].mean())
    return summary


def group_report(train: pd.DataFrame, selections: dict[str, pd.DataFrame], influence: pd.DataFrame, logs=None) -> dict:
    """Per group: its summary and, given `logs` (group → TRL log history), its validation curve."""
    table = train.merge(influence, on="id", validate="one_to_one")
    report = {}
    for group, selection in selections.items():
        report[group] = group_summary(table[table["id"].isin(selection.loc[selection["selected"], "id"])])
        if logs:
            report[group]["validation_curve"] = validation_curve(logs[group])
    return report


def groups_markdown(report: dict) -> str:
    has_truth = all("flipped_share" in g for g in report.values())
    has_curves = all("validation_curve" in g for g in report.values())
    header = "| IF group | pairs | mean IF | IF range |"
    header += " flipped share | mean oracle margin |" * has_truth
    header += " val loss start → end | val margin start → end |" * has_curves
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, g in report.items():
        low, high = g["influence_range"]
        line = f"| {name} | {g['pairs']} | {g['influence_mean']:.3g} | [{low:.3g}, {high:.3g}] |"
        if has_truth:
            line += f" {g['flipped_share']:.3f} | {g['oracle_margin_mean']:.3f} |"
        if has_curves:
            first, last = g["validation_curve"][0], g["validation_curve"][-1]
            line += "".join(f" {first[key]:.4f} → {last[key]:.4f} |" for key, _ in CURVES)
        lines.append(line)
    return "\n".join(lines) + "\n"


def curves_figure(report: dict, path: str) -> None:
    fig, axes = plt.subplots(1, len(CURVES), figsize=(11, 4))
    for name, g in report.items():
        curve = pd.DataFrame(g["validation_curve"])
        for ax, (key, title) in zip(axes, CURVES):
            ax.plot(curve["step"], curve[key], marker=".", label=f"{name} IF")
            ax.set(title=title, xlabel="step")
    axes[0].legend()
    save(fig, path)


def read_logs(folders: list[str]) -> dict[str, list[dict]]:
    """Group → log history, from model folders named `group-{group}`."""
    return {Path(f).name.removeprefix("group-"): json.loads(Path(f, "training_log.json").read_text()) for f in folders}
