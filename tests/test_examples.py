"""Every configuration in config/examples/ validates and plans its whole DAG in a dry run, with no download.

Hub ids are not files, so nothing in the plan waits for them, and planning must not touch the network: the dry
run runs with every socket connection refused. The plan must give each job what the configuration asks for:
one scoring job per shard on `scoring.gpus` GPUs, DPO runs on `training.gpus` GPUs with the DeepSpeed stage.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from prefselect.config import auto_selector, load

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "config" / "examples").glob("*.yaml"))
DPO_RULES = ("warmup", "aux", "final")
SCORING_RULES = ("ref_logps", "score")

# Snakemake's command line, in a process where opening any network connection fails.
OFFLINE_SNAKEMAKE = """
import socket, sys

def refuse(*args, **kwargs):
    raise OSError("network access while planning the workflow")

socket.socket.connect = socket.socket.connect_ex = socket.create_connection = socket.getaddrinfo = refuse
from snakemake.cli import main
sys.argv[0] = "snakemake"
main()
"""


def dry_run(config: Path, workdir: Path) -> str:
    """`snakemake -n -p --configfile <config>` where the workflow's own config/config.yaml (the demo) is present,
    as in a checkout, so that the plan is the one a user gets."""
    (workdir / "config").mkdir()
    shutil.copyfile(REPO / "config" / "config.yaml", workdir / "config" / "config.yaml")
    command = [
        sys.executable,
        "-c",
        OFFLINE_SNAKEMAKE,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config),
        "--cores",
        "1",
        "--dry-run",
        "--printshellcmds",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def planned_jobs(output: str) -> list[dict]:
    """One dict per planned job: `rule`, its `resources` and its `shell` command, from a dry run's printout."""
    jobs = []
    for block in re.split(r"\n(?=rule \w+:\n)", output)[1:]:
        resources = re.search(r"^\s+resources: (.*)$", block, re.M)
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        jobs.append(
            {
                "rule": block.split(":", 1)[0].removeprefix("rule "),
                "resources": dict(item.split("=", 1) for item in resources.group(1).split(", ")) if resources else {},
                "shell": shell.group(1) if shell else "",
            }
        )
    return jobs


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    """The planned jobs of an example, from one dry run per example in a working directory of its own."""
    plans = {}

    def planned(example: Path) -> list[dict]:
        if example not in plans:
            workdir = tmp_path_factory.mktemp(example.stem)
            plans[example] = planned_jobs(dry_run(example, workdir))
            assert not any(workdir.glob("results*")), "a dry run writes no results"
        return plans[example]

    return planned


def test_there_are_examples_for_gpus():
    names = {path.name for path in EXAMPLES}
    assert {"llama31_8b_ultrafeedback.yaml", "qwen3_8b_ultrafeedback.yaml", "llama31_8b_lora_auto.yaml"} <= names


def test_the_lora_example_trains_every_stage_as_an_adapter_on_one_gpu_with_the_demos_tournament(plan):
    example = REPO / "config" / "examples" / "llama31_8b_lora_auto.yaml"
    config = load(str(example))
    assert config["training"]["gpus"] == 1 and config["training"]["lora"]["target_modules"] == "all-linear"
    demo = load(str(REPO / "config" / "examples" / "demo_tournament.yaml"))
    assert config["selectors"]["auto"] == demo["selectors"]["auto"]  # the demo's 13 candidates
    jobs = plan(example)
    dpo = [job for job in jobs if job["rule"] in DPO_RULES]
    # warm-up, θ_val, 13 candidates' finals and random's (auto adopts its winner's)
    assert len(dpo) == 2 + 13 + 1 and Counter(job["rule"] for job in jobs)["adopt_winner"] == 1
    for job in dpo:
        assert job["resources"]["gpu"] == "1" and " --gpus 1 " in job["shell"], job
        assert (
            '"lora": {"alpha": 32, "dropout": 0.05, "merge": false, "r": 16, "target_modules": "all-linear"}'
            in job["shell"]
        ), job


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_example_plans_every_job_as_configured(example, plan):
    config = load(str(example))  # the schema and the checks across keys
    training, scoring = config["training"], config["scoring"]
    assert training["batch_size"] % max(training["gpus"], 1) == 0, "a training batch must split evenly over its GPUs"

    jobs = plan(example)
    counts = Counter(job["rule"] for job in jobs)
    n = len(config["selectors"])
    assert counts["prepare"] == 1
    assert counts["score"] == scoring["shards"]
    # Reference log-probs: the same shards for every split that has them (train and val, and test where it exists)
    splits = Counter(
        re.search(r" --data \S*/(\w+)\.parquet ", job["shell"]).group(1) for job in jobs if job["rule"] == "ref_logps"
    )
    assert {"train", "val"} <= splits.keys() and set(splits.values()) == {scoring["shards"]}, splits
    # Every selector gets its selection and a final model; an auto selector's comes from its tournament, whose
    # candidates' own models (screening runs, with screen_epochs) are DPO runs too.
    auto = auto_selector(config)
    assert counts["select"] + counts["select_matched"] + bool(auto) == n and counts["evaluate"] == 1
    assert counts["final"] >= n - bool(auto) and counts["tournament"] == bool(auto)
    if auto:
        assert counts["adopt_winner"] == 1 or any(f"/models/final-{auto} " in job["shell"] for job in jobs)
    for job in jobs:
        if job["rule"] in SCORING_RULES:
            assert job["resources"]["gpu"] == str(scoring["gpus"]), job
            assert f" --gpus {scoring['gpus']} " in job["shell"], job
        if job["rule"] in DPO_RULES:
            assert job["resources"]["gpu"] == str(training["gpus"]), job
            assert f" --gpus {training['gpus']} " in job["shell"], job
            assert f'"deepspeed": "{training["deepspeed"]}"' in job["shell"], job
            assert f'"batch_size": {training["batch_size"]}' in job["shell"], job


