"""Scoring speed and memory, and the workflow's overhead, measured in one run; prints a table, writes json.

    python benchmarks/scoring.py                        # full sizes, CPU (about 15 minutes on 2 cores)
    python benchmarks/scoring.py --quick                # reduced sizes (about a minute), as run by the tests
    python benchmarks/scoring.py --demo-results results # also time a no-op rerun of that completed demo run
    python benchmarks/scoring.py --device cuda          # GPU variant: larger models, bf16 autocast (< 5 minutes)
    python benchmarks/scoring.py --threads 1            # on a shared machine: with more threads than free cores,
                                                        # every OpenMP barrier waits for a descheduled thread

Rows, each on the same models and pairs:
- pairs/s of prefselect's scoring (`logps.examples_logps`: packed layout, token-budget batches) against TRL's
  per-example path (`DPOTrainer.compute_ref_log_probs` on TRL's collated batches of the same pairs, length-sorted,
  `batch_size` pairs each), on a demo-sized and a ~20M-parameter model; both start from the same tokenized pairs
  (TRL's tokenization, timed on its own row), and both timings include collation. The largest difference of the
  log-probs from TRL's, with and without truncation, is checked (1e-4, plus 1e-6 relative, in float32).
- the achieved forward FLOP rate, 2 · parameters · pair tokens / s, against the machine's measured matmul rate (on
  a GPU also against its bf16 dense peak).
- LossDiff-IRM scoring (the `score` step: log-probs under θ and θ_val) against the influence stage's per-pair
  gradients (`influence.influence`) on the same model and pairs, with the ratio of their FLOPs.
- peak memory (RSS) of one `prefselect logps` process against the number of pairs.
- workflow overhead: `snakemake -n` of the demo DAG, a no-op rerun of a completed demo run, merge + select.
Timings are the best of interleaved repeats (the machine may be shared); the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate.utils import AutocastKwargs
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from prefselect import settings as step_settings
from prefselect.influence import InfluenceSettings, influence, validation_gradient
from prefselect.logps import (
    collated_batches,
    cut,
    examples_logps,
    padded_length,
    pair_logps,
    token_budget,
    token_budget_batches,
    token_examples,
)
from prefselect.models import load_model, load_tokenizer
from prefselect.scoring import merge_shards
from prefselect.selection import select
from prefselect.training import DPOSettings, build_trainer, with_ref_logps

REPO = Path(__file__).resolve().parents[1]
# Log-probs must equal TRL's to |Δ| ≤ ATOL + RTOL·|TRL's|: the sums of hundreds of token log-probs of the GPU
# variant's pairs reach 1000 in magnitude, where float32 rounding alone exceeds 1e-4.
ATOL, RTOL = 1e-4, 1e-6
# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets; the first name found in the GPU's name wins.
BF16_PEAK = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


@dataclass
class Setup:
    """What one run measures: the models, the pairs, the sizes."""

    device: str
    dtype: torch.dtype  # of the matmul rate measured; scoring runs in TRL's training precision on the device
    models: dict[str, dict]  # name -> GPT-2 shape
    vocab: int  # the models' vocabulary (the tokenizer uses the first 2048 ids)
    max_length: int
    prompt_words: int  # of the pairs of every row but the speed rows' own
    completion_words: int
    speed: dict[str, tuple]  # row name -> (model name, pairs timed, prompt words, completion words)
    check_pairs: int  # pairs of the equality check against TRL
    repeats: int
    batch_size: int = 64
    influence_pairs: tuple[int, int] = (64, 32)  # training pairs, validation pairs
    influence_batch: int = 32
    memory_sizes: list[int] = field(default_factory=list)  # empty: row skipped
    merge_rows: int = 0


def setup(quick: bool, device: str) -> Setup:
    if device == "cuda":
        # Real-sized shapes: a GPT-2 small and medium with a 32k vocabulary, pairs of ~600 tokens.
        return Setup(
            device="cuda",
            dtype=torch.bfloat16,
            vocab=32768,
            max_length=512,
            prompt_words=100,
            completion_words=80,
            models={"124M": dict(n_layer=12, n_embd=768, n_head=12), "355M": dict(n_layer=24, n_embd=1024, n_head=16)},
            speed={"124M": ("124M", 2048, 100, 80), "355M": ("355M", 1024, 100, 80)},
            check_pairs=32,
            repeats=3,
            batch_size=32,
            influence_pairs=(32, 16),
            influence_batch=4,
        )
    shapes = {"demo (0.9M)": dict(n_layer=3, n_embd=128, n_head=4), "20M": dict(n_layer=6, n_embd=512, n_head=8)}
    common = dict(
        device="cpu", dtype=torch.float32, models=shapes, vocab=2048, max_length=64, prompt_words=3, completion_words=12
    )
    # The demo's shape of pair (3-word prompt, ~25-token completions) on both models; and dialogue-like pairs
    # whose prompt is longer than the completions, where computing the prompt once saves the most.
    n = (64, 16) if quick else (1024, 256)
    speed = {
        "demo (0.9M)": ("demo (0.9M)", n[0], 3, 12),
        "20M": ("20M", n[1], 3, 12),
        "20M, long prompts": ("20M", n[1], 16, 6),
    }
    if quick:
        return Setup(
            **common,
            speed=speed,
            check_pairs=8,
            repeats=1,
            influence_pairs=(16, 8),
            memory_sizes=[200, 600, 2000],
            merge_rows=100_000,
        )
    return Setup(
        **common,
        speed=speed,
        check_pairs=64,
        repeats=3,
        influence_pairs=(128, 64),
        memory_sizes=[10_000, 30_000, 100_000],
        merge_rows=1_000_000,
    )


# Inputs ---------------------------------------------------------------------------------------------------------


def synthetic_text(rng, n_words: int) -> str:
    return " ".join("".join(rng.choice(list("etaoinshrdlu"), size=rng.integers(2, 8))) for _ in range(n_words))


def build_tokenizer(folder: Path, rng) -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator([synthetic_text(rng, 20) for _ in range(3000)], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|pad|>"
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_model(folder: Path, tokenizer, shape: dict, vocab: int, n_positions: int, seed: int = 0) -> Path:
    """A GPT-2 of `shape` with random weights, saved with its tokenizer like any hub model."""
    ids = {
        f"{k}_token_id": tokenizer.convert_tokens_to_ids(getattr(tokenizer, f"{k}_token"))
        for k in ("bos", "eos", "pad")
    }
    torch.manual_seed(seed)
    GPT2LMHeadModel(
        GPT2Config(vocab_size=max(vocab, len(tokenizer)), n_positions=n_positions, **ids, **shape)
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def synthetic_pairs(rng, n: int, prompt_words: int = 3, completion_words: int = 12) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [f"p{i}" for i in range(n)],
            "prompt": [synthetic_text(rng, prompt_words) for _ in range(n)],
            "chosen": [" " + synthetic_text(rng, completion_words) for _ in range(n)],
            "rejected": [" " + synthetic_text(rng, completion_words) for _ in range(n)],
        }
    )


# Measuring ------------------------------------------------------------------------------------------------------


def best_times(fns: dict, repeats: int) -> dict[str, float]:
    """Best wall time of each function over `repeats` interleaved rounds, after one warm-up call each: on a shared
    machine the load shifts between rounds, and interleaving exposes every function to it alike."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def matmul_flops(device: str, dtype: torch.dtype) -> float:
    n = 8192 if device == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)

    def run():
        for _ in range(10):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()

    return 2 * n**3 * 10 / best_times({"mm": run}, 3)["mm"]


