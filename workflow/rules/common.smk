import json
import os
from pathlib import Path

from prefselect.config import EXTERNAL_KINDS
from prefselect.settings import step_config
from prefselect.kinds import plan

OUT = config["outdir"]
# The selectors and the jobs they make (kinds.Plan): the auto selector's tournament, which selectors train a final
# model, and the DPO runs.
PLAN = plan(config)
SELECTORS = PLAN.selectors
AUTO = PLAN.auto
CANDIDATES = PLAN.candidates
SCREEN_EPOCHS = PLAN.screen_epochs
FINALISTS = PLAN.finalists
TOURNAMENT_STAGE = PLAN.tournament_stage
MATCHED = PLAN.matched
FINALS = PLAN.finals
TRAINED = PLAN.trained
STAGES = PLAN.stages
SHARDS = config["scoring"]["shards"]
SFT = config["model"]["path"]


def final_outputs():
    """What `all` asks for: the data report, the scores, every selection (exported too), the final models, the
    evaluation with its figures, and, where the config has them, the cross-fitted scores, the influence reports,
    the demo's deciles and the auto selector's tournament."""
    influence = config["influence"]
    influence_reports = [
        "agreement.json",
        "agreement.md",
        "agreement.png",
        "groups.json",
        "groups.md",
    ]
    if influence["group_training"]:
        influence_reports.append("groups.png")  # the group study's validation curves
    return [
        f"{OUT}/data/report.json",
        f"{OUT}/scores/scores.parquet",
        f"{OUT}/scores/crossfit.parquet" if config["crossfit"]["folds"] else [],
        expand(f"{OUT}/selection/{{selector}}.parquet", selector=SELECTORS),
        expand(
            f"{OUT}/selected/{{selector}}.{{ext}}",
            selector=SELECTORS,
            ext=["jsonl", "parquet"],
        ),
        expand(f"{OUT}/models/final-{{selector}}", selector=FINALS),
        f"{OUT}/eval/results.json",
        f"{OUT}/eval/results.md",
        # The agreement report and the group study of influence.
        (
            [f"{OUT}/eval/{name}" for name in influence_reports]
            if influence["enabled"]
            else []
        ),
        # The demo's ground truth says where the flipped labels sit in each score.
        f"{OUT}/eval/deciles.md" if config["demo"]["enabled"] else [],
        f"{OUT}/eval/plots/results.png",
        # Which candidate the auto selector chose, and why.
        f"{OUT}/eval/tournament.md" if AUTO else [],
    ]


def screen_run(wildcards):
    """The screen run a candidate's final run continues from, where the auto selector screens."""
    continues = (
        SCREEN_EPOCHS
        and wildcards.stage == "final"
        and wildcards.selector in CANDIDATES
    )
    return [f"{OUT}/models/screen-{wildcards.selector}"] if continues else []


def local_model(path):
    """A model folder as a rule input, so that a rebuilt model reruns its users; a hub id is no file.
    The SFT model that the demo or `model.gguf` builds, {outdir}/models/sft, is such a folder before it exists.
    """
    return [path] if path == f"{OUT}/models/sft" or Path(path).exists() else []


def local_file(path):
    """A data file (.jsonl, .json, .parquet) as a rule input; a hub id, a dataset folder or an unset path is none.

    Hub ids may hold dots (`org/data-v1.5`), so any other suffix does not make a file.
    """
    return (
        [path]
        if path and Path(path).suffix.lower() in {".jsonl", ".json", ".parquet"}
        else []
    )


def input_or(name, fallback):
    """A param: the path of input `name`, or `fallback` (a hub id) where that input is empty; none (empty) without
    a fallback."""
    return lambda wildcards, input: str(input[name]) or fallback or ""


def output_folder(name):
    return lambda wildcards, output: str(Path(output[name]).parent)


def ref_shards(split):
    return expand(f"{OUT}/logps/ref/{split}/{{i}}-of-{SHARDS}.parquet", i=range(SHARDS))


def settings(step, stage=None, selector=None):
    """A job's --config: the config keys its step reads, as JSON (for the shell as `{params.config:q}`); a change
    to one of them reruns the job."""
    return step_config(config, step, stage, selector)


def selector_settings(step, stage=None):
    """The --config of a job for one selector, `{selector}`: its rule among the keys. `stage` may name wildcards."""
    return lambda wildcards: step_config(
        config, step, stage and stage.format(**wildcards), wildcards.selector
    )


