"""The scoring benchmark runs (reduced sizes) and reports every row with sane values; no timing is asserted."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCH = [sys.executable, str(REPO / "benchmarks" / "scoring.py")]


def test_quick_benchmark_reports_every_row(tmp_path):
    out = tmp_path / "bench.json"
    # One thread: CI machines are shared, and more threads than free cores stall at every OpenMP barrier.
    run = subprocess.run(
        [*BENCH, "--quick", "--threads", "1", "--json", str(out)], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["machine"]["torch_threads"] == 1 and r["peak_flops"]["matmul"] > 0
    assert set(r["scoring"]) == {"demo (0.9M)", "20M", "20M, long prompts"}
    for row in r["scoring"].values():
        assert row["equal_to_trl"], row["max_abs_diff_vs_trl"]  # with and without truncation
        assert all(row[f"{name}_pairs_per_s"] > 0 for name in ("prefselect", "padded", "trl"))
        assert row["speedup"] > 0 and 0 < row["share_of_matmul"] and row["tokens_per_s"] > 0
        tokens = row["tokens_per_pair"]
        # Computing the prompt once and padding per pair: fewer positions than TRL's two padded rows.
        assert tokens["text"] <= tokens["prefselect"] < tokens["trl"]
    assert r["tokenization_pairs_per_s"] > 0
    influence = r["influence"]
    assert influence["score_s"] > 0 and influence["influence_s"] > 0 and influence["ratio"] > 0
    assert influence["flop_ratio"] > 1  # a forward and a backward per sequence cost more than 2 packed forwards
    memory = {int(n): x for n, x in r["peak_memory"].items()}
    assert len(memory) == 3 and all(
        x["seconds"] > 0
        and 0 < x["imports_rss_mb"] <= x["peak_rss_mb"]
        and x["added_rss_mb"] == x["peak_rss_mb"] - x["imports_rss_mb"]
        for x in memory.values()
    )
    assert memory[max(memory)]["text_mb"] > 5 * memory[min(memory)]["text_mb"]
    # 10x the pairs: what the step adds stays within 50 MB (streamed; at these sizes all pairs are only a few MB)
    assert memory[max(memory)]["added_rss_mb"] < memory[min(memory)]["added_rss_mb"] + 50
    dry_run = r["workflow"]["dry_run"]
    assert dry_run["jobs"] > 0 and dry_run["seconds"] > 0 and r["workflow"]["cli_help_s"] > 0
    assert dry_run["ref_logps_jobs"] == dry_run["ref_logps_expected"]  # reference log-probs computed once
    assert all(s > 0 for s in r["merge_select_s"].values())
    assert "| demo (0.9M) |" in run.stdout and "added by the step (MB)" in run.stdout  # the table


def test_memory_only_runs_just_the_memory_rows(tmp_path):
    out = tmp_path / "memory.json"
    run = subprocess.run(
        [*BENCH, "--quick", "--memory-only", "--threads", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads(out.read_text())
    assert len(r["peak_memory"]) == 3 and "scoring" not in r and "workflow" not in r
    assert "added by the step (MB)" in run.stdout and "| model | pairs |" not in run.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU variant runs here")
def test_gpu_variant_fails_clearly_without_cuda():
    run = subprocess.run([*BENCH, "--device", "cuda"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "--device cuda needs a CUDA GPU" in run.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU benchmark runs here")
def test_dpo_step_benchmark_stops_clearly_without_cuda():
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "dpo_steps.py"), "--model", "unused"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "needs a CUDA GPU" in run.stderr


def fake_run(folder: Path, rates: dict, chosen: str, weights: str, size: int, seconds: float) -> Path:
    """The parts of a completed run that benchmarks/lora_vs_full.py reads."""
    (folder / "eval/dev").mkdir(parents=True)
    (folder / "eval/results.json").write_text(json.dumps({"selectors": {k: {"win_rate": v} for k, v in rates.items()}}))
    (folder / "eval/dev/choice.json").write_text(json.dumps({"chosen": chosen}))
    for stage in ("warmup", "aux", "final-full", "final-lossdiff_irm"):
        (folder / "models" / stage).mkdir(parents=True)
        log = [{"loss": 0.7, "step": 1}, {"loss": 0.6, "step": 4}, {"train_runtime": 4 * seconds, "step": 4}]
        (folder / "models" / stage / "training_log.json").write_text(json.dumps(log))
    (folder / "models/final-full" / weights).write_bytes(b"0" * size)
    (folder / "models/final-full/tokenizer.json").write_bytes(b"0" * 1000)  # not counted
    return folder


def test_lora_vs_full_pairs_the_runs_of_each_seed(tmp_path):
    names = ["full", "random", "lossdiff_irm", "aux_irm_top64", "auto"]
    full = [
        fake_run(tmp_path / f"full-{s}", {n: 0.5 + 0.01 * s for n in names}, "auto", "model.safetensors", 300, 0.4)
        for s in (0, 1)
    ]
    lora = [
        fake_run(
            tmp_path / f"lora-{s}", {n: 0.52 + 0.03 * s for n in names}, "full", "adapter_model.safetensors", 20, 0.2
        )
        for s in (0, 1)
    ]
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "lora_vs_full.py"),
            "--full",
            *map(str, full),
            "--lora",
            *map(str, lora),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    # LoRA − full per seed: 0.02 and 0.04, so 0.030 ± 0.014
    assert "| random | 0.505 ± 0.007 | 0.535 ± 0.021 | 0.030 ± 0.014 |" in run.stdout
    assert "| lora-1 | auto (0.510) | full (0.550) |" in run.stdout
    assert "| one trained model on disk (`final-full`, bytes) | 300 | 20 |" in run.stdout
    assert "| s per optimizer step, warmup (median of runs) | 0.400 | 0.200 |" in run.stdout
