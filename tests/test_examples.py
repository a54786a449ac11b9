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

from prefselect.config import load

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
        sys.executable, "-c", OFFLINE_SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(config), "--cores", "1", "--dry-run", "--printshellcmds",
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
        jobs.append({
            "rule": block.split(":", 1)[0].removeprefix("rule "),
            "resources": dict(item.split("=", 1) for item in resources.group(1).split(", ")) if resources else {},
            "shell": shell.group(1) if shell else "",
        })
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
    assert {"llama31_8b_ultrafeedback.yaml", "qwen3_8b_ultrafeedback.yaml"} <= names


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
    splits = Counter(re.search(r" --data \S*/(\w+)\.parquet ", job["shell"]).group(1)
                     for job in jobs if job["rule"] == "ref_logps")
    assert {"train", "val"} <= splits.keys() and set(splits.values()) == {scoring["shards"]}, splits
    assert counts["select"] == counts["final"] == n and counts["evaluate"] == 1
    for job in jobs:
        if job["rule"] in SCORING_RULES:
            assert job["resources"]["gpu"] == str(scoring["gpus"]), job
            assert f" --gpus {scoring['gpus']} " in job["shell"], job
        if job["rule"] in DPO_RULES:
            assert job["resources"]["gpu"] == str(training["gpus"]), job
            assert f" --gpus {training['gpus']} " in job["shell"], job
            assert f" --deepspeed {training['deepspeed']} " in job["shell"], job
            assert f" --batch-size {training['batch_size']} " in job["shell"], job


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
        "--source HuggingFaceH4/ultrafeedback_binarized", "--split train_prefs",
        "--validation HuggingFaceH4/ultrafeedback_binarized", "--validation-split test_prefs",
        f"--tokenizer {model}", f"--max-length {config['data']['max_length']}",
    ):
        assert argument in prepare["shell"], argument
    assert all(f"--model {model} " in job["shell"] for job in jobs if job["rule"] == "ref_logps")
    assert f"--model {model} " in next(job["shell"] for job in jobs if job["rule"] == "warmup")
