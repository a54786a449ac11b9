"""Successive halving beside the full tournament, on finished runs of the same config and seed.

    python benchmarks/halving.py --full results-n03-s{0,1,2} --halving results-h03-s{0,1,2} --out halving.md

Each full run is a finished workflow run whose auto selector trained every candidate's final model (no
screen_epochs), so the judge evaluated each of them; its halving run is the same run with `screen_epochs` and
`finalists` (for instance a copy of it, rerun with them). A finalist's final model is, bit for bit, the full run's
model of that candidate (the halving run's final-<auto> is checked against it), so the full run's judge scores the
halving choice too. Per pair of runs: each tournament's choice and its regret (the best candidate's win rate minus
the chosen one's), the Spearman of the screen rung's criterion with the judge's win rates, the finalists, and the
halving's cost against the full tournament's in optimizer steps and in job seconds (Snakemake benchmark files;
"–" where the full run has none).

A halving run may also stop after its screen rung (`snakemake --until screen_rung`): its final rung is then
replayed here with the tournament's own `decide` on the full run's models of its finalists, the models the
finalists' continuations would give; where a halving run went on to the end, the replay is checked against its
choice (`replay agrees`). The gate's settings come from `--config`, the runs' config.

    python benchmarks/halving.py --config config/examples/demo_tournament.yaml --full ... --halving ...
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from prefselect.config import auto_selector, validate
from prefselect.settings import read_config
from prefselect.stats import spearman
from prefselect.tournament import CRITERIA, decide, halving_cost, read_margins, read_screen_runs


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def weights_digest(model: Path) -> str:
    return hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()


def job_seconds(run: Path, names: list[str]) -> float | None:
    """The summed seconds of the full run's final-{name} jobs, where each has a benchmark file."""
    files = [run / "benchmarks" / f"final-{name}.tsv" for name in names]
    if not all(path.is_file() for path in files):
        return None
    return float(sum(pd.read_csv(path, sep="\t")["s"].iloc[0] for path in files))


def replay(full: Path, rung: dict, auto: dict) -> str:
    """The final rung's choice on the full run's models of the rung's finalists."""
    choice = read_json(full / "eval" / "dev" / "choice.json")
    names = rung["finalists"]
    ref = sorted(str(path) for path in (full / "logps" / "ref" / "dev").glob("*.parquet"))
    margins = read_margins(names, [str(full / "eval" / "dev" / "logps" / f"final-{n}.parquet") for n in names], ref)
    kept = {name: rung["candidates"][name]["kept_fraction"] for name in names}
    return decide(
        margins,
        kept,
        choice["beta"],
        choice["loss_type"],
        auto["criterion"],
        auto["fallback"],
        auto["confidence"],
        auto["guard"],
    )["chosen"]


def steps_share(halving: Path, rung: dict) -> float:
    """The halving's optimizer steps as a share of the full tournament's (no job seconds: a run stopped at its
    rung has none for its finalists)."""
    runs = read_screen_runs({name: str(halving / "models" / f"screen-{name}") for name in rung["candidates"]})
    untimed = {name: {**run, "seconds": 0.0} for name, run in runs.items()}
    return halving_cost(untimed, dict.fromkeys(rung["finalists"], 0.0))["share_of_full"]


def compare(full: Path, halving: Path, auto: dict) -> dict:
    judged = read_json(full / "eval" / "tournament.json")
    win = {name: row["win_rate"] for name, row in judged["candidates"].items()}
    best = max(win.values())
    rung = read_json(halving / "eval" / "dev" / "screen_rung.json")
    replayed = replay(full, rung, auto)
    report = read_json(halving / "eval" / "tournament.json") if (halving / "eval" / "tournament.json").is_file() else {}
    finished = report.get("screen_rung") == rung  # not a page of the full run it was copied from
    chosen = report["chosen"] if finished else replayed
    key, better = CRITERIA[rung["criterion"]]
    names = list(rung["candidates"])
    oriented = [(1 if better is max else -1) * rung["candidates"][name][key] for name in names]
    full_seconds = job_seconds(full, names)
    cost = report["cost"] if finished else None
    return {
        "full_choice": judged["chosen"],
        "full_regret": best - win[judged["chosen"]],
        "halving_choice": chosen,
        "halving_regret": best - win[chosen],
        "finalists": rung["finalists"],
        "same_model": weights_digest(halving / "models" / f"final-{chosen}")
        == weights_digest(full / "models" / f"final-{chosen}")
        if finished
        else None,
        "replay_agrees": replayed == chosen if finished else None,
        "screen_spearman": spearman(oriented, [win[name] for name in names]),
        "steps_share": steps_share(halving, rung),
        "seconds_share": (cost["screen_seconds"] + cost["finalist_seconds"]) / full_seconds
        if cost and full_seconds
        else None,
    }


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown(rows: dict[str, dict]) -> str:
    lines = [
        "| run | full tournament's choice | its regret | halving's choice | its regret | finalists | "
        "screen rung vs judge (Spearman) | steps | job seconds | same model | replay agrees |",
        "|" + "---|" * 11,
    ]
    for run, r in rows.items():
        lines.append(
            f"| {run} | {r['full_choice']} | {r['full_regret']:.3f} | {r['halving_choice']} | "
            f"{r['halving_regret']:.3f} | {', '.join(r['finalists'])} | {_fmt(r['screen_spearman'], '.2f')} | "
            f"{r['steps_share']:.0%} | {_fmt(r['seconds_share'], '.0%')} | {_fmt(r['same_model'], '')} | "
            f"{_fmt(r['replay_agrees'], '')} |"
        )

    def mean(key: str) -> str:
        values = [r[key] for r in rows.values() if r[key] is not None]
        return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.3f}" if values else "–"

    lines += [
        "",
        f"Mean regret: full tournament {mean('full_regret')}, halving {mean('halving_regret')}; screen rung "
        f"vs judge Spearman {mean('screen_spearman')}; cost {mean('steps_share')} of the full tournament's "
        f"optimizer steps, {mean('seconds_share')} of its job seconds.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", nargs="+", type=Path, required=True, help="finished runs with a full tournament")
    parser.add_argument("--halving", nargs="+", type=Path, required=True, help="the same runs with halving, in order")
    parser.add_argument("--config", required=True, help="the runs' config, for the gate's settings")
    parser.add_argument("--out", type=Path, help="also write the table here")
    a = parser.parse_args()
    if len(a.full) != len(a.halving):
        parser.error("--full and --halving: one halving run per full run")
    config = validate(read_config(a.config))
    auto = config["selectors"][auto_selector(config)]
    rows = {str(h): compare(f, h, auto) for f, h in zip(a.full, a.halving)}
    table = markdown(rows)
    print(table)
    if a.out:
        a.out.write_text(table)


if __name__ == "__main__":
    main()