def checkpoint_dir(stage):
    """Where a DPO run keeps its checkpoints ({outdir}/checkpoints/{stage}). Declared nowhere as an output, since
    Snakemake deletes the outputs of a failed job, and the rerun resumes from these; `prefselect train` removes the
    folder once the model is complete."""
    return lambda wildcards: f"{OUT}/checkpoints/{stage.format(**wildcards)}"


# The SLURM partition of every job that asks for GPUs (profiles/slurm), if the cluster has one of its own.
GPU_PARTITION = os.environ.get("PREFSELECT_GPU_PARTITION")


def job_resources(section):
    """GPUs, memory and wall time (minutes) of a job, from config section `scoring`, `training` or `evaluation`.

    Memory grows with each attempt, so a job that ran out of it asks for more when the profile retries it. A job
    with GPUs gets `threads` CPUs per GPU (one process per GPU, each with its threads and data loading) and, where
    PREFSELECT_GPU_PARTITION is set, that partition.
    """
    settings = config[section]
    resources = dict(
        gpu=settings["gpus"],
        mem_mb=lambda wildcards, attempt: settings["mem_mb"] * attempt,
        runtime=settings["runtime"],
    )
    if settings["gpus"]:
        resources["cpus_per_gpu"] = settings["threads"]
        if GPU_PARTITION:
            resources["slurm_partition"] = GPU_PARTITION
    return resources


# The forward batch of the steps that compute log-probs: a job resource and `--batch-size`, not a key of the job's
# --config, since it changes no number (prefselect.settings.EXECUTION_KEYS): a new one reruns no job.
FORWARD_BATCH = {"batch_size": config["scoring"]["batch_size"]}


def selector_scores(wildcards):
    """The scores a selector reads: its external score, or the method's scores (with `influence` for TIF, with
    the cross-fitted columns for bands on them)."""
    spec = config["selectors"][wildcards.selector]
    if spec["kind"] in EXTERNAL_KINDS:
        return f"{OUT}/scores/external/{wildcards.selector}.parquet"
    bands = spec.get("bands", {})
    if "influence" in bands:
        return f"{OUT}/influence/scores.parquet"
    if {"xfit_irm", "xfit_loss"} & bands.keys():
        return f"{OUT}/scores/crossfit.parquet"
    return f"{OUT}/scores/scores.parquet"


def sft_logps(wildcards):
    """What an alignment_potential selector's score reads of the SFT model: its log-probs of the training pairs."""
    spec = config["selectors"][wildcards.selector]
    return ref_shards("train") if spec["kind"] == "alignment_potential" else []


def sft_tokenizer(wildcards):
    """An alignment_potential selector's tokenizer: the SFT model's, as its log-probs were taken; else none."""
    return SFT if sft_logps(wildcards) else ""


def reward_model(wildcards):
    """An external selector's reward model as an input, where it is a local folder."""
    path = config["selectors"][wildcards.selector].get("reward_model")
    return [path] if path and Path(path).exists() else []


def like_selection(wildcards):
    like = config["selectors"][wildcards.selector].get("like")
    return [f"{OUT}/selection/{like}.parquet"] if like else []


# The auto selector's tournament (tournament.smk).


def judged(wildcards):
    """The candidates whose models the tournament judges: every one, or the screen rung's finalists."""
    if not FINALISTS:
        return CANDIDATES
    return json.loads(Path(checkpoints.screen_rung.get().output[0]).read_text())[
        "finalists"
    ]


def judged_files(pattern):
    """An input function: `pattern` (with {name} for a candidate, {stage} for its model's) per judged candidate."""
    return lambda wildcards: [
        pattern.format(name=c, stage=TOURNAMENT_STAGE) for c in judged(wildcards)
    ]


def halving_benchmarks(wildcards):
    """What the report reads of successive halving's cost: the benchmark files of the screen runs and the finalists'
    final runs. A named input of its own: until the rung is known, Snakemake stands its checkpoint in for it.
    """
    if not FINALISTS:
        return []
    return expand(f"{OUT}/benchmarks/screen-{{c}}.tsv", c=CANDIDATES) + expand(
        f"{OUT}/benchmarks/final-{{c}}.tsv", c=judged(wildcards)
    )
