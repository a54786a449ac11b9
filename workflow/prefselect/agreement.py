"""How well the forward-only proxies (LossDiff, IRM, LossDiff-IRM) agree with the influence they stand for.

Selections are compared at the kept fraction f of the TIF band: each proxy keeps the symmetric percentile band
[50 − w/2, 50 + w/2] (the same band on both scores for LossDiff-IRM) of the smallest width w that keeps at least f
of the pairs (selection.fit_bands). The overlap of selections A and B is |A ∩ B| / min(|A|, |B|); two independent
random selections of fraction f overlap by f in expectation, which is the baseline to read the overlaps against.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .plots import save
from .selection import fit_bands, select_bands
from .stats import correlation

PROXIES = {"lossdiff": ["lossdiff"], "irm": ["irm"], "lossdiff_irm": ["lossdiff", "irm"]}
CORRELATED = ("lossdiff", "irm", "aux_irm")
PROXY_STAGES, INFLUENCE_STAGES = ("aux", "score"), ("val_grad", "influence")


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """|A ∩ B| / min(|A|, |B|) of two keep-masks."""
    return float((a & b).sum() / min(a.sum(), b.sum()))


def symmetric_band(table: pd.DataFrame, columns: list[str], fraction: float) -> list[float]:
    """The narrowest band [50 − w/2, 50 + w/2] whose intersection over `columns` keeps at least `fraction`."""
    return fit_bands(table, {c: [25, 75] for c in columns}, fraction)[columns[0]]


def agreement(table: pd.DataFrame, tif_band: list[float]) -> dict:
    """Overlaps with the TIF selection and correlations with IF; `table` holds the scores and `influence`."""
    tif = select_bands(table, {"influence": tif_band})
    fraction = float(tif.mean())
    proxies = {}
    for name, columns in PROXIES.items():
        band = symmetric_band(table, columns, fraction)
        keep = select_bands(table, {c: band for c in columns})
        proxies[name] = {"band": band, "kept_fraction": float(keep.mean()), "overlap_with_tif": overlap(keep, tif)}
    return {
        "pairs": len(table),
        "tif_band": list(tif_band),
        "kept_fraction": fraction,
        "random_overlap": fraction,
        "proxies": proxies,
        "correlation_with_influence": {c: correlation(table[c], table["influence"]) for c in CORRELATED},
    }


def stage_seconds(benchmarks: dict[str, list[str]]) -> dict:
    """Wall and CPU seconds per stage, summed over its jobs (Snakemake benchmark columns `s`, `cpu_time`), and the
    totals of the proxies against influence. CPU seconds are the fairer measure on a shared machine."""
    stages = {}
    for stage, paths in benchmarks.items():
        jobs = pd.concat([pd.read_csv(p, sep="\t") for p in paths])
        stages[stage] = {"wall": float(jobs["s"].sum()), "cpu": float(jobs["cpu_time"].sum())}
    totals = {
        name: {kind: sum(stages[s][kind] for s in members if s in stages) for kind in ("wall", "cpu")}
        for name, members in (("proxies", PROXY_STAGES), ("influence", INFLUENCE_STAGES))
    }
    ratio = {kind: totals["influence"][kind] / totals["proxies"][kind] for kind in ("wall", "cpu")}
    return {"stages": stages, **totals, "influence_over_proxies": ratio}


def agreement_markdown(report: dict) -> str:
    lo, hi = report["tif_band"]
    f = report["kept_fraction"]
    lines = [
        f"TIF band [{lo:g}, {hi:g}] of IF keeps {f:.2f} of {report['pairs']} pairs; two random selections of that "
        f"fraction overlap by {report['random_overlap']:.2f} in expectation.",
        "",
        "| proxy | symmetric band (each score) | kept | overlap with TIF |",
        "|---|---|---|---|",
    ]
    for name, p in report["proxies"].items():
        band = f"[{p['band'][0]:.1f}, {p['band'][1]:.1f}]"
        lines.append(f"| {name} | {band} | {p['kept_fraction']:.2f} | {p['overlap_with_tif']:.3f} |")
    lines += ["", "| score | Pearson r with IF | Spearman ρ with IF |", "|---|---|---|"]
    for name, c in report["correlation_with_influence"].items():
        lines.append(f"| {name} | {c['pearson']:.3f} | {c['spearman']:.3f} |")
    if "seconds" in report:
        t = report["seconds"]
        rows = {
            **t["stages"],
            f"proxies ({' + '.join(PROXY_STAGES)})": t["proxies"],
            f"influence ({' + '.join(INFLUENCE_STAGES)})": t["influence"],
        }
        lines += ["", "| stage | wall seconds | CPU seconds |", "|---|---|---|"]
        lines += [f"| {stage} | {s['wall']:.1f} | {s['cpu']:.1f} |" for stage, s in rows.items()]
        ratio = t["influence_over_proxies"]
        lines.append(
            f"\nInfluence took {ratio['wall']:.1f}× the wall time and {ratio['cpu']:.1f}× the CPU time of the proxies."
        )
    return "\n".join(lines) + "\n"


def agreement_figure(table: pd.DataFrame, report: dict, path: str) -> None:
    """LossDiff × IRM coloured by the percentile of IF, with the LossDiff-IRM band; each proxy against IF."""
    colour = table["influence"].rank(pct=True) * 100
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5), layout="constrained")
    points = axes[0].scatter(table["lossdiff"], table["irm"], c=colour, cmap="coolwarm", s=5)
    band = report["proxies"]["lossdiff_irm"]["band"]
    for column, draw in (("lossdiff", axes[0].axvline), ("irm", axes[0].axhline)):
        for q in band:
            draw(table[column].quantile(q / 100), color="k", lw=0.8, ls="--")
    axes[0].set(xlabel="lossdiff", ylabel="irm", title="LossDiff × IRM (colour: IF percentile; dashed: LossDiff-IRM)")
    fig.colorbar(points, ax=axes[0], label="IF percentile")
    for ax, column in zip(axes[1:], ("lossdiff", "irm")):
        r = report["correlation_with_influence"][column]
        ax.scatter(table[column], table["influence"], s=5)
        ax.set(xlabel=column, ylabel="influence", title=f"{column} vs IF: r {r['pearson']:.2f}, ρ {r['spearman']:.2f}")
    save(fig, path)
