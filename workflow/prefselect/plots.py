"""Figures and tables for `snakemake --report`: scores, training curves, selections and win rates."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import pandas as pd

from .io import atomic_path, write_text
from .tournament import CRITERIA

PLOTTED_SCORES = ("lossdiff", "irm", "aux_irm")
CURVES = (("loss", "DPO loss"), ("rewards/margins", "reward margin"), ("rewards/accuracies", "reward accuracy"))


def save(fig, path: str) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def score_figure(scores: pd.DataFrame, train: pd.DataFrame, bands: dict, path: str) -> None:
    """Histograms of each score (flipped vs clean on the demo) and LossDiff × IRM with the selector's bands."""
    flipped = train.set_index("id").loc[scores["id"], "flipped"].to_numpy(bool) if "flipped" in train else None
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for ax, column in zip(axes, PLOTTED_SCORES):
        values = scores[column].to_numpy()
        if flipped is None:
            ax.hist(values, bins=40)
        else:
            ax.hist([values[~flipped], values[flipped]], bins=40, stacked=True, label=["clean", "flipped"])
            ax.legend()
        ax.set_title(column)
    ax = axes[3]
    ax.scatter(scores["lossdiff"], scores["irm"], s=4, c=flipped if flipped is not None else None, cmap="coolwarm")
    for column, draw in (("lossdiff", ax.axvline), ("irm", ax.axhline)):
        for q in bands.get(column, []):
            draw(scores[column].quantile(q / 100), color="k", lw=0.8, ls="--")
    ax.set_xlabel("lossdiff")
    ax.set_ylabel("irm")
    ax.set_title("LossDiff × IRM (red: flipped; dashed: bands)")
    save(fig, path)


def training_figure(logs: dict[str, str], path: str) -> None:
    """Per-step loss, reward margin and accuracy of each DPO stage, from TRL's log history."""
    fig, axes = plt.subplots(1, len(CURVES), figsize=(16, 4))
    for stage, log in logs.items():
        steps = pd.DataFrame([row for row in json.loads(Path(log).read_text()) if "loss" in row])
        for ax, (key, title) in zip(axes, CURVES):
            ax.plot(steps["step"], steps[key].astype(float), label=stage, lw=1)
            ax.set_title(title)
            ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    save(fig, path)


def results_figure(results: dict, path: str) -> None:
    """Win rate with its interval, kept fraction and (on the demo) flipped share kept, per selector."""
    table = pd.DataFrame(results["selectors"]).T
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    error = [table["win_rate"] - table["ci_low"], table["ci_high"] - table["win_rate"]]
    axes[0].bar(table.index, table["win_rate"], yerr=error, capsize=3)
    axes[0].axhline(0.5, color="k", lw=0.8)
    axes[0].set_title(f"win rate vs {results['opponent']} (95% interval)")
    columns = [c for c in ("kept_fraction", "flipped_share_kept") if c in table]
    table[columns].astype(float).plot.bar(ax=axes[1], rot=0)
    axes[1].set_title("kept fraction and flipped share among kept pairs")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=30)
    save(fig, path)


def tournament_figure(rep: dict, path: str) -> None:
    """Each candidate's dev criterion with its interval; beside it, where the judge ran, criterion vs win rate."""
    table = pd.DataFrame(rep["candidates"]).T
    key = CRITERIA[rep["criterion"]][0]
    judged = "win_rate" in table and table["win_rate"].notna().any()
    fig, axes = plt.subplots(1, 2 if judged else 1, figsize=(13 if judged else 7, 4), squeeze=False)
    ax = axes[0][0]
    values = table[key].astype(float)
    error = [values - table[f"{key}_low"].astype(float), table[f"{key}_high"].astype(float) - values]
    colours = ["tab:red" if name == rep["chosen"] else "tab:blue" for name in table.index]
    ax.bar(table.index, values, yerr=error, capsize=3, color=colours)
    ax.set_title(f"dev {key} per candidate (95% interval; red: chosen)")
    ax.tick_params(axis="x", labelrotation=60)
    if judged:
        ax = axes[0][1]
        rows = table[table["win_rate"].notna()]
        ax.scatter(
            rows[key].astype(float),
            rows["win_rate"].astype(float),
            c=["tab:red" if name == rep["chosen"] else "tab:blue" for name in rows.index],
        )
        for name, row in rows.iterrows():
            ax.annotate(name, (float(row[key]), float(row["win_rate"])), fontsize=7)
        rho = rep["spearman_criterion_vs_judge"]
        ax.set_xlabel(f"dev {key}")
        ax.set_ylabel(f"win rate vs {rep['opponent']}")
        ax.set_title("dev criterion vs judge" + ("" if rho is None else f" (Spearman {rho:.2f})"))
    save(fig, path)


def html_table(frame: pd.DataFrame, path: str) -> None:
    write_text(frame.to_html(float_format=lambda x: f"{x:.3f}"), path)


def data_report_frame(report: dict) -> pd.DataFrame:
    """The data report as one column: rows read per file, kept per split, quarantined per reason."""
    rows = {f"rows read: {file}": n for file, n in report["rows_read"].items()}
    rows |= {"kept for training": report["train"], "kept for validation": report["val"]}
    rows |= {"held out for testing": report["test"], "held out as dev pairs": report["dev"]}
    rows |= {f"quarantined: {reason}": n for reason, n in report["quarantined"].items()}
    return pd.Series(rows, name="pairs").to_frame()


def draw_all(scores: str, train: str, bands: dict, logs: dict[str, str], results: str, data_report: str, out: str):
    """Every figure and table of the report, into folder `out`."""
    score_figure(pd.read_parquet(scores), pd.read_parquet(train), bands, f"{out}/scores.png")
    training_figure(logs, f"{out}/training.png")
    results = json.loads(Path(results).read_text())
    results_figure(results, f"{out}/results.png")
    html_table(pd.DataFrame(results["selectors"]).T, f"{out}/results.html")
    html_table(data_report_frame(json.loads(Path(data_report).read_text())), f"{out}/data.html")
