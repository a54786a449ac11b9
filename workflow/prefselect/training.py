"""DPO training with TRL's DPOTrainer on reference log-probs that prefselect computed once."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd
import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer

from . import lora, provenance
from .config import default
from .data import hash_position
from .io import atomic_path
from .models import load_model, load_tokenizer
from .settings import Settings
from .tables import SCREEN_CHECKPOINT, TRL_REF


class PrecomputedRefDPOTrainer(DPOTrainer):
    """A DPOTrainer that trains on the reference log-probs already in the dataset instead of recomputing them.

    Without a `ref_model`, TRL would take the policy's starting weights as the reference; prefselect's reference is
    always the SFT model, whose log-probs the dataset carries, so a dataset without them is an error.
    """

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        missing = set(TRL_REF) - set(dataset.column_names)
        if missing:
            raise ValueError(f"{name} dataset lacks precomputed reference log-probs {sorted(missing)}")
        return dataset


class AnnounceCheckpoints(TrainerCallback):
    """Say in the job's log when a checkpoint is complete: the step a rerun of a killed job resumes from."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            print(f"prefselect train: checkpoint at step {state.global_step} in {args.output_dir}", flush=True)


class StopAtScreen(TrainerCallback):
    """Ends a screen run after its share of the final run's optimizer steps (rounded up), with a checkpoint that
    the final run continues from: a screen run is its final run, stopped."""

    def __init__(self, share: float):
        self.share = share

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= stop_step(state.max_steps, self.share):
            control.should_training_stop = control.should_save = True


def stop_step(max_steps: int, share: float) -> int:
    return math.ceil(round(share * max_steps, 9))  # rounded first: 0.1 * 30 is 3.0000000000000004


@dataclass(frozen=True)
class DPOSettings:
    """One DPO run; `of` builds it from the config, whose schema holds every default."""

    beta: float
    loss_type: str  # sigmoid, or TRL's hinge, robust (rDPO) or ipo
    label_smoothing: float  # robust only: the share of flipped labels that rDPO corrects for
    epochs: float
    learning_rate: float
    batch_size: int
    max_length: int
    seed: int
    save_steps: int  # a resumable checkpoint every that many optimizer steps; 0: none
    micro_batch_size: int  # pairs per forward pass of one process; 0: its whole share of the batch
    gradient_checkpointing: bool  # recompute activations in the backward pass: less memory, ~30% slower
    stop_epochs: float | None = None  # a screen run: this run, stopped after that many of its epochs
    eval_steps: float = 0.05  # no config key: with an eval set, every that many steps; below 1, that share of the run
    lora: dict | None = None  # training.lora but `merge`: train a LoRA adapter (a new one, or the one a folder holds)
    merge: bool = False  # training.lora.merge, for final runs: write the model merged, not the adapter

    def __post_init__(self):
        if self.label_smoothing and self.loss_type != "robust":
            raise ValueError(
                f"label_smoothing {self.label_smoothing}: only the robust loss uses it, not {self.loss_type!r}"
            )

    @classmethod
    def of(cls, s: Settings, stage: str, selector: str | None = None, **changes) -> DPOSettings:
        """The run of `stage` (settings.TRAIN_STAGES) from its settings; a selector's final or screening run takes
        the loss of the selector's own `final` settings. A screen run is the selector's final run, stopped after
        the auto selector's `screen_epochs`, so that the final run can continue from it."""
        t, stop = s.training, None
        merge = bool(t.lora and t.lora["merge"] and stage == "final")  # a screen run's model stays an adapter
        if stage == "screen":
            stage, stop = "final", s.auto()[1]["screen_epochs"]
        epochs = t.warmup_epochs if stage in ("warmup", "crossfit") else getattr(t, f"{stage}_epochs")
        final = s.selector(selector)["final"] if selector else {}
        return replace(
            cls(
                beta=s.method.beta,
                loss_type=final.get("loss_type", s.method.loss_type),
                label_smoothing=final.get("label_smoothing", default("selectors.*.final.label_smoothing")),
                epochs=epochs,
                learning_rate=t.learning_rate,
                batch_size=t.batch_size,
                max_length=s.data.max_length,
                seed=s.seed,
                save_steps=t.save_steps,
                micro_batch_size=t.micro_batch_size,
                gradient_checkpointing=t.gradient_checkpointing,
                stop_epochs=stop,
                lora={k: v for k, v in t.lora.items() if k != "merge"} if t.lora else None,
                merge=merge,
            ),
            **changes,
        )


