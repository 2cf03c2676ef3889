"""GPUs for concurrent experiments: each stage process claims free devices before CUDA starts.

Several experiments on one multi-GPU machine (`dvc queue start -j N`, or several clones) must
not all land on GPU 0. Before the train and evaluate stages touch CUDA, `claim_gpus(n)` takes
an exclusive lock on a lock file per device (`flock`, in `PUBMEDQA_GPU_LOCK_DIR`, default
`/tmp/pubmedqa-gpu-locks`), picks the first free devices, and sets `CUDA_VISIBLE_DEVICES` to
them. The lock is the process's open file: it is released when the process ends, killed or not.
When every device is taken, the stage waits for one to come free (it says so) rather than
failing. Devices are those in `CUDA_VISIBLE_DEVICES` when it is set, else every NVIDIA GPU the
driver lists (`/proc/driver/nvidia/gpus`, read without starting CUDA).

Inside a SLURM allocation (`SLURM_JOB_ID` set) the allocation is the claim: the job uses
exactly the GPUs SLURM gave it (`CUDA_VISIBLE_DEVICES`, which SLURM sets for a job that asked
for GPUs with `--gres=gpu:N` or `--gpus-per-task`; none when it asked for none) and takes no
lock. Jobs on one node each see their own GPUs numbered from 0, so locks named after those
numbers would make every job wait for the first (issue 27).
"""

from __future__ import annotations

import fcntl
import os
import random
import re
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path

from pubmedqa_gpt2.core.errors import StageError

LOCK_DIR_ENV = "PUBMEDQA_GPU_LOCK_DIR"
DEFAULT_LOCK_DIR = "/tmp/pubmedqa-gpu-locks"
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")
POLL_SECONDS = 2.0

_held: list[int] = []  # open lock files of this process: closing one frees its device
_claimed: list[str] = []  # the devices they lock


def physical_gpus() -> list[str]:
    """Indices of the NVIDIA GPUs the driver lists, without initialising CUDA."""
    if not NVIDIA_GPUS.is_dir():
        return []
    return [str(i) for i in range(len(list(NVIDIA_GPUS.iterdir())))]


def candidate_gpus(environ: MutableMapping[str, str]) -> list[str]:
    """The devices this process may use: CUDA_VISIBLE_DEVICES when set, else all of them."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    return physical_gpus()


def slurm_allocation(environ: MutableMapping[str, str]) -> list[str] | None:
    """The GPUs SLURM gave this job (possibly none), or None outside a SLURM allocation."""
    if not environ.get("SLURM_JOB_ID"):
        return None
    visible = environ.get("CUDA_VISIBLE_DEVICES") or ""
    return [d.strip() for d in visible.split(",") if d.strip()]


def slurm_tasks(environ: MutableMapping[str, str]) -> int:
    """The tasks of this SLURM job (`--ntasks`; one per node for an experiment on several
    nodes), 1 outside SLURM."""
    if not environ.get("SLURM_JOB_ID"):
        return 1
    return int(environ.get("SLURM_NTASKS") or 1)


def use_slurm_allocation(
    n: int, allocated: list[str], environ: MutableMapping[str, str], setting: str
) -> list[str]:
    """`claim_gpus` inside a SLURM job: the allocation's GPUs, no lock. With one task, the
    first `n` of them; with several (one per node), each task's own, n spread over them."""
    tasks = slurm_tasks(environ)
    job = environ["SLURM_JOB_ID"]
    if not allocated:
        if physical_gpus():  # on a GPU node without GPUs allocated: none of them is ours
            environ["CUDA_VISIBLE_DEVICES"] = ""
            print(f"SLURM job {job} was given no GPU: running on the CPU", file=sys.stderr)
        return []
    if n > len(allocated) * tasks:
        raise StageError(
            f"{setting}: {n} processes, but SLURM job {job} has {len(allocated)} GPU(s) "
            f"per task x {tasks} task(s) (CUDA_VISIBLE_DEVICES={','.join(allocated)}, "
            f"SLURM_NTASKS={tasks}); ask for more with --gres=gpu:N or lower {setting}"
        )
    devices = allocated[:n] if tasks == 1 else allocated
    environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    print(f"using GPU {','.join(devices)} (SLURM job {job}'s allocation, no lock)", file=sys.stderr)
    return devices


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a person looking
    return fd


def claim_gpus(
    n: int,
    environ: MutableMapping[str, str] | None = None,
    poll: float = POLL_SECONDS,
    setting: str = "train.num_processes",
) -> list[str]:
    """Lock `n` free GPUs for this process, set CUDA_VISIBLE_DEVICES to them, return them.

    Returns [] (and changes nothing) on a machine without GPUs. Waits while fewer than `n`
    are free. Inside a SLURM allocation: the allocation's GPUs, no lock, no wait. Call it
    before anything starts CUDA in this process; a process that holds GPUs already keeps
    those. `setting` is the param that asked for them, named if too few are visible.
    """
    environ = os.environ if environ is None else environ
    if _claimed:  # this process holds its GPUs already (a second lock would wait on itself)
        environ["CUDA_VISIBLE_DEVICES"] = ",".join(_claimed)
        return list(_claimed)
    allocated = slurm_allocation(environ)
    if allocated is not None:
        return use_slurm_allocation(n, allocated, environ, setting)
    candidates = candidate_gpus(environ)
    if not candidates:
        return []
    if n > len(candidates):
        raise StageError(
            f"{setting}: {n} GPUs asked for, {len(candidates)} visible ({','.join(candidates)})"
        )
    lock_dir = Path(environ.get(LOCK_DIR_ENV, DEFAULT_LOCK_DIR))
    lock_dir.mkdir(parents=True, exist_ok=True)
    said = False
    while True:
        claimed: list[tuple[str, int]] = []
        for device in candidates:
            fd = _try_lock(lock_dir / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', device)}.lock")
            if fd is not None:
                claimed.append((device, fd))
                if len(claimed) == n:
                    break
        if len(claimed) == n:
            _held.extend(fd for _, fd in claimed)
            devices = [device for device, _ in claimed]
            _claimed.extend(devices)
            environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
            print(f"using GPU {','.join(devices)} (locked in {lock_dir})", file=sys.stderr)
            return devices
        for _, fd in claimed:  # all or nothing: never hold part of a request while waiting
            os.close(fd)
        if not said:
            print(
                f"waiting for {n} free GPU(s) of {','.join(candidates)} (others are in use)",
                file=sys.stderr,
            )
            said = True
        time.sleep(poll * random.uniform(0.5, 1.5))  # jitter: two waiters never lock-step


def release_gpus() -> None:
    """Free every device this process claimed (the end of the process does it too)."""
    while _held:
        os.close(_held.pop())
    _claimed.clear()
