"""Choosing the selection rule per model from held-out evidence: the `auto` selector's tournament.

Every candidate selector trains its own final model. Each final model is then judged on the dev pairs, clean
pairs that no stage trains on, scores or selects on, by forward passes only: the implicit reward margin against
the SFT reference, h = (log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x)), gives the dev
margin (mean of β·h: how far the model moved towards the clean preferences), the preference accuracy (share of
pairs with h > 0, ties half) and the DPO loss ℓ(βh) of `method.loss_type`. The candidate with the highest dev
margin (the default criterion), the highest accuracy or the lowest loss wins. Nothing of the training pairs'
labels, the demo's ground truth or the test pairs enters the choice.

A grid expands to band rules: shapes × score columns × kept fractions. `top` keeps the highest scores (a lower
cut), `bottom` the lowest (an upper cut; the small-margin rule is `bottom` on `irm`), `middle` a central band
(the paper's shape); a column `a+b` puts the same band on both (LossDiff-IRM is `middle` on `lossdiff+irm`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd

from .io import atomic_path
from .kinds import EXTERNAL_SCORE
from .scoring import margins_against, pair_loss
from .stats import interval, outcome, spearman
from .tables import SCREEN_CHECKPOINT

CRITERIA = {"dev_margin": ("margin", max), "dev_accuracy": ("accuracy", max), "dev_loss": ("loss", min)}


def dev_margins(logps: pd.DataFrame, ref: pd.DataFrame) -> pd.Series:
    """h per dev pair (nats, without β), by id; both frames hold `id`, `chosen_logp`, `rejected_logp`."""
    paired = margins_against(logps, ref, "the candidate's dev log-probs")
    return pd.Series(paired["h"].to_numpy(), index=paired["id"]).sort_index()


def per_pair(margins: pd.Series, beta: float, loss_type: str) -> pd.DataFrame:
    """Each dev pair's implicit reward margin β·h, outcome (1 right, 0.5 tie, 0 wrong) and DPO loss under one
    candidate."""
    h = margins.to_numpy()
    return pd.DataFrame(
        {"margin": beta * h, "accuracy": outcome(h), "loss": pair_loss(beta * h, loss_type)}, index=margins.index
    )


def dev_criteria(margins: dict[str, pd.Series], beta: float, loss_type: str) -> dict[str, dict]:
    """Per candidate: dev margin, accuracy and loss, each with a 95% interval (normal approximation over pairs)."""
    results = {}
    for name, h in margins.items():
        outcome = per_pair(h, beta, loss_type)
        row = {"n": len(outcome)}
        for key, _ in CRITERIA.values():
            row[key], row[f"{key}_low"], row[f"{key}_high"] = interval(outcome[key].to_numpy())
        results[name] = row
    return results


def ranked(criteria: dict[str, dict], kept_fraction: dict[str, float], criterion: str) -> list[str]:
    """The candidates from best to worst by `criterion`. Ties go to the candidate that keeps more pairs, then to
    the earlier one in configuration order: where the dev pairs cannot tell two rules apart, throwing data away
    has not paid."""
    key, best = CRITERIA[criterion]
    sign = 1 if best is max else -1
    order = {name: i for i, name in enumerate(criteria)}
    return sorted(criteria, key=lambda name: (-sign * criteria[name][key], -kept_fraction[name], order[name]))


def choose(criteria: dict[str, dict], kept_fraction: dict[str, float], criterion: str) -> str:
    """The best candidate by `criterion` (see `ranked`)."""
    return ranked(criteria, kept_fraction, criterion)[0]


def screen_rung(
    margins: dict[str, pd.Series],
    kept: dict[str, float],
    beta: float,
    loss_type: str,
    criterion: str,
    finalists: int,
    fallback: str | None,
) -> dict:
    """The first rung of successive halving: every candidate's screen run judged on the dev pairs, and the
    `finalists` best by `criterion` continue to their full runs, with the fallback, which the final rung's gate
    compares the winner with on full models."""
    criteria = dev_criteria(margins, beta, loss_type)
    order = ranked(criteria, kept, criterion)
    chosen = order[:finalists] + ([fallback] if fallback and fallback not in order[:finalists] else [])
    return {
        "criterion": criterion,
        "finalists": chosen,
        "cut": [name for name in order if name not in chosen],
        "candidates": {name: {"kept_fraction": kept[name], **criteria[name]} for name in margins},
    }


def paired_lead(
    margins: dict[str, pd.Series], a: str, b: str, beta: float, loss_type: str, criterion: str
) -> tuple[float, float]:
    """How far candidate `a` leads `b` on `criterion` over the same dev pairs (oriented: positive is better), and
    that lead as a z score (mean over its standard error)."""
    key, better = CRITERIA[criterion]
    lead = (per_pair(margins[a], beta, loss_type)[key] - per_pair(margins[b], beta, loss_type)[key]).to_numpy()
    lead = lead if better is max else -lead
    mean, spread = float(lead.mean()), float(lead.std(ddof=1)) if len(lead) > 1 else 0.0
    if spread == 0:  # every pair leads by the same amount
        return mean, float(np.sign(mean) * np.inf) if mean else 0.0
    return mean, mean / spread * float(np.sqrt(len(lead)))


def gate(
    margins: dict[str, pd.Series],
    best: str,
    fallback: str,
    beta: float,
    loss_type: str,
    criterion: str,
    confidence: float,
    guard: dict | None,
) -> dict:
    """Whether the dev pairs separate the best candidate from the fallback. Its paired lead on `criterion`, as a z
    score, must reach the one-sided z of `confidence` with a Bonferroni correction for the other candidates, any of
    which could have led by chance (the winner's curse; confidence 0: no test); and on the guard's criterion it
    must not trail the fallback with the guard's confidence (one-sided, one test): a lead bought by harm to the
    guard does not count (a model can raise its dev margin by growing confident, right or wrong).
    `dev_pairs_needed`: about how many dev pairs the same lead would need, where it fell short and is positive."""
    lead, z = paired_lead(margins, best, fallback, beta, loss_type, criterion)
    rivals, n = max(1, len(margins) - 1), len(margins[best])
    threshold = NormalDist().inv_cdf(1 - (1 - confidence) / rivals) if confidence else -np.inf
    guard_z = paired_lead(margins, best, fallback, beta, loss_type, guard["criterion"])[1] if guard else None
    harm_bound = -NormalDist().inv_cdf(guard["confidence"]) if guard else -np.inf
    harmed = guard_z is not None and guard_z <= harm_bound
    passed = bool(best == fallback or (z >= threshold and not harmed))
    needed = int(np.ceil(n * (threshold / z) ** 2)) if z < threshold and 0 < z < np.inf else None
    return {
        "best": best,
        "fallback": fallback,
        "confidence": confidence,
        "rivals": rivals,
        "lead": lead,
        "z": z,
        "z_needed": float(threshold),
        "guard": guard and guard["criterion"],
        "guard_z": guard_z,
        "guard_bound": float(harm_bound),
        "harmed": harmed,
        "passed": passed,
        "dev_pairs": n,
        "dev_pairs_needed": needed,
    }


def paired_gaps(margins: dict[str, pd.Series], chosen: str, beta: float, loss_type: str, criterion: str) -> dict:
    """Per candidate: its criterion minus the chosen one's, averaged over the same dev pairs, with a 95% interval.

    Paired, because every candidate is judged on the same pairs: this says whether the choice is distinguishable
    from a runner-up, which the unpaired intervals of each candidate overstate."""
    key = CRITERIA[criterion][0]
    reference = per_pair(margins[chosen], beta, loss_type)[key]
    gaps = {}
    for name, h in margins.items():
        mean, low, high = interval((per_pair(h, beta, loss_type)[key] - reference).to_numpy())
        gaps[name] = {"gap": mean, "gap_low": low, "gap_high": high}
    return gaps


def decide(
    margins: dict[str, pd.Series],
    kept: dict[str, float],
    beta: float,
    loss_type: str,
    criterion: str,
    fallback: str | None,
    confidence: float,
    guard: dict | None,
) -> dict:
    """The choice from each candidate's dev margins: the best by `criterion`, kept only where the gate passes it
    over the fallback (see `gate`); every candidate's dev criteria, kept fraction and paired gap to the chosen."""
    if fallback is not None and fallback not in margins:
        raise ValueError(f"the fallback {fallback!r} is not among the candidates {sorted(margins)}")
    criteria = dev_criteria(margins, beta, loss_type)
    best = choose(criteria, kept, criterion)
    checked = gate(margins, best, fallback, beta, loss_type, criterion, confidence, guard) if fallback else None
    chosen = best if checked is None or checked["passed"] else fallback
    gaps = paired_gaps(margins, chosen, beta, loss_type, criterion)
    candidates = {name: {"kept_fraction": kept[name], **criteria[name], **gaps[name]} for name in margins}
    return {
        "chosen": chosen,
        "best": best,
        "gate": checked,
        "criterion": criterion,
        "beta": beta,
        "loss_type": loss_type,
        "candidates": candidates,
    }


def read_margins(names: list[str], logps: list[str], ref: list[str]) -> dict[str, pd.Series]:
    """Each candidate's dev margins h from its log-prob file and the reference shards."""
    reference = pd.concat([pd.read_parquet(path) for path in ref], ignore_index=True)
    return {name: dev_margins(pd.read_parquet(path), reference) for name, path in zip(names, logps, strict=True)}


def read_candidates(names: list[str], logps: list[str], ref: list[str], selections: list[str]) -> tuple[dict, dict]:
    """Each candidate's dev margins h (`read_margins`) and the share of training pairs its selection keeps."""
    kept = {name: float(pd.read_parquet(path)["selected"].mean()) for name, path in zip(names, selections, strict=True)}
    return read_margins(names, logps, ref), kept


def run(
    names: list[str],
    logps: list[str],
    ref: list[str],
    selections: list[str],
    beta: float,
    loss_type: str,
    criterion: str,
    fallback: str | None,
    confidence: float,
    guard: dict | None,
) -> tuple[dict, str]:
    """The tournament from its files: the choice (`decide`) and the path of the chosen candidate's selection."""
    margins, kept = read_candidates(names, logps, ref, selections)
    choice = decide(margins, kept, beta, loss_type, criterion, fallback, confidence, guard)
    return choice, dict(zip(names, selections))[choice["chosen"]]


def read_screen_runs(folders: dict[str, str]) -> dict[str, dict]:
    """Per candidate, its screen run's optimizer steps (`steps`) and its final run's (`max_steps`), from the Trainer
    checkpoint the screen run keeps."""
    runs = {}
    for name, folder in folders.items():
        state = json.loads((Path(folder) / SCREEN_CHECKPOINT / "trainer_state.json").read_text())
        runs[name] = {"steps": state["global_step"], "max_steps": state["max_steps"]}
    return runs


def halving_cost(screens: dict[str, dict], continued: dict[str, float]) -> dict:
    """What successive halving trained, against a full tournament (every candidate's final run in full).

    `screens`: per candidate, its screen run's optimizer steps (`steps`), its final run's (`max_steps`) and the
    screen job's seconds; `continued`: per finalist, the seconds of the job that continued its screen run."""
    screen_steps = sum(run["steps"] for run in screens.values())
    finalist_steps = sum(screens[name]["max_steps"] - screens[name]["steps"] for name in continued)
    full = sum(run["max_steps"] for run in screens.values())
    return {
        "screen_steps": screen_steps,
        "finalist_steps": finalist_steps,
        "steps": screen_steps + finalist_steps,
        "full_tournament_steps": full,
        "share_of_full": (screen_steps + finalist_steps) / full,
        "screen_seconds": sum(run["seconds"] for run in screens.values()),
        "finalist_seconds": sum(continued.values()),
        "steps_per_candidate": {
            name: {"screen": run["steps"], "final": run["max_steps"]} for name, run in screens.items()
        },
    }


def describe(spec: dict) -> str:
    """A selector's rule in a few words, for the tournament report."""
    kind = spec["kind"]
    target = (
        f", {100 * spec['fraction']:.0f}% kept"
        if "fraction" in spec
        else f", as many as {spec['like']}"
        if "like" in spec
        else ""
    )
    if kind == "bands":
        return " ∩ ".join(f"{column} [{lo:g}, {hi:g}]" for column, (lo, hi) in spec["bands"].items()) + target
    if kind in EXTERNAL_SCORE:
        score = spec.get("column", "reward model margin") + (f" − {spec['minus']}" if "minus" in spec else "")
        if kind == "alignment_potential":
            score = f"Alignment Potential (m_ext: {score}, w = {spec['weight']:g})"
        return f"top by {score}{target}"
    return {"full": "all pairs", "random": "random"}.get(kind, kind) + target


def report(
    choice: dict, results: dict, specs: dict, stage: str, rung: dict | None = None, cost: dict | None = None
) -> dict:
    """The page a user reads to decide: per candidate its rule, kept fraction, dev criteria, and the judge's win
    rate where that candidate's final model was evaluated; for each criterion, what it would choose, its rank
    correlation with the judge across those candidates and the regret of its choice (best win rate minus the
    chosen one's); the configured criterion's choice is the one made. With successive halving, the screen rung
    (`rung`, where the judged candidates are its finalists) and what the halving cost (`cost`)."""
    judged = results["selectors"]
    rows = {}
    for name, row in choice["candidates"].items():
        rows[name] = {"rule": describe(specs[name]), **row}
        if stage == "final" and name in judged:
            rows[name]["win_rate"] = judged[name]["win_rate"]
            for extra in ("ci_low", "ci_high", "flipped_share_kept"):
                if extra in judged[name]:
                    rows[name][extra] = judged[name][extra]
    with_judge = [name for name in rows if "win_rate" in rows[name]]
    rates = [rows[name]["win_rate"] for name in with_judge]
    kept = {name: row["kept_fraction"] for name, row in rows.items()}
    by_criterion = {}
    for criterion, (key, best) in CRITERIA.items():
        chosen = choose(rows, kept, criterion)
        oriented = [(1 if best is max else -1) * rows[name][key] for name in with_judge]
        by_criterion[criterion] = {
            "chosen": chosen,
            "spearman": spearman(oriented, rates),
            "regret": max(rates) - rows[chosen]["win_rate"] if chosen in with_judge else None,
        }
    made = by_criterion[choice["criterion"]]
    assert made["chosen"] == choice["best"], "the tournament and its report disagree on the best candidate"
    chosen = choice["chosen"]
    return {
        "chosen": chosen,
        "best": choice["best"],
        "gate": choice["gate"],
        "criterion": choice["criterion"],
        "stage": stage,
        "opponent": results["opponent"],
        "spearman_criterion_vs_judge": made["spearman"],
        "best_in_hindsight": with_judge[int(np.argmax(rates))] if rates else None,
        "regret": max(rates) - rows[chosen]["win_rate"] if chosen in with_judge else None,
        "by_criterion": by_criterion,
        "candidates": rows,
        "screen_rung": rung,
        "cost": cost,
    }


def _withinterval(row: dict, key: str, sign: str = "") -> str:
    return f"{row[key]:{sign}.3f} [{row[f'{key}_low']:{sign}.3f}, {row[f'{key}_high']:{sign}.3f}]"


def _or_dash(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def gate_sentence(gate: dict | None, criterion: str) -> str:
    """The gate's verdict in one sentence, for the tournament page."""
    if gate is None:
        return "No fallback: the best candidate is taken, however small its lead."
    g = gate
    if g["best"] == g["fallback"]:
        return f"The fallback `{g['fallback']}` is itself the best candidate by {criterion}."
    test = (
        f"paired lead of `{g['best']}` over `{g['fallback']}` on the {g['dev_pairs']} dev pairs: z = {g['z']:.2f}; "
        + (
            f"{g['z_needed']:.2f} needed for {100 * g['confidence']:g}% confidence against {g['rivals']} rival "
            "candidates"
            if g["confidence"]
            else "no lead test (confidence 0)"
        )
    )
    guard = (
        f"; on the guard, {g['guard']}, z = {g['guard_z']:.2f} against a bound of {g['guard_bound']:.2f}"
        if g["guard"]
        else ""
    )
    if g["passed"]:
        return f"Chose `{g['best']}`, the best by {criterion}, over the fallback ({test}{guard})."
    if g["z"] >= g["z_needed"]:  # the lead counted, the harm to the guard did too
        return (
            f"**Kept the fallback `{g['fallback']}`**: `{g['best']}` leads it on {criterion} but trails it on "
            f"{g['guard']} ({test}{guard}): its lead came at the cost of {g['guard']}."
        )
    needed = (
        f"; the same lead would need about {g['dev_pairs_needed']} dev pairs"
        if g["dev_pairs_needed"]
        else "; the best candidate shows no lead at all"
    )
    return (
        f"**Kept the fallback `{g['fallback']}`**: {g['dev_pairs']} dev pairs cannot tell `{g['best']}` "
        f"from it ({test}{guard}){needed}."
    )


def report_markdown(rep: dict) -> str:
    key = CRITERIA[rep["criterion"]][0]
    has_judge = any("win_rate" in r for r in rep["candidates"].values())
    has_truth = any("flipped_share_kept" in r for r in rep["candidates"].values())
    header = (
        "| candidate | rule | kept | dev margin [95%] | dev accuracy [95%] | dev loss [95%] | gap to chosen [95%] |"
        + (f" win rate vs {rep['opponent']} |" if has_judge else "")
        + (" flipped kept |" if has_truth else "")
    )
    lines = [
        f"# Tournament: `{rep['chosen']}` chosen by {rep['criterion']}",
        "",
        gate_sentence(rep["gate"], rep["criterion"]),
        "",
        "Each candidate's model judged on the dev pairs by forward passes: its implicit reward margin β·h against "
        "the SFT reference, the share of pairs it gets right (h > 0) and its DPO loss. Gap: the candidate's "
        f"{key} minus the chosen one's on the same pairs, with a paired interval."
        + (
            " Candidate models are shortened screening runs; the chosen rule's final model was trained in full."
            if rep["stage"] == "screen"
            else ""
        )
        + (
            " The candidates here are the screen rung's finalists, on their full models."
            if rep.get("screen_rung")
            else ""
        ),
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for name, r in rep["candidates"].items():
        line = (
            f"| {f'**{name}**' if name == rep['chosen'] else name} | {r['rule']} | {r['kept_fraction']:.2f} | "
            f"{_withinterval(r, 'margin')} | {_withinterval(r, 'accuracy')} | {_withinterval(r, 'loss')} | "
            f"{_withinterval(r, 'gap', '+')} |"
        )
        if has_judge:
            line += f" {_or_dash(r.get('win_rate'), '.3f')} |"
        if has_truth:
            line += f" {_or_dash(r.get('flipped_share_kept'), '.3f')} |"
        lines.append(line)
    if has_judge:
        lines += [
            "",
            f"By the judge, the best candidate in hindsight is `{rep['best_in_hindsight']}`; the regret of "
            f"the choice made is {_or_dash(rep['regret'], '.3f')}. What each dev criterion would choose "
            "before the fallback's gate, how it ranks the candidates against the judge (Spearman), and the "
            "regret of its choice (best win rate minus the chosen one's):",
            "",
            "| criterion | would choose | Spearman vs judge | regret |",
            "|---|---|---|---|",
        ]
        for criterion, made in rep["by_criterion"].items():
            mark = " (configured)" if criterion == rep["criterion"] else ""
            lines.append(
                f"| {criterion}{mark} | {made['chosen']} | {_or_dash(made['spearman'], '.2f')} | "
                f"{_or_dash(made['regret'], '.3f')} |"
            )
    if rep.get("screen_rung"):
        lines += ["", *rung_markdown(rep["screen_rung"], rep["cost"])]
    return "\n".join(lines) + "\n"


def rung_markdown(rung: dict, cost: dict) -> list[str]:
    """The screen rung of successive halving, and what the halving cost against a full tournament."""
    key = CRITERIA[rung["criterion"]][0]
    steps = cost["steps_per_candidate"]
    lines = [
        "## Screen rung",
        "",
        f"Every candidate's final run stopped part-way (its screen run) and judged on the dev pairs; the best by "
        f"{rung['criterion']}, and the fallback, continued to their full runs (the table above); the others "
        "were cut.",
        "",
        f"| candidate | kept | screen steps of final | dev {key} [95%] | |",
        "|---|---|---|---|---|",
    ]
    for name, r in rung["candidates"].items():
        lines.append(
            f"| {name} | {r['kept_fraction']:.2f} | {steps[name]['screen']} of {steps[name]['final']} | "
            f"{_withinterval(r, key)} | {'continued' if name in rung['finalists'] else 'cut'} |"
        )
    lines += [
        "",
        f"Cost: {cost['steps']} optimizer steps ({cost['screen_steps']} screening, {cost['finalist_steps']} "
        f"continuing {len(rung['finalists'])} finalists), {100 * cost['share_of_full']:.0f}% of the "
        f"{cost['full_tournament_steps']} of a full tournament; job time {cost['screen_seconds']:.0f} s "
        f"screening and {cost['finalist_seconds']:.0f} s continuing.",
    ]
    return lines


def adopt_winner(choice: dict, models: dict[str, str], out: str) -> str:
    """Make the chosen candidate's final model folder `out` as well: hard links where the file system allows (no
    second copy of the weights), else a copy. Hidden files are left out: a workflow's time stamp in the folder
    (Snakemake's `.snakemake_timestamp`) must not be shared, or touching one would touch the other. Returns the
    chosen candidate's name."""
    chosen = choice["chosen"]
    with atomic_path(out, is_dir=True) as tmp:
        shutil.copytree(
            models[chosen], tmp, dirs_exist_ok=True, copy_function=_link_or_copy, ignore=shutil.ignore_patterns(".*")
        )
    return chosen


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