def trl_logps(trainer, model, examples: list[dict], pad_token_id: int, max_length: int, batch_size: int) -> np.ndarray:
    """TRL's per-example log-probs (`compute_ref_log_probs`) on TRL's collated batches, length-sorted."""
    out = np.empty((len(examples), 2))
    for index, batch in collated_batches(examples, pad_token_id, max_length, batch_size):
        chosen, rejected = trainer.compute_ref_log_probs(model, {k: v.to(model.device) for k, v in batch.items()})
        out[index, 0], out[index, 1] = chosen.float().cpu().numpy(), rejected.float().cpu().numpy()
    return out


def tokens_computed(examples: list[dict], pad_token_id: int, s: Setup, trl_batch: int | None = None) -> dict:
    """Tokens per pair: of the text, and the positions each path computes (with its padding); TRL's rows are
    batched `trl_batch` pairs at a time (default: batch_size)."""
    lengths = np.array([sum(map(len, cut(e, s.max_length))) for e in examples])
    batches = token_budget_batches(lengths, token_budget(s.batch_size, s.max_length))
    packed = sum(len(i) * padded_length(lengths[i].max()) for i in batches)
    collated = collated_batches(examples, pad_token_id, s.max_length, trl_batch or s.batch_size)
    trl = sum(b["input_ids"].numel() for _, b in collated)
    return {"text": lengths.mean(), "trl": trl / len(examples), "prefselect": packed / len(examples)}