@pytest.mark.parametrize("name", ["llama31_8b_ultrafeedback", "qwen3_8b_ultrafeedback"])
def test_gpu_example_reads_hub_model_and_ultrafeedback_splits(name, plan):
    example = REPO / "config" / "examples" / f"{name}.yaml"
    config = load(str(example))
    assert config["training"]["gpus"] > 1 and config["training"]["deepspeed"] == "zero3"
    assert config["scoring"]["gpus"] == 1 and config["scoring"]["shards"] > 1
    assert config["evaluation"]["judge"]["kind"] in ("reward_model", "llm")

    jobs = plan(example)
    (prepare,) = [job for job in jobs if job["rule"] == "prepare"]
    model = config["model"]["path"]
    for argument in (
        "--source HuggingFaceH4/ultrafeedback_binarized",
        '"split": "train_prefs"',
        "--validation HuggingFaceH4/ultrafeedback_binarized",
        '"validation_split": "test_prefs"',
        f"--tokenizer {model}",
        f'"max_length": {config["data"]["max_length"]}',
    ):
        assert argument in prepare["shell"], argument
    assert all(f"--model {model} " in job["shell"] for job in jobs if job["rule"] == "ref_logps")
    assert f"--model {model} " in next(job["shell"] for job in jobs if job["rule"] == "warmup")


# Every rule that loads a model, by the config section its resources come from.
MODEL_RULES = {
    "ref_logps": "scoring",
    "score": "scoring",
    "reward_margin": "scoring",
    "heldout_logps": "scoring",
    "val_grad": "scoring",
    "influence": "scoring",
    "warmup": "training",
    "aux": "training",
    "final": "training",
    "group_train": "training",
    "sample": "evaluation",
}


@pytest.mark.parametrize("name", ["llama31_8b_ultrafeedback", "qwen3_8b_ultrafeedback", "llama31_8b_lora_auto"])
def test_on_slurm_every_model_job_of_a_gpu_example_gets_gpus_memory_cpus_and_the_gpu_partition(name, tmp_path):
    """A dry run through profiles/slurm, rule by rule: a job that loads a model asks for its section's GPUs,
    memory and wall time, `threads` CPUs per GPU, and PREFSELECT_GPU_PARTITION; every other job, none of them."""
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="no SLURM executor plugin: pip install '.[slurm]'")
    example = REPO / "config" / "examples" / f"{name}.yaml"
    config = load(str(example))
    (tmp_path / "config").mkdir()
    shutil.copyfile(REPO / "config" / "config.yaml", tmp_path / "config" / "config.yaml")
    command = [
        sys.executable,
        "-c",
        OFFLINE_SNAKEMAKE,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--configfile",
        str(example),
        "--profile",
        str(REPO / "profiles" / "slurm"),
        "--dry-run",
        "--printshellcmds",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFSELECT_GPU_PARTITION": "gpu-a100"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = planned_jobs(result.stdout)
    judge_model = config["evaluation"]["judge"]["kind"] == "reward_model"
    seen = set()
    for job in jobs:
        section = MODEL_RULES.get(job["rule"]) or ("evaluation" if job["rule"] == "evaluate" and judge_model else None)
        resources = job["resources"]
        if section is None:
            assert int(resources.get("gpu", 0)) == 0 and "slurm_partition" not in resources, job
            continue
        seen.add(job["rule"])
        settings = config[section]
        assert int(resources["gpu"]) == settings["gpus"] >= 1, job
        assert int(resources["mem_mb"]) == settings["mem_mb"] and int(resources["runtime"]) == settings["runtime"], job
        assert int(resources["cpus_per_gpu"]) == settings["threads"] > 1, job
        assert resources["slurm_partition"] == "gpu-a100", job
        assert f" --gpus {settings['gpus']} " in job["shell"], job
    assert {"ref_logps", "score", "warmup", "aux", "final", "sample"} <= seen
    assert ("evaluate" in seen) == judge_model and ("reward_margin" in seen) == any(
        spec["kind"] == "external" and "reward_model" in spec for spec in config["selectors"].values()
    )


def test_a_fresh_plan_with_successive_halving_waits_for_the_screen_rung(tmp_path):
    """Before any job ran, the finalists are unknown: the plan holds every screen run and the screen rung, and the
    tournament's report waits for the rung (Snakemake plans the finalists' runs once it is written)."""
    config = yaml.safe_load((REPO / "tests/e2e/config.yaml").read_text())
    config["selectors"]["auto"].update({"screen_epochs": 0.5, "finalists": 1})
    (tmp_path / "halving.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "run").mkdir()
    output = dry_run(tmp_path / "halving.yaml", tmp_path / "run")
    jobs = planned_jobs(output)
    screens = [job for job in jobs if job["rule"] == "final" and "--stage screen" in job["shell"]]
    assert len(screens) == len(config["selectors"]["auto"]["candidates"]) + 1  # and the grid's one candidate
    report = next(job for job in jobs if job["rule"] == "tournament_report")
    assert "--rung results/eval/dev/screen_rung.json" in report["shell"]
    assert output.count("checkpoint screen_rung:") == 1
