"""Training on two processes with DeepSpeed ZeRO-2 and ZeRO-3, launched by `prefselect --gpus 2 train` as the rules
launch it; on a machine without GPUs both processes run on the CPU (gloo). The same batch of 8 pairs, split 4 and 4
over two processes, makes the same update as in one process."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_pairs

from prefselect.models import load_model
from prefselect.training import DPOSettings, train_dpo

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
    train_dpo(tiny_lm, pairs, ref, str(data / "one"), DPOSettings(batch_size=8, max_length=48))
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
        sys.executable, "-m", "prefselect", "--gpus", "2", "train", "--deepspeed", zero, "--model", tiny_lm,
        "--data", str(data / "pairs.parquet"), "--ref", str(data / "ref.parquet"), "--batch-size", "8",
        "--max-length", "48", "--save-steps", "2", "--checkpoint-dir", str(data / f"checkpoints-{zero}"),
        "--out", str(out),
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