def scoring_vs_trl(folder: Path, pairs: pd.DataFrame, s: Setup, peak: dict) -> dict:
    """Same model, same tokenized pairs: prefselect's scoring against TRL's per-example log-probs."""
    zeros = pairs[["id"]].assign(chosen_logp=0.0, rejected_logp=0.0)
    settings = DPOSettings.of(
        step_settings.load(None, "train", "warmup"), "warmup", batch_size=s.batch_size, max_length=s.max_length
    )
    trainer = build_trainer(str(folder), with_ref_logps(pairs, zeros), settings, str(folder / "trainer"))
    model, tokenizer = trainer.model.eval().to(s.device), trainer.processing_class
    pad = tokenizer.pad_token_id
    check = equality_check(trainer, model, pairs.iloc[: s.check_pairs], tokenizer, s)
    examples = token_examples(pairs, tokenizer, s.max_length)
    runs = {
        "prefselect": lambda: examples_logps(model, examples, pad, s.max_length, s.batch_size, packed=True),
        "padded": lambda: examples_logps(model, examples, pad, s.max_length, s.batch_size, packed=False),
        "trl": lambda: trl_logps(trainer, model, examples, pad, s.max_length, s.batch_size),
    }
    times = best_times(runs, s.repeats)
    tokens = tokens_computed(examples, pad, s)
    params = sum(p.numel() for p in model.parameters())
    flops = 2 * params * tokens["text"] * len(pairs) / times["prefselect"]
    row = {
        "pairs": len(pairs),
        "params": params,
        "tokens_per_pair": tokens,
        **{f"{name}_pairs_per_s": len(pairs) / t for name, t in times.items()},
        "speedup": times["trl"] / times["prefselect"],
        "tokens_per_s": tokens["text"] * len(pairs) / times["prefselect"],
        "forward_flops": flops,
        "share_of_matmul": flops / peak["matmul"],
        **check,
    }
    if peak.get("bf16"):
        row["share_of_bf16_peak"] = flops / peak["bf16"]
    return row


