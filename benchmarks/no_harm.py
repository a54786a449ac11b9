"""The auto selector's choice replayed on completed runs under each option of its gate: which candidate it takes,
and what the judge says of that choice against full data.

    python benchmarks/no_harm.py --runs results-human-seed{0,1,2} --out no_harm.md
    python benchmarks/no_harm.py --runs ... --dev-pairs 100 250 500   # also on random subsets of the dev pairs

Each run folder is a finished workflow run with an `auto` selector whose candidates trained final models (no
screening): its dev log-probs (eval/dev/logps/), the SFT model's (logps/ref/dev/), the selections and the judge's
eval/results.json. The options: the dev criterion × the lead test's confidence (0: no test) × the guard (none,
or a criterion at a confidence) × the number of dev pairs (a subset drawn with a fixed seed, the same for every
candidate). Per option: the choice in each run, its judge score minus full data's, the mean of that over runs,
and the worst run. Nothing is trained; the replay runs the tournament's own `decide`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from prefselect.stats import spearman
from prefselect.tournament import CRITERIA, decide, dev_criteria, read_margins

CONFIDENCES = (0.0, 0.5, 0.8, 0.9, 0.95)


def load_run(run: Path) -> dict:
    """A run's candidates' dev margins, kept fractions and judge scores."""
    results = json.loads((run / "eval" / "results.json").read_text())["selectors"]
    choice = json.loads((run / "eval" / "dev" / "choice.json").read_text())
    names = list(choice["candidates"])
    ref = sorted(str(p) for p in (run / "logps" / "ref" / "dev").glob("*.parquet"))
    margins = read_margins(names, [str(run / "eval" / "dev" / "logps" / f"final-{n}.parquet") for n in names], ref)
    kept = {name: choice["candidates"][name]["kept_fraction"] for name in names}
    judge = {name: results[name]["win_rate"] for name in names}
    return {"margins": margins, "kept": kept, "judge": judge, "beta": choice["beta"], "loss_type": choice["loss_type"]}


def subset(margins: dict[str, pd.Series], n: int | None, seed: int) -> dict[str, pd.Series]:
    if n is None:
        return margins
    ids = next(iter(margins.values())).index.to_numpy()
    keep = np.random.default_rng(seed).choice(ids, size=min(n, len(ids)), replace=False)
    return {name: h.loc[keep] for name, h in margins.items()}


def replay(
    runs: dict[str, dict], criterion: str, confidence: float, guard: dict | None, n_dev: int | None, fallback: str
) -> dict:
    rows = {}
    for name, run in runs.items():
        margins = subset(run["margins"], n_dev, seed=0)
        choice = decide(margins, run["kept"], run["beta"], run["loss_type"], criterion, fallback, confidence, guard)
        chosen = choice["chosen"]
        rows[name] = {
            "chosen": chosen,
            "best": choice["best"],
            "z": choice["gate"]["z"] if choice["gate"] else None,
            "delta": run["judge"][chosen] - run["judge"][fallback],
        }
    deltas = [r["delta"] for r in rows.values()]
    return {
        "criterion": criterion,
        "confidence": confidence,
        "guard": guard,
        "dev_pairs": n_dev,
        "runs": rows,
        "mean_delta": float(np.mean(deltas)),
        "worst_delta": float(np.min(deltas)),
    }


def spearman_rows(runs: dict[str, dict]) -> list[str]:
    """Per run and criterion, the rank correlation of the criterion with the judge over the candidates."""
    lines = [
        "| run | " + " | ".join(CRITERIA) + " | best by the judge | its lead over full |",
        "|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        criteria = dev_criteria(run["margins"], run["beta"], run["loss_type"])
        judge = pd.Series(run["judge"])
        cells = []
        for key, better in CRITERIA.values():
            oriented = [(1 if better is max else -1) * criteria[c][key] for c in judge.index]
            cells.append(f"{spearman(oriented, judge.tolist()):.2f}")
        best = judge.idxmax()
        lines.append(f"| {name} | {' | '.join(cells)} | {best} | {judge[best] - judge['full']:+.3f} |")
    return lines


def markdown(results: list[dict], runs: dict[str, dict], fallback: str) -> str:
    names = list(runs)
    lines = [
        "Spearman of each dev criterion with the judge over the candidates:",
        "",
        *spearman_rows(runs),
        "",
        f"Each option's choice per run, the judge's score of that choice minus `{fallback}`'s, and the z of the "
        "best candidate's lead over it on the dev pairs:",
        "",
        "| criterion | confidence | guard | dev pairs | " + " | ".join(names) + " | mean Δ | worst Δ |",
        "|---|---|---|---|" + "---|" * len(names) + "---|---|",
    ]
    for r in results:
        cells = [
            f"{run['chosen']} ({run['delta']:+.3f}" + ("" if run["z"] is None else f", z {run['z']:.2f}") + ")"
            for run in (r["runs"][n] for n in names)
        ]
        guard = f"{r['guard']['criterion']} at {r['guard']['confidence']:g}" if r["guard"] else "–"
        lines.append(
            f"| {r['criterion']} | {r['confidence']:g} | {guard} | {r['dev_pairs'] or 'all'} | "
            f"{' | '.join(cells)} | "
            f"{r['mean_delta']:+.3f} | {r['worst_delta']:+.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--fallback", default="full")
    parser.add_argument("--confidences", nargs="+", type=float, default=CONFIDENCES)
    parser.add_argument("--criteria", nargs="+", choices=list(CRITERIA), default=list(CRITERIA))
    parser.add_argument(
        "--guards",
        nargs="*",
        choices=list(CRITERIA),
        default=["dev_accuracy"],
        help="guard criteria to try, beside no guard",
    )
    parser.add_argument("--guard-confidences", nargs="*", type=float, default=[0.8])
    parser.add_argument("--dev-pairs", nargs="*", type=int, default=[], help="also on subsets of this many dev pairs")
    parser.add_argument("--out", help="markdown file; json beside it")
    args = parser.parse_args()
    runs = {Path(run).name: load_run(Path(run)) for run in args.runs}
    guards = [None, *({"criterion": g, "confidence": c} for g in args.guards for c in args.guard_confidences)]
    results = [
        replay(runs, criterion, confidence, guard, n_dev, args.fallback)
        for n_dev in [None, *args.dev_pairs]
        for criterion in args.criteria
        for confidence in args.confidences
        for guard in guards
        if not (guard and guard["criterion"] == criterion)
    ]
    text = markdown(results, runs, args.fallback)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
