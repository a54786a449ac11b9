"""Which GPUs a step runs on, and how a step on several GPUs is launched.

Snakemake's local executor counts a `gpu` resource but never tells a job which GPU is its own. So a step that
wants n GPUs takes n slots: one lock file per GPU id in a lock folder that every process on the machine shares,
locked with `fcntl.flock`. The lock belongs to the open file, so a process that dies, even by SIGKILL, frees its
GPUs at once. The step then names its GPUs in CUDA_VISIBLE_DEVICES before torch initialises CUDA. Inside a SLURM
job, or a process that `accelerate launch` started, the GPUs were already chosen: CUDA_VISIBLE_DEVICES is kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

ZERO_STAGES = ("zero2", "zero3")
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one folder per GPU


def default_lock_dir() -> Path:
    lock_dir = Path(os.environ.get("PREFSELECT_GPU_LOCK_DIR", "/tmp/prefselect-gpu-locks"))
    if not lock_dir.is_dir():
        lock_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(PermissionError):
            lock_dir.chmod(0o1777)  # like /tmp: every user of the machine shares its GPUs
    return lock_dir


def launched() -> bool:
    """True in a process that `accelerate launch` (or torchrun) started."""
    return "LOCAL_RANK" in os.environ


def machine_gpus() -> list[str]:
    """Ids of the GPUs this process may take: CUDA_VISIBLE_DEVICES where it is set, else every GPU the NVIDIA
    driver lists (as profiles/workstation counts them; reading /proc does not initialise CUDA)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu.strip() for gpu in visible.split(",") if gpu.strip()]
    return [str(i) for i in range(len(list(NVIDIA_GPUS.glob("*"))))]


def _try_lock(path: Path) -> IO | None:
    # Read-only: a lock file that another user created can still be locked.
    handle = os.fdopen(os.open(path, os.O_RDONLY | os.O_CREAT, 0o666), "rb")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _free_slots(pool: list[str], n: int, lock_dir: Path) -> list[tuple[str, IO]]:
    """Lock n free GPUs of the pool, or none: holding some while waiting for more could deadlock two steps."""
    held = []
    for gpu in pool:
        handle = _try_lock(lock_dir / f"gpu-{gpu}.lock")
        if handle:
            held.append((gpu, handle))
            if len(held) == n:
                return held
    for _, handle in held:
        handle.close()
    return []


@contextlib.contextmanager
def visible(gpus: list[str]) -> Iterator[list[str]]:
    """Make only these GPUs visible to CUDA for the block ([]: none, the CPU)."""
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    try:
        yield gpus
    finally:
        if before is None:
            del os.environ["CUDA_VISIBLE_DEVICES"]
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


@contextlib.contextmanager
def gpu_slots(n: int, lock_dir: Path | None = None, poll_seconds: float = 2.0) -> Iterator[list[str]]:
    """Hold n free GPUs of this machine for the block and make them the only visible ones; [] means the CPU."""
    pool = machine_gpus()
    if n > len(pool) > 0:
        raise ValueError(f"this step asks for {n} GPUs, but only {len(pool)} are visible ({','.join(pool)})")
    if n == 0 or not pool:
        if n:
            print(f"prefselect: no GPU visible, running on the CPU instead of {n} GPU(s)", file=sys.stderr)
        with visible([]):
            yield []
        return
    lock_dir = lock_dir or default_lock_dir()
    held = _free_slots(pool, n, lock_dir)
    if not held:
        print(f"prefselect: waiting for {n} free GPU(s) of {','.join(pool)}", file=sys.stderr)
    while not held:
        time.sleep(poll_seconds)
        held = _free_slots(pool, n, lock_dir)
    with contextlib.ExitStack() as stack:
        for _, handle in held:
            stack.enter_context(handle)
        gpus = [gpu for gpu, _ in held]
        print(f"prefselect: on GPU(s) {','.join(gpus)}", file=sys.stderr)
        yield stack.enter_context(visible(gpus))


def placement(n: int | None) -> contextlib.AbstractContextManager:
    """The GPUs of a step asking for n: free slots on a workstation; as given by SLURM, a launcher, or n None."""
    if n is None or launched():
        return contextlib.nullcontext()
    if "SLURM_JOB_ID" in os.environ:
        given = os.environ.get("CUDA_VISIBLE_DEVICES") or "none"
        print(f"prefselect: on the GPU(s) of SLURM job {os.environ['SLURM_JOB_ID']}: {given}", file=sys.stderr)
        return contextlib.nullcontext()
    return gpu_slots(n)


def accelerate_command(processes: int, zero_stage: str, argv: list[str]) -> list[str]:
    """`accelerate launch` of `prefselect <argv>` on `processes` processes with DeepSpeed ZeRO (2 or 3)."""
    if zero_stage not in ZERO_STAGES:
        raise ValueError(f"training.deepspeed: {zero_stage!r} is not one of {list(ZERO_STAGES)}")
    config = Path(__file__).with_name("accelerate") / f"{zero_stage}.yaml"
    # Port 0: a free port, so that two trainings on one machine do not collide on accelerate's default 29500.
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(processes),
        "--main_process_port",
        "0",
        "--config_file",
        str(config),
        "-m",
        "prefselect",
        *argv,
    ]
