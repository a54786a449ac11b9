"""LoRA against full fine-tuning over paired runs (the same seeds, config and upstream outputs): docs/lora.md.

    python benchmarks/lora_vs_full.py --full results-n03-s{0,1,2} --lora results-lora-s{0,1,2}

Per selector row, the win rate of each mode (mean ± std over the runs) and the paired difference LoRA − full; per
run, `auto`'s choice in each mode; the size on disk of one trained model (`final-full`: its weights or adapter and
config files, without the tokenizer and TRL's log) and the seconds per optimizer step of each DPO stage (TRL's
train_runtime over its steps, median over the runs). Prints markdown.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROWS = ("full", "random", "lossdiff_irm", "aux_irm_top64", "auto")
MODEL_FILES = (
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "adapter_model.safetensors",
    "adapter_config.json",
)
STAGES = ("warmup", "aux", "final-full", "final-lossdiff_irm")


def win_rates(run: Path) -> dict[str, float]:
    return {
        name: row["win_rate"] for name, row in json.loads((run / "eval/results.json").read_text())["selectors"].items()
    }


def model_bytes(folder: Path) -> int:
    return sum((folder / name).stat().st_size for name in MODEL_FILES if (folder / name).is_file())


def seconds_per_step(folder: Path) -> float:
    log = json.loads((folder / "training_log.json").read_text())
    return log[-1]["train_runtime"] / max(entry.get("step", 0) for entry in log)


def mean_std(values) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.3f}"


def report(full: list[Path], lora: list[Path]) -> str:
    if len(full) != len(lora):
        raise SystemExit("--full and --lora need one run each per seed, in the same order")
    rates = {"full": [win_rates(r) for r in full], "lora": [win_rates(r) for r in lora]}
    lines = ["| selector | full fine-tuning | LoRA | LoRA − full (paired) |", "|---|---|---|---|"]
    for name in ROWS:
        full_fine_tuning, lora_rates = ([run[name] for run in rates[mode]] for mode in ("full", "lora"))
        paired = np.subtract(lora_rates, full_fine_tuning)
        lines.append(f"| {name} | {mean_std(full_fine_tuning)} | {mean_std(lora_rates)} | {mean_std(paired)} |")
    lines += ["", "| run | auto's choice, full (win rate) | auto's choice, LoRA (win rate) |", "|---|---|---|"]
    for f_run, l_run, f_rates, l_rates in zip(full, lora, rates["full"], rates["lora"]):
        chosen = [json.loads((run / "eval/dev/choice.json").read_text())["chosen"] for run in (f_run, l_run)]
        lines.append(
            f"| {l_run.name} | {chosen[0]} ({f_rates[chosen[0]]:.3f}) | {chosen[1]} ({l_rates[chosen[1]]:.3f}) |"
        )
    lines += [
        "",
        "| | full fine-tuning | LoRA |",
        "|---|---|---|",
        f"| one trained model on disk (`final-full`, bytes) | {model_bytes(full[0] / 'models/final-full'):,} | "
        f"{model_bytes(lora[0] / 'models/final-full'):,} |",
    ]
    for stage in STAGES:
        per_mode = [np.median([seconds_per_step(run / "models" / stage) for run in runs]) for runs in (full, lora)]
        lines.append(f"| s per optimizer step, {stage} (median of runs) | {per_mode[0]:.3f} | {per_mode[1]:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", nargs="+", type=Path, required=True, help="full-fine-tuning runs (outdirs)")
    parser.add_argument("--lora", nargs="+", type=Path, required=True, help="LoRA runs of the same seeds, in order")
    args = parser.parse_args(argv)
    print(report(args.full, args.lora))


if __name__ == "__main__":
    main()
