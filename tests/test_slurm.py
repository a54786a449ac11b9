"""The workflow on a real SLURM cluster through profiles/slurm: every job an sbatch job on fake GPUs, scoring jobs
that run out of memory, a partial rerun after them, and the profile's retries giving them more memory.

Needs a cluster: `bash .ci/slurm-up.sh` starts a one-node one on a Debian machine (as root); .ci/run does.
"""

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_workflow import jobs_of

REPO = Path(__file__).resolve().parents[1]
# The method's results: every kind of job but the report's figures (and time is short on 2 cores).
TARGET = "results/eval/results.json"
UPSTREAM = {"demo_snippets", "demo_tokenizer", "demo_sft", "demo_pairs", "prepare", "ref_logps", "warmup", "aux"}
# A stand-in for `python` in the rules' shell commands: a score job whose SLURM allocation has no more memory than
# the config's scoring.mem_mb fails as if it ran out of it (exit 137): the first attempt fails, the second, with
# twice the memory, does not.
FAKE_OOM = """#!/usr/bin/env bash
if [[ " $* " == *" prefselect "*" score "* ]]; then
  memory=$(scontrol show job "$SLURM_JOB_ID" | grep -oE 'MinMemoryNode=[0-9]+' | cut -d= -f2)
  if (( memory < {needed} )); then
    echo "test: out of memory: this job has ${{memory}} MB, scoring needs {needed}" >&2
    exit 137
  fi
fi
exec {python} "$@"
"""

pytestmark = pytest.mark.slurm


def cluster_problem() -> str | None:
    if not shutil.which("sinfo"):
        return "sinfo not found"
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    states = result.stdout.split()
    if result.returncode or not {"idle", "mixed", "allocated"} & set(states):
        return f"no node is up (sinfo: {result.stdout.strip() or result.stderr.strip()})"
    return None


def ci() -> bool:
    """In CI (`CI=true`, as .ci/run sets it) the cluster is part of the run: missing, it is a failure, not a skip."""
    return os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="module")
def cluster():
    problem = cluster_problem()
    if problem:
        why = f"no SLURM: {problem}; start a one-node cluster with `bash .ci/slurm-up.sh` (Debian, root)"
        pytest.fail(why) if ci() else pytest.skip(why)
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="no SLURM executor plugin: pip install '.[slurm]'")


def job_id(slurm_log: Path) -> int:
    return int(slurm_log.stem)


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        "--profile",
        str(REPO / "profiles" / "slurm"),
        # The test cluster has no accounting database: squeue instead of sacct, and poll it often.
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "2",
        *args,
        TARGET,
    ]
    bin_dir = workdir / "bin"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def workdir(cluster, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("slurm")
    # The end-to-end test's config with two selectors: every kind of job, fewer of them.
    config = yaml.safe_load((REPO / "tests" / "e2e" / "config.yaml").read_text())
    config["selectors"] = {name: config["selectors"][name] for name in ("lossdiff_irm", "full")}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    shim = workdir / "bin" / "python"
    shim.parent.mkdir()
    shim.write_text(FAKE_OOM.format(needed=config["scoring"]["mem_mb"] + 1, python=sys.executable))
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    return workdir


def test_scoring_jobs_out_of_memory_fail_the_run_after_everything_else_they_do_not_need(workdir):
    result = snakemake(workdir, "--retries", "0")
    assert result.returncode != 0
    out = workdir / "results"
    assert (out / "models/warmup/model.safetensors").is_file() and (out / "models/aux/model.safetensors").is_file()
    assert not list((out / "scores").glob("shards/*.parquet"))
    assert "test: out of memory" in (out / "logs/score/0-of-2.log").read_text()
    # The rules asked SLURM for GPUs, and the package kept the ones SLURM gave (fake devices: torch runs on the CPU).
    assert re.search(r"on the GPU\(s\) of SLURM job \d+: [01]\n", (out / "logs/warmup.log").read_text())


def test_rerun_plans_only_the_failed_jobs_and_their_dependents(workdir):
    result = snakemake(workdir, "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    planned = jobs_of(result.stdout)
    assert planned["score"] == 2 and not UPSTREAM & set(planned), planned


def test_retries_give_the_scoring_jobs_more_memory_and_the_run_completes(workdir):
    result = snakemake(workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    out = workdir / "results"
    scores = pd.read_parquet(out / "scores/scores.parquet")
    assert sorted(scores["id"]) == sorted(pd.read_parquet(out / "data/train.parquet")["id"])
    assert (out / "eval/results.json").is_file()
    # Each score shard was 3 sbatch jobs (SLURM's log of each kept): the first run's, this run's attempt 1 with
    # scoring.mem_mb, which failed, and its attempt 2 with twice that.
    memory = yaml.safe_load((workdir / "config.yaml").read_text())["scoring"]["mem_mb"]
    for shard in ("0", "1"):
        logs = sorted((workdir / ".snakemake/slurm_logs/rule_score" / f"{shard}_2").glob("*.log"), key=job_id)
        assert len(logs) == 3 and f"mem_mb={2 * memory}," in logs[-1].read_text()
        assert "test: out of memory" not in (out / f"logs/score/{shard}-of-2.log").read_text()
    assert "Nothing to be done" in snakemake(workdir, "-n").stdout


def test_model_jobs_asked_for_their_gpus_and_memory_and_downloads_ran_where_snakemake_runs(workdir):
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    sample_logs = list((workdir / ".snakemake/slurm_logs/rule_sample").rglob("*.log"))
    assert len(sample_logs) >= 3  # the SFT model's and each final model's samples, each its own sbatch job
    for log in sample_logs:
        text = log.read_text()
        assert "gpu=1," in text and f"mem_mb={config['evaluation']['mem_mb']}," in text, text[-2000:]
    # The download of the snippets and the seconds-long steps ran on this machine, not as sbatch jobs.
    assert (workdir / "results/demo/snippets.parquet").is_file()
    jobs = {path.name for path in (workdir / ".snakemake/slurm_logs").iterdir()}
    assert "rule_sample" in jobs and "rule_warmup" in jobs
    assert not jobs & {"rule_demo_snippets", "rule_prepare", "rule_select", "rule_merge_scores", "rule_evaluate"}


def test_in_ci_a_cluster_that_is_not_up_fails_the_run_with_its_reason(monkeypatch):
    monkeypatch.setenv("PATH", "")  # no sinfo: the state of a machine where SLURM could not be installed
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no SLURM: sinfo not found"):
        cluster.__wrapped__()
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="no SLURM: sinfo not found"):
        cluster.__wrapped__()