def equality_check(trainer, model, pairs: pd.DataFrame, tokenizer, s: Setup) -> dict:
    """Largest |prefselect − TRL| of the log-probs in float32, at max_length and where max_length truncates the
    completions (max_length a few tokens past the longest prompt)."""
    # On a GPU, bf16 autocast (both sides train and score in it) and TF32 would round the two differently:
    # compare in float32.
    tf32, handler = torch.backends.cuda.matmul.allow_tf32, trainer.accelerator.autocast_handler
    torch.backends.cuda.matmul.allow_tf32, trainer.accelerator.autocast_handler = False, AutocastKwargs(enabled=False)
    prompt = max(len(tokenizer(p)["input_ids"]) for p in pairs["prompt"])
    diffs, equal = {}, True
    for name, max_length in (("full", s.max_length), ("truncated", prompt + 4)):
        examples = token_examples(pairs, tokenizer, max_length)
        ours = examples_logps(
            model, examples, tokenizer.pad_token_id, max_length, s.batch_size, packed=True, autocast=False
        )
        theirs = trl_logps(trainer, model, examples, tokenizer.pad_token_id, max_length, s.batch_size)
        diffs[name] = float(np.abs(ours - theirs).max())
        equal &= bool(np.allclose(ours, theirs, rtol=RTOL, atol=ATOL))
    torch.backends.cuda.matmul.allow_tf32, trainer.accelerator.autocast_handler = tf32, handler
    return {"max_abs_diff_vs_trl": diffs, "equal_to_trl": equal}


def tokenization_rate(folder: Path, pairs: pd.DataFrame, s: Setup) -> float:
    tokenizer = load_tokenizer(str(folder))
    return len(pairs) / best_times({"tok": lambda: token_examples(pairs, tokenizer, s.max_length)}, 1)["tok"]


def influence_vs_scoring(work: Path, tokenizer, name: str, rng, s: Setup) -> dict:
    """The `score` step (log-probs of the pairs under θ and θ_val) against the influence stage (per-pair gradients
    of the DPO loss at θ, and ḡ_val over the validation pairs), on the same model shape and pairs."""
    n_train, n_val = s.influence_pairs
    pairs = synthetic_pairs(rng, n_train + n_val, s.prompt_words, s.completion_words)
    train, val = pairs.iloc[:n_train], pairs.iloc[n_train:]
    folders = {
        role: build_model(work / f"influence-{role}", tokenizer, s.models[name], s.vocab, 2 * s.max_length, seed)
        for seed, role in enumerate(("sft", "warmup", "aux"))
    }
    loaded = {role: load_model(str(path)).to(s.device) for role, path in folders.items()}
    ref = pair_logps(loaded["sft"], pairs, tokenizer, s.max_length, s.batch_size)  # computed once, shared by both
    settings = InfluenceSettings.of(
        step_settings.load(None, "influence"), max_length=s.max_length, batch_size=s.influence_batch
    )
    val_grad = {}

    def score():
        for role in ("warmup", "aux"):
            pair_logps(loaded[role], train, tokenizer, s.max_length, s.batch_size)

    def gradients():
        val_grad.update(validation_gradient(loaded["warmup"], val, ref, tokenizer, settings))
        return time.perf_counter()

    def per_pair():
        influence(loaded["warmup"], train, ref, tokenizer, val_grad, settings)

    gradients()
    times = best_times({"score": score, "influence": per_pair}, s.repeats)
    start = time.perf_counter()
    val_s = gradients() - start
    # FLOPs per pair, in units of 2 · parameters per token: scoring runs 2 forwards over the packed pair; a per-pair
    # gradient runs a forward and a backward (≈ 2 forwards) over TRL's two padded rows, in the influence batches.
    examples = token_examples(train, tokenizer, s.max_length)
    tokens = tokens_computed(examples, tokenizer.pad_token_id, s, trl_batch=s.influence_batch)
    flop_ratio = 3 * tokens["trl"] / (2 * tokens["prefselect"])
    return {
        "model": name,
        "pairs": n_train,
        "val_pairs": n_val,
        "tokens_per_pair": tokens,
        "score_s": times["score"],
        "influence_s": times["influence"],
        "val_grad_s": val_s,
        "ratio": times["influence"] / times["score"],
        "flop_ratio": flop_ratio,
    }


