"""The real DAG on a small demo config, and a partial rerun after one score shard is lost."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
CONTRACT = [
    "data/train.parquet", "data/val.parquet", "data/quarantine.jsonl", "data/report.json",
    "scores/scores.parquet", "eval/results.json", "eval/results.md", "eval/deciles.md",
]
SCORE_COLUMNS = [
    "id", "ref_chosen_logp", "ref_rejected_logp", "chosen_logp", "rejected_logp", "aux_chosen_logp",
    "aux_rejected_logp", "irm", "aux_irm", "loss", "aux_loss", "lossdiff",
]
SELECTORS = ["lossdiff_irm", "full", "random", "oracle", "rated"]

pytestmark = pytest.mark.e2e


def snakemake(workdir: Path, *args: str, config: str = "config.yaml") -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(REPO / "tests" / "e2e" / config), "--cores", "2", *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def jobs_of(dry_run_output: str) -> dict[str, int]:
    """Job counts from the 'Job stats' table of a dry run."""
    lines = dry_run_output.split("Job stats:")[1].splitlines()[3:]
    counts = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("e2e")
    snakemake(workdir)
    return workdir


def test_every_output_of_the_contract_exists(workdir):
    out = workdir / "results"
    for path in CONTRACT:
        assert (out / path).is_file(), path
    for model in ["sft", "warmup", "aux"] + [f"final-{s}" for s in SELECTORS]:
        assert (out / "models" / model / "model.safetensors").is_file(), model
    scores = pd.read_parquet(out / "scores/scores.parquet")
    assert list(scores.columns) == SCORE_COLUMNS
    train = pd.read_parquet(out / "data/train.parquet")
    assert sorted(scores["id"]) == sorted(train["id"])
    for selector in SELECTORS:
        selection = pd.read_parquet(out / "selection" / f"{selector}.parquet")
        assert list(selection.columns) == ["id", "selected"] and len(selection) == len(train)


def test_results_report_every_selector(workdir):
    out = workdir / "results"
    results = json.loads((out / "eval/results.json").read_text())["selectors"]
    assert set(results) == set(SELECTORS)
    assert results["full"]["kept_fraction"] == 1.0
    assert results["oracle"]["flipped_share_kept"] == 0.0
    assert results["random"]["kept"] == results["lossdiff_irm"]["kept"] == results["rated"]["kept"]
    train = pd.read_parquet(out / "data/train.parquet").set_index("id")
    rated = pd.read_parquet(out / "selection/rated.parquet").set_index("id")["selected"]
    margin = train.loc[rated.index, "oracle_margin"]
    assert margin[rated].min() >= margin[~rated].max()  # the external selector keeps the best-rated pairs
    for r in results.values():
        assert r["ci_low"] <= r["win_rate"] <= r["ci_high"]
        assert r["n"] == 32 * 2
    report = json.loads((out / "data/report.json").read_text())
    assert sum(report["rows_read"].values()) == report["train"] + report["val"] + report["quarantined_total"]


def test_html_report_holds_the_figures(workdir, tmp_path):
    snakemake(workdir, "--report", str(tmp_path / "report.zip"))
    names = [Path(n).name for n in zipfile.ZipFile(tmp_path / "report.zip").namelist()]
    for figure in ["scores.png", "training.png", "results.png", "results.html", "data.html", "report.html"]:
        assert figure in names, figure


def test_rerun_after_a_lost_score_shard_recomputes_only_that_shard_and_its_dependents(workdir):
    """The state a failed scoring job leaves: its shard and everything downstream missing, the rest intact."""
    out = workdir / "results"
    before = pd.read_parquet(out / "scores/scores.parquet")
    (out / "scores/shards/1-of-2.parquet").unlink()
    (out / "scores/scores.parquet").unlink()
    shutil.rmtree(out / "selection")
    for selector in SELECTORS:
        shutil.rmtree(out / f"models/final-{selector}")
        (out / f"eval/samples/final-{selector}.parquet").unlink()
    for path in ["eval/results.json", "eval/results.md"]:
        (out / path).unlink()
    planned = jobs_of(snakemake(workdir, "-n").stdout)
    n = len(SELECTORS)
    # Not planned: demo, prepare, ref_logps, warmup, aux, the other shard, nor sampling the SFT model again.
    assert planned == {
        "all": 1, "score": 1, "merge_scores": 1, "select": n, "final": n, "sample": n, "evaluate": 1, "diagnose": 1,
        "plots": 1,
    }
    snakemake(workdir)
    pd.testing.assert_frame_equal(before, pd.read_parquet(out / "scores/scores.parquet"))
    assert "Nothing to be done" in snakemake(workdir, "-n").stdout
