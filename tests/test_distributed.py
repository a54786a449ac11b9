"""Training on two processes with DeepSpeed ZeRO-2 and ZeRO-3, launched by `prefselect --gpus 2 train` as the rules
launch it; on a machine without GPUs both processes run on the CPU (gloo). The same batch of 8 pairs, split 4 and 4
over two processes, makes the same update as in one process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
from conftest import config_arg, dpo_settings, make_pairs

from prefselect.models import load_model
from prefselect.training import train_dpo

pytest.importorskip("deepspeed", reason="deepspeed is not installed: DS_BUILD_OPS=0 pip install -e '.[deepspeed]'")

REPO = Path(__file__).resolve().parents[1]
LAUNCH_ENV = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "SLURM_JOB_ID", "MASTER_PORT")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    pairs = make_pairs(32)
    logps = -np.arange(32.0) - 20
    ref = pd.DataFrame({"id": pairs["id"], "chosen_logp": logps, "rejected_logp": logps - 1})
    pairs.to_parquet(folder / "pairs.parquet")
    ref.to_parquet(folder / "ref.parquet")
    return folder


@pytest.fixture(scope="module")
def one_process(data, tiny_lm):
    """The reference: one plain process."""
    pairs, ref = pd.read_parquet(data / "pairs.parquet"), pd.read_parquet(data / "ref.parquet")
    train_dpo(tiny_lm, pairs, ref, str(data / "one"), dpo_settings(batch_size=8, max_length=48))
    return weights(data / "one")


def weights(model_dir) -> dict:
    """The parameters of a saved model as it loads (a tied LM head once, however the folder stores it)."""
    return dict(load_model(str(model_dir)).named_parameters())


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_two_deepspeed_processes_train_the_same_model_as_one_process(data, tiny_lm, one_process, zero):
    out = data / zero
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env.update(CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO / "workflow"))
    command = [
        sys.executable,
        "-m",
        "prefselect",
        "--gpus",
        "2",
        "train",
        "--model",
        tiny_lm,
        *config_arg(training={"deepspeed": zero, "batch_size": 8, "save_steps": 2}, data={"max_length": 48}),
        "--data",
        str(data / "pairs.parquet"),
        "--ref",
        str(data / "ref.parquet"),
        "--checkpoint-dir",
        str(data / f"checkpoints-{zero}"),
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert f"2 process(es) on cpu, DeepSpeed ZeRO-{zero[-1]}" in result.stdout
    # Only the main process wrote the folder, and no temporary folder is left behind.
    assert sorted(p.name for p in data.iterdir() if p.name.startswith(f".{zero}")) == []
    # Both processes saved their DeepSpeed checkpoint shards into one folder, every 2 of the 4 steps; the main
    # process removed it once the model was complete.
    assert "checkpoint at step 2" in result.stdout and "checkpoint at step 4" in result.stdout
    assert not (data / f"checkpoints-{zero}").exists()
    trained, start = weights(out), weights(tiny_lm)
    assert trained.keys() == one_process.keys()
    for name, value in trained.items():
        assert (value - start[name]).abs().max() > 1e-4, name  # it trained...
        assert (value - one_process[name]).abs().max() < 1e-5, name  # ...exactly as one process would


LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear", "merge": False}


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_two_deepspeed_processes_train_the_same_adapter_as_one_process(data, tiny_lm, zero):
    """training.lora under DeepSpeed: the saved adapter is the one a single process trains; no base weight moves."""
    pytest.importorskip("peft", reason="peft is not installed: pip install -e '.[lora]'")
    from safetensors.torch import load_file

    pairs, ref = pd.read_parquet(data / "pairs.parquet"), pd.read_parquet(data / "ref.parquet")
    train_dpo(
        tiny_lm,
        pairs,
        ref,
        str(data / f"lora-one-{zero}"),
        dpo_settings(batch_size=8, max_length=48, learning_rate=1e-2, lora=LORA),
    )
    out = data / f"lora-{zero}"
    command, env = two_processes(
        data, tiny_lm, out, {"deepspeed": zero, "batch_size": 8, "learning_rate": 1e-2, "lora": LORA}
    )
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert f"2 process(es) on cpu, DeepSpeed ZeRO-{zero[-1]}" in result.stdout
    trained = load_file(out / "adapter_model.safetensors")
    one = load_file(data / f"lora-one-{zero}" / "adapter_model.safetensors")
    assert trained.keys() == one.keys() and trained
    for name, value in trained.items():
        if ".lora_B." in name:
            assert value.abs().max() > 1e-4, name  # it trained (B starts at zero)...
        assert (value - one[name]).abs().max() < 1e-5, name  # ...exactly as one process would
    start = weights(tiny_lm)
    for name, value in weights(out).items():
        if ".lora_" not in name:
            assert torch.equal(value, start[name.replace(".base_layer.", ".")]), name


def launch(data, tiny_lm, out, checkpoints, **popen):
    """`prefselect --gpus 2 train` with ZeRO-2 for 2 epochs (8 optimizer steps), a checkpoint every 2."""
    training = {"deepspeed": "zero2", "batch_size": 8, "warmup_epochs": 2, "save_steps": 2}
    command, env = two_processes(data, tiny_lm, out, training, "--checkpoint-dir", str(checkpoints))
    return subprocess.Popen(command, env=env, **popen)


def two_processes(data, tiny_lm, out, training: dict, *more: str) -> tuple[list[str], dict]:
    """The command and environment of `prefselect --gpus 2 train` on the test pairs with these training keys."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env.update(CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO / "workflow"))
    command = [
        sys.executable,
        "-m",
        "prefselect",
        "--gpus",
        "2",
        "train",
        "--model",
        tiny_lm,
        *config_arg(training=training, data={"max_length": 48}),
        "--data",
        str(data / "pairs.parquet"),
        "--ref",
        str(data / "ref.parquet"),
        *more,
        "--out",
        str(out),
    ]
    return command, env


def test_a_killed_deepspeed_run_resumes_and_ends_as_an_uninterrupted_one(data, tiny_lm):
    uninterrupted = launch(
        data,
        tiny_lm,
        data / "uninterrupted",
        data / "checkpoints-uninterrupted",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert uninterrupted.wait(timeout=600) == 0

    out, checkpoints = data / "killed", data / "checkpoints-killed"
    process = launch(data, tiny_lm, out, checkpoints, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not list(checkpoints.glob("run-*/checkpoint-*/trainer_state.json")):
        assert process.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.01)
    # The launcher and both training processes at once, as a cluster kills a job (torch starts the training
    # processes in sessions of their own, so a signal to the launcher's group would miss them).
    family = [process.pid, *(child.pid for child in psutil.Process(process.pid).children(recursive=True))]
    assert len(family) >= 3
    for pid in family:
        os.kill(pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not out.exists()
    done = max(
        int(p.name.split("-")[1])
        for p in checkpoints.glob("run-*/checkpoint-*")
        if (p / "trainer_state.json").is_file()
    )
    assert 0 < done < 8

    rerun = launch(data, tiny_lm, out, checkpoints, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, output[-5000:]
    assert "resuming from" in output and "2 process(es) on cpu, DeepSpeed ZeRO-2" in output
    log = json.loads((out / "training_log.json").read_text())
    assert [entry["step"] for entry in log if "loss" in entry] == list(range(1, 9))
    resumed, expected = weights(out), weights(data / "uninterrupted")
    for name, value in expected.items():
        assert (resumed[name] - value).abs().max() == 0, name  # the same steps on the same batches, bit for bit
    assert not checkpoints.exists()
