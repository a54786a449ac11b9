"""Scoring speed and memory, measured in one run on the same models and pairs; prints a table, writes json.

    python benchmarks/scoring.py                # full sizes (~15 minutes on 2 CPU cores)
    python benchmarks/scoring.py --quick        # reduced sizes (about a minute), as run by the tests

Rows: pairs/s of prefselect's scoring against TRL's per-example path (`DPOTrainer.compute_ref_log_probs` on the
same collated batches) on a demo-sized and a ~20M-parameter model; the achieved forward FLOP rate against the
machine's measured float32 matmul rate; peak memory of one scoring process against the number of pairs; merge +
select of synthetic score rows.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from prefselect.logps import collated_batches, completion_logps, tokenize_pairs
from prefselect.scoring import merge_shards
from prefselect.selection import select
from prefselect.training import DPOSettings, build_trainer, with_ref_logps

MODELS = {"demo (0.9M)": dict(n_layer=3, n_embd=128, n_head=4), "20M": dict(n_layer=6, n_embd=512, n_head=8)}


def synthetic_text(rng, n_words: int) -> str:
    return " ".join("".join(rng.choice(list("etaoinshrdlu"), size=rng.integers(2, 8))) for _ in range(n_words))


def build_tokenizer(folder: Path, rng) -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([synthetic_text(rng, 20) for _ in range(3000)], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|pad|>"
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_model(folder: Path, tokenizer, shape: dict) -> int:
    ids = {f"{k}_token_id": tokenizer.convert_tokens_to_ids(getattr(tokenizer, f"{k}_token")) for k in ("bos", "eos", "pad")}
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, **ids, **shape)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def synthetic_pairs(rng, n: int) -> pd.DataFrame:
    return pd.DataFrame({
        "id": [f"p{i}" for i in range(n)],
        "prompt": [synthetic_text(rng, 3) for _ in range(n)],
        "chosen": [" " + synthetic_text(rng, 12) for _ in range(n)],
        "rejected": [" " + synthetic_text(rng, 12) for _ in range(n)],
    })


def timed(fn, repeats: int = 2) -> float:
    """Best wall time of a few repeats, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_flops() -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    return 2 * 1024**3 * 10 / timed(lambda: [a @ b for _ in range(10)])


def scoring_vs_trl(folder: Path, pairs: pd.DataFrame, batch_size: int) -> dict:
    """Same model, same collated batches: our completion-only forward against TRL's per-example log-probs."""
    ref = pairs[["id"]].assign(chosen_logp=0.0, rejected_logp=0.0)
    trainer = build_trainer(str(folder), with_ref_logps(pairs, ref), DPOSettings(batch_size=batch_size), str(folder / "trainer"))
    model, tokenizer = trainer.model.eval(), trainer.processing_class
    examples = tokenize_pairs(pairs, tokenizer, 64).select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]).to_list()
    batches = [batch for _, batch in collated_batches(examples, tokenizer.pad_token_id, 64, batch_size)]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)

    def ours():
        with torch.inference_mode():
            for batch in batches:
                completion_logps(model, batch)

    def trl():
        for batch in batches:
            trainer.compute_ref_log_probs(model, batch)

    t_ours, t_trl = timed(ours), timed(trl)
    params = sum(p.numel() for p in model.parameters())
    return {"pairs": len(pairs), "params": params, "ours_pairs_per_s": len(pairs) / t_ours,
            "trl_pairs_per_s": len(pairs) / t_trl, "speedup": t_trl / t_ours,
            "ours_flops": 2 * params * tokens / t_ours}


def peak_memory_mb(folder: Path, n_pairs: int, rng, work: Path) -> float:
    """Peak RSS of one `prefselect logps` process scoring n_pairs (a fresh process, so peaks do not carry over)."""
    data = work / f"pairs-{n_pairs}.parquet"
    synthetic_pairs(rng, n_pairs).to_parquet(data)
    step = ["logps", "--model", str(folder), "--data", str(data), "--out", str(work / f"logps-{n_pairs}.parquet")]
    report_peak = "import resource, sys; from prefselect.cli import main; main(sys.argv[1:]); " \
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    run = subprocess.run([sys.executable, "-c", report_peak, *step], check=True, capture_output=True, text=True)
    return int(run.stdout.split()[-1]) / 1024


def merge_and_select(n_rows: int, rng) -> float:
    ids = pd.Series([f"p{i}" for i in range(n_rows)])
    shards = [pd.DataFrame({"id": part, "lossdiff": rng.normal(size=len(part)), "irm": rng.normal(size=len(part))})
              for part in np.array_split(ids.to_numpy(), 8)]
    start = time.perf_counter()
    scores = merge_shards(shards, ids)
    select("lossdiff_irm", {"kind": "bands", "bands": {"lossdiff": [10, 90], "irm": [10, 90]}}, scores, scores[["id"]])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced sizes, for CI")
    parser.add_argument("--json", default="benchmarks/scoring.json")
    args = parser.parse_args()
    n_pairs, memory_sizes, merge_rows = (256, [1000, 4000], 100_000) if args.quick else (1024, [10_000, 100_000], 1_000_000)
    rng = np.random.default_rng(0)
    result = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.processor() or ''}",
              "torch": torch.__version__, "matmul_flops": matmul_flops(), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tokenizer = build_tokenizer(work / "tokenizer", rng)
        pairs = synthetic_pairs(rng, n_pairs)
        for name, shape in MODELS.items():
            build_model(work / name, tokenizer, shape)
            result["models"][name] = scoring_vs_trl(work / name, pairs, batch_size=64)
        result["peak_memory_mb"] = {n: peak_memory_mb(work / "demo (0.9M)", n, rng, work) for n in memory_sizes}
    result["merge_select_s"] = {merge_rows: merge_and_select(merge_rows, rng)}
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(table(result))


def table(r: dict) -> str:
    lines = [f"machine: {r['machine']}; torch {r['torch']}; float32 matmul {r['matmul_flops'] / 1e9:.1f} GFLOP/s", "",
             "| model | params | pairs | prefselect pairs/s | TRL pairs/s | speed-up | forward GFLOP/s (share of matmul) |",
             "|---|---|---|---|---|---|---|"]
    for name, m in r["models"].items():
        lines.append(f"| {name} | {m['params'] / 1e6:.1f}M | {m['pairs']} | {m['ours_pairs_per_s']:.0f} | "
                     f"{m['trl_pairs_per_s']:.0f} | {m['speedup']:.2f}x | {m['ours_flops'] / 1e9:.1f} "
                     f"({m['ours_flops'] / r['matmul_flops']:.0%}) |")
    lines += ["", "| pairs in one scoring process | peak memory (MB) |", "|---|---|"]
    lines += [f"| {n} | {mb:.0f} |" for n, mb in r["peak_memory_mb"].items()]
    lines += ["", "| score rows | merge + select (s) |", "|---|---|"]
    lines += [f"| {n} | {s:.2f} |" for n, s in r["merge_select_s"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