def peak_memory(folder: Path, n_pairs: int, rng, work: Path, s: Setup) -> dict:
    """Peak RSS of one `prefselect logps` process scoring n_pairs (a fresh process each), and what the step adds
    above the process's peak before it began, when its libraries were imported: a step that held every pair at
    once would add memory in proportion to the pairs; a streaming one adds the same at any size."""
    data = work / f"pairs-{n_pairs}.parquet"
    synthetic_pairs(rng, n_pairs, s.prompt_words, s.completion_words).to_parquet(data)
    step = [
        "--threads",
        str(torch.get_num_threads()),
        "logps",
        "--model",
        str(folder),
        "--data",
        str(data),
        "--config",
        json.dumps({"data": {"max_length": s.max_length}}),
        "--out",
        str(work / f"logps-{n_pairs}.parquet"),
    ]
    report_peak = (
        "import resource, sys; from prefselect.cli import main; "
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; main(sys.argv[1:]); "
        "print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    path = os.pathsep.join(filter(None, [str(REPO / "workflow"), os.environ.get("PYTHONPATH")]))
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-c", report_peak, *step],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
    )
    before, peak = (int(kb) / 1024 for kb in run.stdout.split()[-2:])
    return {
        "peak_rss_mb": peak,
        "imports_rss_mb": before,
        "added_rss_mb": peak - before,
        "text_mb": float(pd.read_parquet(data).memory_usage(deep=True).sum()) / 2**20,
        "seconds": time.perf_counter() - start,
    }


def memory_rows(work: Path, tokenizer, rng, s: Setup) -> dict:
    tiny = build_model(work / "tiny", tokenizer, dict(n_layer=1, n_embd=32, n_head=2), s.vocab, 2 * s.max_length)
    return {n: peak_memory(tiny, n, rng, work, s) for n in s.memory_sizes}


def merge_and_select(n_rows: int, rng) -> float:
    ids = pd.Series([f"p{i}" for i in range(n_rows)])
    shards = [
        pd.DataFrame({"id": part, "lossdiff": rng.normal(size=len(part)), "irm": rng.normal(size=len(part))})
        for part in np.array_split(ids.to_numpy(), 8)
    ]
    start = time.perf_counter()
    scores = merge_shards(shards, ids)
    select("lossdiff_irm", {"kind": "bands", "bands": {"lossdiff": [10, 90], "irm": [10, 90]}}, scores, scores[["id"]])
    return time.perf_counter() - start


# The workflow's overhead ----------------------------------------------------------------------------------------


def snakemake(workdir: Path, outdir: str, *args: str, configfile: Path = REPO / "config" / "config.yaml") -> dict:
    """Run snakemake on a config (the demo's); wall and CPU seconds (children's) and its output. --nolock: other runs
    may hold the checkout's lock, and these runs write nothing (a dry run, or a rerun with nothing to do)."""
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(configfile),
        "--config",
        f"outdir={outdir}",
        "--cores",
        "2",
        "--nolock",
        *args,
    ]
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{run.stdout[-2000:]}{run.stderr[-3000:]}")
    return {
        "seconds": wall,
        "cpu_seconds": after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime,
        "stdout": run.stdout,
    }


