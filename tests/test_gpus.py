"""GPU slots: concurrent steps get distinct GPUs, a killed step frees its GPU, no GPU means the CPU."""

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from prefselect import gpus

REPO = Path(__file__).resolve().parents[1]
HOLD_ONE_GPU = """
import os, time
from prefselect.gpus import gpu_slots
with gpu_slots(1, poll_seconds=0.1):
    print(os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
    time.sleep(120)
"""


@pytest.fixture
def two_gpus(monkeypatch, tmp_path) -> Path:
    """A machine with GPUs 0 and 1 (by CUDA_VISIBLE_DEVICES), a private lock folder, and no SLURM or launcher."""
    for name in ("SLURM_JOB_ID", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("PREFSELECT_GPU_LOCK_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def holders():
    """Starts processes that each take one GPU and hold it; kills them at the end."""
    started = []

    def start() -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
        started.append(
            subprocess.Popen(
                [sys.executable, "-c", HOLD_ONE_GPU], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
        )
        return started[-1]

    yield start
    for process in started:
        process.kill()
        process.wait()


def line_from(stream, timeout: float = 60) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"nothing within {timeout} s"
    return stream.readline().strip()


def test_concurrent_steps_get_distinct_gpus_and_a_killed_one_frees_its_gpu(two_gpus, holders):
    first, second = holders(), holders()
    first_gpu, second_gpu = line_from(first.stdout), line_from(second.stdout)
    assert {first_gpu, second_gpu} == {"0", "1"}
    third = holders()
    assert line_from(third.stderr) == "prefselect: waiting for 1 free GPU(s) of 0,1"
    first.send_signal(signal.SIGKILL)
    assert line_from(third.stdout) == first_gpu


def test_a_step_takes_all_the_gpus_it_needs_or_none(two_gpus):
    with gpus.gpu_slots(1) as taken:
        assert taken == ["0"] and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
        assert gpus._free_slots(["0", "1"], 2, two_gpus) == []
        # GPU 1 was not kept while waiting for a second free GPU.
        [(gpu, handle)] = gpus._free_slots(["1"], 1, two_gpus)
        handle.close()
        assert gpu == "1"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    with gpus.gpu_slots(2) as taken:
        assert taken == ["0", "1"] and os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_no_gpu_or_none_asked_for_means_the_cpu_and_gpus_are_counted_without_cuda(two_gpus, monkeypatch):
    with gpus.gpu_slots(0) as taken:
        assert taken == [] and os.environ["CUDA_VISIBLE_DEVICES"] == ""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with gpus.gpu_slots(1) as taken:
        assert taken == [] and os.environ["CUDA_VISIBLE_DEVICES"] == ""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(gpus, "NVIDIA_GPUS", two_gpus / "driver")  # no NVIDIA driver
    assert gpus.machine_gpus() == []
    for bus in ("0000:01:00.0", "0000:02:00.0", "0000:03:00.0"):
        (two_gpus / "driver" / bus).mkdir(parents=True)
    assert gpus.machine_gpus() == ["0", "1", "2"]


def test_more_gpus_than_visible_is_an_error(two_gpus):
    with pytest.raises(ValueError, match="asks for 3 GPUs, but only 2"):
        with gpus.gpu_slots(3):
            pass


def test_inside_slurm_or_a_launched_process_the_given_gpus_are_kept(two_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    for name in ("SLURM_JOB_ID", "LOCAL_RANK"):
        monkeypatch.setenv(name, "7")
        with gpus.placement(1):
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
        monkeypatch.delenv(name)
    assert not list(two_gpus.iterdir())  # no lock was taken


def test_training_on_several_gpus_is_launched_with_deepspeed():
    command = gpus.accelerate_command(4, "zero3", ["train", "--out", "x"])
    config = Path(command[command.index("--config_file") + 1])
    assert command[command.index("--num_processes") + 1] == "4" and config.name == "zero3.yaml" and config.is_file()
    assert command[-3:] == ["train", "--out", "x"]
    with pytest.raises(ValueError, match="training.deepspeed"):
        gpus.accelerate_command(2, "zero1", [])
