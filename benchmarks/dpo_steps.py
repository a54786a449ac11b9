"""DPO optimizer steps on one GPU in bf16, full fine-tuning against LoRA: seconds per step and peak GPU memory.

    python benchmarks/dpo_steps.py --model results-smollm2/models/sft      # SmolLM2-135M-Instruct (smollm2.yaml)
    python benchmarks/dpo_steps.py --model HuggingFaceTB/SmolLM2-135M-Instruct --steps 20 --max-length 512

Each mode trains prefselect's own DPO run (`training.build_trainer`: TRL's DPOTrainer on precomputed reference
log-probs, bf16 where the GPU has it) for `--steps` optimizer steps of `--batch-size` pairs on synthetic pairs of
about `--max-length` tokens, LoRA with `training.lora`'s defaults (r 16 on every linear layer). The first step
(allocation, kernel selection) is left out of the timing. Peak memory is torch's `max_memory_allocated` over the
run. Prints a table and writes json (`--out`). Without a CUDA GPU it stops with an error.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import TrainerCallback

WORDS = (
    "the quiet river ran past old stone walls while children laughed and a dog barked at the passing boats "
    "under a bright sky full of birds that sang of summer rain and distant hills"
).split()


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step, the GPU synchronised at both ends."""

    def __init__(self):
        self.seconds: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        torch.cuda.synchronize()
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - self.start)


def synthetic_pairs(n: int, words: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)

    def text(k: int) -> str:
        return " " + " ".join(rng.choice(WORDS, size=k))

    prompt_words = words // 4
    return pd.DataFrame(
        [
            {
                "id": f"p{i}",
                "prompt": text(prompt_words).strip(),
                "chosen": text(words - prompt_words),
                "rejected": text(words - prompt_words),
            }
            for i in range(n)
        ]
    )


def run_mode(model: str, lora: dict | None, pairs: pd.DataFrame, ref: pd.DataFrame, args) -> dict:
    from prefselect import settings as config_settings
    from prefselect.training import DPOSettings, build_trainer, with_ref_logps

    defaults = config_settings.load(None, "train", "warmup")  # the schema's defaults, but for what follows
    settings = DPOSettings.of(
        defaults,
        "warmup",
        batch_size=args.batch_size,
        micro_batch_size=args.micro_batch_size,
        epochs=1,
        max_length=args.max_length,
        learning_rate=1e-6 if lora is None else 1e-5,
        lora=lora,
        save_steps=0,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as work:
        trainer = build_trainer(model, with_ref_logps(pairs, ref), settings, work)
        timer = StepTimer()
        trainer.add_callback(timer)
        trainer.train()
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    steady = timer.seconds[1:]
    return {
        "mode": "lora" if lora else "full",
        "steps": len(timer.seconds),
        "trainable_parameters": trainable,
        "seconds_per_step": float(np.median(steady)),
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 1e9,
        "dtype": str(trainer.model.dtype),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a causal LM folder or hub id (SmolLM2-135M-Instruct)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--out", default="benchmarks/dpo_steps.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "benchmarks/dpo_steps.py needs a CUDA GPU: it measures bf16 DPO steps on one (this machine has none)",
            file=sys.stderr,
        )
        return 2
    from prefselect.config import default
    from prefselect.logps import pair_logps
    from prefselect.models import load_model, load_tokenizer

    lora = {key: default(f"training.lora.{key}") for key in ("r", "alpha", "dropout", "target_modules", "merge")}
    pairs = synthetic_pairs(args.steps * args.batch_size, words=args.max_length // 2)
    sft = load_model(args.model).to("cuda")
    ref = pair_logps(sft, pairs, load_tokenizer(args.model), args.max_length)
    del sft
    rows = [run_mode(args.model, spec, pairs, ref, args) for spec in (None, lora)]
    report = {
        "gpu": torch.cuda.get_device_name(),
        "model": args.model,
        "pairs_per_step": args.batch_size,
        "micro_batch_size": args.micro_batch_size,
        "max_length": args.max_length,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"{report['gpu']}, {args.model}, {args.batch_size} pairs per step of ≤ {args.max_length} tokens\n")
    print("| mode | trainable parameters | s per step | peak GPU memory (GB) |\n|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['mode']} | {row['trainable_parameters']:,} | {row['seconds_per_step']:.3f} | "
            f"{row['peak_gpu_memory_gb']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