def job_counts(dry_run: str) -> dict[str, int]:
    """Jobs per rule from the 'Job stats' table of a dry run."""
    counts = {}
    for line in dry_run.split("Job stats:")[1].splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def cli_help_seconds(repeats: int = 3) -> float:
    """Best wall time of `prefselect --help` in a new process: what a user waits for before any step starts."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "prefselect", "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return min(times)


def workflow_overhead(demo_results: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        dry = snakemake(Path(tmp), f"{tmp}/results", "-n")
    jobs = job_counts(dry.pop("stdout"))
    import yaml

    shards = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["scoring"]["shards"]
    row = {
        "cli_help_s": cli_help_seconds(),
        "dry_run": {
            **dry,
            "jobs": jobs.pop("total"),
            "ref_logps_jobs": jobs.get("ref_logps", 0),
            # train, validation and dev pairs, one job per shard: the only jobs that compute them
            "ref_logps_expected": 3 * shards,
        },
    }
    if demo_results is None:
        row["noop_rerun"] = {"skipped": "no completed demo run given (--demo-results DIR)"}
    else:
        row["noop_rerun"] = noop_rerun(REPO, demo_results)
    return row


def noop_rerun(workdir: Path, outdir: str, **config) -> dict:
    """Seconds of `snakemake` in a completed run (working directory, outdir and config): planning alone, where
    nothing is left to do; otherwise why the row was skipped."""
    try:
        check = snakemake(workdir, outdir, "-n", **config)
    except RuntimeError as err:  # e.g. a run in progress there: incomplete files
        reason = next((line for line in str(err).splitlines() if "Exception" in line), str(err).splitlines()[-1])
        return {"skipped": f"snakemake -n fails in {outdir}: {reason.strip(': ')}"}
    if "Nothing to be done" not in check["stdout"]:
        pending = job_counts(check["stdout"]).get("total", "some")
        return {"skipped": f"{pending} jobs would run in {outdir}: not a completed run of this code and config"}
    rerun = snakemake(workdir, outdir, **config)
    return {"seconds": rerun["seconds"], "cpu_seconds": rerun["cpu_seconds"], "outdir": outdir}


# The run --------------------------------------------------------------------------------------------------------


def machine(device: str) -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), platform.processor()
    )
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": device,
        "load_average_start": os.getloadavg()[0],
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def bf16_peak(gpu: str) -> float | None:
    return next((peak for name, peak in BF16_PEAK.items() if name in gpu), None)


def run(args) -> dict:
    s = setup(args.quick, args.device)
    rng = np.random.default_rng(0)
    result = {
        "quick": args.quick,
        "machine": machine(args.device),
        "max_length": s.max_length,
        "batch_size": s.batch_size,
    }
    peak = {"matmul": matmul_flops(s.device, s.dtype)}
    if s.device == "cuda":
        peak["bf16"] = bf16_peak(result["machine"]["gpu"])
    result["peak_flops"] = peak
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tokenizer = build_tokenizer(work / "tokenizer", rng)
        if args.memory_only:
            result["peak_memory"] = memory_rows(work, tokenizer, rng, s)
            result["machine"]["load_average_end"] = os.getloadavg()[0]
            return result
        folders = {
            name: build_model(work / name, tokenizer, shape, s.vocab, 2 * s.max_length)
            for name, shape in s.models.items()
        }
        result["scoring"] = {}
        for row, (name, n_pairs, prompt_words, completion_words) in s.speed.items():
            pairs = synthetic_pairs(rng, n_pairs, prompt_words, completion_words)
            result["scoring"][row] = {"model": name, **scoring_vs_trl(folders[name], pairs, s, peak)}
        pairs = synthetic_pairs(rng, max(n for _, n, _, _ in s.speed.values()), s.prompt_words, s.completion_words)
        result["tokenization_pairs_per_s"] = tokenization_rate(folders[name], pairs, s)
        result["influence"] = influence_vs_scoring(work, tokenizer, next(iter(s.models)), rng, s)
        if s.memory_sizes:
            result["peak_memory"] = memory_rows(work, tokenizer, rng, s)
    if s.device == "cpu":  # machine-independent of the GPU: measured by the CPU run
        result["workflow"] = workflow_overhead(args.demo_results)
        result["merge_select_s"] = {s.merge_rows: merge_and_select(s.merge_rows, rng)}
    result["machine"]["load_average_end"] = os.getloadavg()[0]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced sizes, for CI")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--demo-results", help="outdir of a completed demo run (default config), for the no-op rerun")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core)")
    parser.add_argument("--memory-only", action="store_true", help="only the peak memory rows")
    parser.add_argument("--json", help="where to write the results (default: benchmarks/scoring[-quick][-cuda].json)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(
            f"--device cuda needs a CUDA GPU: torch {torch.__version__} sees none "
            f"(built with CUDA {torch.version.cuda})"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    default = "scoring" + "-quick" * args.quick + "-cuda" * (args.device == "cuda") + ".json"
    Path(args.json or REPO / "benchmarks" / default).write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(table(result))


def table(r: dict) -> str:
    m = r["machine"]
    gpu = f"; GPU {m['gpu']}" if "gpu" in m else ""
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads{gpu}; torch {m['torch']}; "
        f"load average {m['load_average_start']:.1f} at start, {m['load_average_end']:.1f} at end; "
        f"max_length {r['max_length']}, batch_size {r['batch_size']}",
        f"matmul: {r['peak_flops']['matmul'] / 1e9:.1f} GFLOP/s measured"
        + (f"; bf16 dense peak {r['peak_flops']['bf16'] / 1e12:.0f} TFLOP/s" if r["peak_flops"].get("bf16") else ""),
    ]
    if "scoring" in r:
        lines += [
            "",
            "| model | pairs | tokens/pair: text, TRL computes, prefselect computes | prefselect pairs/s "
            "| same, padded layout | TRL pairs/s | speed-up | forward GFLOP/s (share of matmul) | largest Δ "
            "from TRL (truncated) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, x in r["scoring"].items():
            t = x["tokens_per_pair"]
            bf16 = f", {x['share_of_bf16_peak']:.0%} of bf16 peak" if "share_of_bf16_peak" in x else ""
            lines.append(
                f"| {name} | {x['pairs']} | {t['text']:.0f}, {t['trl']:.0f}, {t['prefselect']:.0f} "
                f"| {x['prefselect_pairs_per_s']:.0f} | {x['padded_pairs_per_s']:.0f} | {x['trl_pairs_per_s']:.0f} "
                f"| {x['speedup']:.2f}x | {x['forward_flops'] / 1e9:.1f} ({x['share_of_matmul']:.0%}{bf16}) "
                f"| {x['max_abs_diff_vs_trl']['full']:.1e} ({x['max_abs_diff_vs_trl']['truncated']:.1e}) |"
            )
        lines += [
            "",
            f"TRL's tokenization (shared by both paths, not timed above): {r['tokenization_pairs_per_s']:.0f} pairs/s",
        ]
        i = r["influence"]
        lines += [
            "",
            "| model | pairs | LossDiff-IRM scoring (θ and θ_val) s | per-pair gradients s | ratio | FLOP ratio "
            "| ḡ_val s |",
            "|---|---|---|---|---|---|---|",
            f"| {i['model']} | {i['pairs']} | {i['score_s']:.2f} | {i['influence_s']:.2f} | {i['ratio']:.1f}x "
            f"| {i['flop_ratio']:.1f}x | {i['val_grad_s']:.2f} ({i['val_pairs']} pairs) |",
        ]
    if "peak_memory" in r:
        lines += [
            "",
            "| pairs in one `prefselect logps` process | their text in memory (MB) | peak RSS (MB) | "
            "of it, after the imports (MB) | added by the step (MB) | seconds |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {n} | {x['text_mb']:.0f} | {x['peak_rss_mb']:.0f} | {x['imports_rss_mb']:.0f} | "
            f"{x['added_rss_mb']:.0f} | {x['seconds']:.1f} |"
            for n, x in r["peak_memory"].items()
        ]
    if "workflow" in r:
        w = r["workflow"]
        d, noop = w["dry_run"], w["noop_rerun"]
        noop_cell = (
            f"{noop['seconds']:.1f} ({noop['cpu_seconds']:.1f})" if "seconds" in noop else f"skipped: {noop['skipped']}"
        )
        lines += [
            "",
            "| workflow | seconds (CPU seconds) |",
            "|---|---|",
            f"| `prefselect --help` (best of 3) | {w['cli_help_s']:.2f} |",
            f"| `snakemake -n`, demo DAG ({d['jobs']} jobs; {d['ref_logps_jobs']} compute reference log-probs) "
            f"| {d['seconds']:.1f} ({d['cpu_seconds']:.1f}) |",
            f"| no-op rerun of the demo DAG | {noop_cell} |",
        ]
        lines += [f"| merge + select, {n} score rows | {sec:.2f} |" for n, sec in r["merge_select_s"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