def stable_share(pairs: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """The pairs whose hash lies in the lowest `fraction`: the same pairs on every rerun and shard count, drawn
    independently of the splits (so not biased by which pairs became validation pairs)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"training.warmup_fraction {fraction}: must lie in (0, 1]")
    return pairs[pairs["id"].map(lambda row_id: hash_position(row_id, seed, salt="warmup:") < fraction)]


def with_ref_logps(pairs: pd.DataFrame, ref_logps: pd.DataFrame) -> Dataset:
    """The TRL dataset: prompt/chosen/rejected strings plus the reference log-probs, joined by id."""
    ref = ref_logps.rename(columns={"chosen_logp": TRL_REF[0], "rejected_logp": TRL_REF[1]})
    table = pairs[["id", "prompt", "chosen", "rejected"]].merge(ref, on="id", how="left", validate="one_to_one")
    if table[list(TRL_REF)].isna().any().any():
        raise ValueError("reference log-probs are missing for some pairs; rerun ref_logps")
    return Dataset.from_pandas(table.drop(columns="id"), preserve_index=False)


def per_process(batch_size: int, micro_batch_size: int = 0) -> tuple[int, int]:
    """Pairs per forward pass of one process, and forward passes per optimizer step: a batch is the pairs of one
    optimizer step, however many processes (GPUs) and gradient accumulation steps split it."""
    processes = int(os.environ.get("WORLD_SIZE", 1))
    if batch_size % processes:
        raise ValueError(f"training.batch_size {batch_size} does not split evenly over {processes} GPUs")
    share = batch_size // processes
    micro = micro_batch_size or share
    if share % micro:
        raise ValueError(
            f"training.micro_batch_size {micro} does not divide the {share} pairs per step of each of "
            f"{processes} GPU(s)"
        )
    return micro, share // micro


def dpo_config(settings: DPOSettings, output_dir: str, evaluate: bool = False) -> DPOConfig:
    on_gpu = torch.cuda.is_available()
    micro, accumulation = per_process(settings.batch_size, settings.micro_batch_size)
    return DPOConfig(
        output_dir=output_dir,
        beta=settings.beta,
        loss_type=[settings.loss_type],
        label_smoothing=settings.label_smoothing,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",
        per_device_train_batch_size=micro,
        per_device_eval_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        gradient_checkpointing=settings.gradient_checkpointing,
        max_length=settings.max_length,
        precompute_ref_log_probs=True,
        seed=settings.seed,
        use_cpu=not on_gpu,
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        logging_steps=1,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=settings.eval_steps,
        eval_on_start=evaluate,  # the curve starts at the starting model
        save_strategy="steps" if settings.save_steps else "no",
        save_steps=settings.save_steps or 500,  # unused without a save strategy, but must be positive
        save_total_limit=1,  # the newest complete checkpoint; an older one is deleted only once a newer is complete
        report_to=[],
        disable_tqdm=True,
    )


def build_trainer(
    model_path: str, dataset: Dataset, settings: DPOSettings, work_dir: str, eval_dataset: Dataset | None = None, **load
) -> DPOTrainer:
    """The trainer of one DPO run from `model_path`. With `settings.lora`, a folder holding an adapter continues
    that adapter (θ_val and the final runs continue θ's, as full fine-tuning continues θ's weights); a whole model
    gets a new adapter, through TRL's `peft_config`. Either way only the adapter trains."""
    continued = lora.is_adapter(model_path)
    if continued and settings.lora is None:
        raise ValueError(
            f"{model_path!r} holds a LoRA adapter, but training.lora is null (full fine-tuning): set "
            "training.lora as in the run that trained it, or retrain it without"
        )
    model = load_model(model_path, trainable=continued, **load)
    screen = [StopAtScreen(settings.stop_epochs / settings.epochs)] if settings.stop_epochs else []
    trainer = PrecomputedRefDPOTrainer(
        model=model,
        args=dpo_config(settings, work_dir, evaluate=eval_dataset is not None),
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=load_tokenizer(model_path, **load),
        callbacks=[AnnounceCheckpoints(), *screen],
        peft_config=lora.lora_config(settings.lora) if settings.lora and not continued else None,
    )
    if lora.TRL_REF_ADAPTER in getattr(trainer.model, "peft_config", {}):
        trainer.model.delete_adapter(lora.TRL_REF_ADAPTER)  # the reference is the SFT model's precomputed log-probs
    return trainer


def output_folder(out_dir: str) -> contextlib.AbstractContextManager:
    """The main process's atomic output folder; a throwaway one for the other processes of a distributed run."""
    if int(os.environ.get("RANK", 0)) == 0:
        return atomic_path(out_dir, is_dir=True)
    return tempfile.TemporaryDirectory(prefix=f".{Path(out_dir).name}.rank{os.environ['RANK']}.")


def describe_processes(trainer: DPOTrainer) -> None:
    state = trainer.accelerator.state
    if state.is_main_process:
        zero = f", DeepSpeed ZeRO-{state.deepspeed_plugin.zero_stage}" if trainer.is_deepspeed_enabled else ""
        print(f"prefselect train: {state.num_processes} process(es) on {trainer.args.device.type}{zero}", flush=True)


def run_key(
    model_path: str,
    pairs: pd.DataFrame,
    ref_logps: pd.DataFrame,
    settings: DPOSettings,
    eval_pairs: pd.DataFrame | None,
    eval_ref_logps: pd.DataFrame | None,
) -> str:
    """What a checkpoint belongs to: a checkpoint of a run with other inputs, settings or processes is never resumed."""
    frames = [pairs, eval_pairs]
    return provenance.digest(
        {
            "model": provenance.model_fingerprint(model_path),
            "pairs": [None if f is None else provenance.pairs_fingerprint(f) for f in frames],
            "ref": [None if f is None else provenance.frame_fingerprint(f) for f in (ref_logps, eval_ref_logps)],
            # A screen run and its final run are one run: the final run continues from the screen run's checkpoint.
            # LoRA's settings only where set, so that full fine-tuning keeps the keys of its checkpoints; `merge` only
            # changes how the trained model is written, not the run.
            "settings": {
                k: v
                for k, v in asdict(settings).items()
                if k not in ("save_steps", "stop_epochs", "merge") and not (k == "lora" and v is None)
            },
            # DeepSpeed's optimizer states are sharded per process: they resume only under the same launch.
            "processes": [os.environ.get("WORLD_SIZE", "1"), os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")],
        }
    )


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint: Trainer writes trainer_state.json last, so a folder without it was cut off."""
    complete = [p for p in run_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(complete, key=lambda p: int(p.name.split("-")[1]), default=None)


RUN_KEY = "prefselect_run.json"


def screen_checkpoint(screen_dir: str, key: str) -> Path:
    """The checkpoint of the screen run `screen_dir`, checked to be the first part of the run of `key`."""
    checkpoint = Path(screen_dir) / SCREEN_CHECKPOINT
    recorded = json.loads((checkpoint / RUN_KEY).read_text())["key"] if (checkpoint / RUN_KEY).is_file() else None
    if recorded != key:
        raise ValueError(
            f"{screen_dir} is no screen run of this final run (other inputs or settings, or no "
            "checkpoint); rerun its screen job"
        )
    return checkpoint


def train_dpo(
    model_path: str,
    pairs: pd.DataFrame,
    ref_logps: pd.DataFrame,
    out_dir: str,
    settings: DPOSettings,
    eval_pairs: pd.DataFrame | None = None,
    eval_ref_logps: pd.DataFrame | None = None,
    checkpoint_dir: str | None = None,
    continue_from: str | None = None,
    **load,
) -> list[dict]:
    """Train `model_path` with DPO on `pairs` against the given reference log-probs; save to `out_dir`.

    With `eval_pairs` (and their reference log-probs), TRL also logs their loss and reward margin as training goes.

    With `checkpoint_dir` and `settings.save_steps`, a checkpoint (weights, optimizer, scheduler, RNG and data
    position) is saved every `save_steps` steps under `checkpoint_dir/run-<key>`, and a rerun of a killed run with
    the same inputs resumes from the newest one: it makes the same optimizer steps, on the same batches, as an
    uninterrupted run. `checkpoint_dir` is removed once `out_dir` is complete.

    A screen run (`settings.stop_epochs`) stops part-way and keeps its last checkpoint in `out_dir/resume`; its
    final run, given that folder as `continue_from`, resumes there, so it ends as an uninterrupted final run would.

    Under `accelerate launch` every process trains and calls `save_model` (ZeRO-3 gathers the weight shards from
    all of them), but only the main process writes the folder and renames it into place.
    """
    eval_dataset = None if eval_pairs is None else with_ref_logps(eval_pairs, eval_ref_logps)
    # Every process of a distributed run computes the same key, so they share the folder.
    key = run_key(model_path, pairs, ref_logps, settings, eval_pairs, eval_ref_logps)
    with contextlib.ExitStack() as stack:
        if checkpoint_dir and settings.save_steps:
            work = Path(checkpoint_dir) / f"run-{key}"
            resume = last_checkpoint(work) if work.is_dir() else None
        else:
            work, resume = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="prefselect-train."))), None
        if continue_from and resume is None:
            resume = screen_checkpoint(continue_from, key)
        trainer = build_trainer(model_path, with_ref_logps(pairs, ref_logps), settings, str(work), eval_dataset, **load)
        describe_processes(trainer)
        if resume and trainer.accelerator.is_main_process:
            step = json.loads((resume / "trainer_state.json").read_text())["global_step"]
            print(f"prefselect train: resuming from {resume} (step {step})", flush=True)
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        with output_folder(out_dir) as tmp:
            trainer.save_model(str(tmp))
            if settings.merge and int(os.environ.get("RANK", 0)) == 0:
                lora.merge_into_folder(Path(tmp), functools.partial(load_model, dtype="auto", **load))
            history = trainer.state.log_history
            (Path(tmp) / "training_log.json").write_text(json.dumps(history, indent=1))
            if settings.stop_epochs and int(os.environ.get("RANK", 0)) == 0:
                shutil.move(last_checkpoint(work), Path(tmp) / SCREEN_CHECKPOINT)
                (Path(tmp) / SCREEN_CHECKPOINT / RUN_KEY).write_text(json.dumps({"key": key}))
    if checkpoint_dir and int(os.environ.get("RANK", 0)) == 0:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # the model is complete; checkpoints of other runs are stale
    return history
