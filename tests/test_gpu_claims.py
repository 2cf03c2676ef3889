"""GPU claims between concurrent processes, on a CPU machine that pretends to have 2 GPUs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pubmedqa_gpt2 import gpu_claims
from pubmedqa_gpt2.core.errors import StageError

from .conftest import ROOT

CLAIMANT = """
import json, os, sys, time
from pubmedqa_gpt2 import gpu_claims
gpu_claims.physical_gpus = lambda: ["0", "1"]  # a machine with two GPUs
asked = time.time()
got = gpu_claims.claim_gpus(int(sys.argv[1]), poll=0.2)
start = time.time()
time.sleep(float(sys.argv[2]))
print(json.dumps({"devices": got, "visible": os.environ["CUDA_VISIBLE_DEVICES"],
                  "asked": asked, "start": start, "end": time.time()}), flush=True)
"""


def claimant(lock_dir: Path, n: int, hold: float) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": str(ROOT), gpu_claims.LOCK_DIR_ENV: str(lock_dir)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.pop("SLURM_JOB_ID", None)  # these claims are the ones made outside SLURM
    return subprocess.Popen(
        [sys.executable, "-c", CLAIMANT, str(n), str(hold)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out)


def wait_for_claim(proc: subprocess.Popen) -> str:
    """The process's 'using GPU ...' line, once it has claimed."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if line.startswith("using GPU"):
            return line
    raise AssertionError("no claim within 60 s")


@pytest.fixture(autouse=True)
def _outside_slurm(monkeypatch):
    """The suite may run inside a SLURM job; these tests are of the claims made outside one."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)


@pytest.mark.child_process
def test_concurrent_processes_never_share_a_gpu_and_the_third_waits(tmp_path):
    procs = [claimant(tmp_path, 1, 2.0) for _ in range(3)]
    runs = [result(p) for p in procs]
    assert all(r["visible"] == ",".join(r["devices"]) and len(r["devices"]) == 1 for r in runs)
    assert {r["devices"][0] for r in runs} == {"0", "1"}
    for device in ("0", "1"):
        spans = sorted((r["start"], r["end"]) for r in runs if r["devices"] == [device])
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start >= end, f"GPU {device} held by two processes at once"
    waited = max(runs, key=lambda r: r["start"] - r["asked"])
    assert waited["start"] - waited["asked"] > 1.5  # it waited for a GPU instead of failing


@pytest.mark.child_process
def test_a_killed_process_frees_its_gpus(tmp_path):
    holder = claimant(tmp_path, 2, 120.0)  # a data-parallel run: both GPUs
    assert "using GPU 0,1" in wait_for_claim(holder)
    waiter = claimant(tmp_path, 1, 0.0)
    time.sleep(1.0)
    assert waiter.poll() is None  # still waiting: no GPU is free
    killed_at = time.time()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    run = result(waiter)
    assert run["start"] >= killed_at and run["start"] - killed_at < 5
    assert run["devices"] in (["0"], ["1"])


def test_asking_for_more_gpus_than_visible_is_an_error(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "4,5", gpu_claims.LOCK_DIR_ENV: str(tmp_path)}
    with pytest.raises(
        StageError, match=r"^train.num_processes: 3 GPUs asked for, 2 visible \(4,5\)"
    ):
        gpu_claims.claim_gpus(3, env)
    with pytest.raises(StageError, match=r"^pretrain.num_processes: 3 GPUs asked for"):
        gpu_claims.claim_gpus(3, env, setting="pretrain.num_processes")


def test_a_process_keeps_the_gpus_it_holds(monkeypatch, tmp_path):
    """A second claim in the same process (evaluate after train in one interpreter) returns
    the GPUs it holds instead of waiting for its own lock."""
    monkeypatch.setattr(gpu_claims, "physical_gpus", lambda: ["0", "1"])
    env = {gpu_claims.LOCK_DIR_ENV: str(tmp_path)}
    try:
        assert gpu_claims.claim_gpus(1, env) == ["0"]
        assert gpu_claims.claim_gpus(1, {**env, "CUDA_VISIBLE_DEVICES": "0,1"}, poll=0.01) == ["0"]
    finally:
        gpu_claims.release_gpus()
    assert gpu_claims.claim_gpus(1, env) == ["0"]  # released: free again
    gpu_claims.release_gpus()


def test_no_gpu_no_claim(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_claims, "physical_gpus", lambda: [])
    env = {gpu_claims.LOCK_DIR_ENV: str(tmp_path)}
    assert gpu_claims.claim_gpus(1, env) == [] and "CUDA_VISIBLE_DEVICES" not in env


def lock(lock_dir: Path, device: str) -> int:
    """Hold a device's lock as another process would (flock is per open file)."""
    import fcntl

    fd = os.open(lock_dir / f"gpu-{device}.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_a_process_waiting_for_more_gpus_than_are_free_holds_none_of_them(
    monkeypatch, tmp_path, capsys
):
    """Asking for 2 of 3 GPUs while 2 are taken: the one free GPU is not kept while waiting
    (another run may take it), and both are claimed, in order, once they are free."""
    import threading

    monkeypatch.setattr(gpu_claims, "physical_gpus", lambda: ["0", "1", "2"])
    env = {gpu_claims.LOCK_DIR_ENV: str(tmp_path)}
    tmp_path.mkdir(exist_ok=True)
    taken = [lock(tmp_path, "0"), lock(tmp_path, "2")]
    got: list[list[str]] = []
    claimer = threading.Thread(
        target=lambda: got.append(gpu_claims.claim_gpus(2, env, poll=0.02)), daemon=True
    )
    claimer.start()
    try:
        free = 0
        for _ in range(20):  # while it waits, GPU 1 stays free for anyone (but for the
            time.sleep(0.02)  # moments its polls try it)
            try:
                os.close(lock(tmp_path, "1"))
                free += 1
            except BlockingIOError:
                pass
        assert free >= 10 and claimer.is_alive() and not got
        assert "CUDA_VISIBLE_DEVICES" not in env
        os.close(taken.pop())  # GPU 2 comes free: now two are
        claimer.join(timeout=10)
        assert got == [["1", "2"]] and env["CUDA_VISIBLE_DEVICES"] == "1,2"
        with pytest.raises(BlockingIOError):
            lock(tmp_path, "1")  # held by the claimer now
    finally:
        for fd in taken:
            os.close(fd)
        gpu_claims.release_gpus()
    err = capsys.readouterr().err
    assert err.count("waiting for 2 free GPU(s) of 0,1,2 (others are in use)") == 1, err
    assert f"using GPU 1,2 (locked in {tmp_path})" in err
    # released: GPU 1 and 2 free again, and the lock file names the process that held it
    os.close(lock(tmp_path, "1"))
    assert (tmp_path / "gpu-1.lock").read_text() == f"{os.getpid()}\n"


def test_visible_devices_are_the_candidates_and_odd_names_are_safe_lock_files(
    monkeypatch, tmp_path
):
    monkeypatch.setattr(gpu_claims, "physical_gpus", lambda: ["0", "1", "2", "3"])
    assert gpu_claims.candidate_gpus({"CUDA_VISIBLE_DEVICES": " 2, 3 ,"}) == ["2", "3"]
    assert gpu_claims.candidate_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert gpu_claims.candidate_gpus({}) == ["0", "1", "2", "3"]
    locks = tmp_path / "new" / "locks"
    env = {"CUDA_VISIBLE_DEVICES": "GPU-ab/c:1", gpu_claims.LOCK_DIR_ENV: str(locks)}
    try:
        assert gpu_claims.claim_gpus(1, env) == ["GPU-ab/c:1"]
    finally:
        gpu_claims.release_gpus()
    assert [p.name for p in locks.iterdir()] == ["gpu-GPU-ab_c_1.lock"]


def test_physical_gpus_are_counted_from_the_driver_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_claims, "NVIDIA_GPUS", tmp_path / "gpus")
    assert gpu_claims.physical_gpus() == []
    for bus in ("0000:17:00.0", "0000:65:00.0"):
        (tmp_path / "gpus" / bus).mkdir(parents=True)
    assert gpu_claims.physical_gpus() == ["0", "1"]


def test_a_second_claim_sets_the_devices_it_holds_and_the_defaults_are_used(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_claims, "physical_gpus", lambda: ["0", "1", "2"])
    monkeypatch.setattr(gpu_claims, "DEFAULT_LOCK_DIR", str(tmp_path / "default" / "locks"))
    monkeypatch.delenv(gpu_claims.LOCK_DIR_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # so that the claim's own setting is undone
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")  # (delenv of an unset variable records nothing)
    old_umask = os.umask(0o022)
    try:
        assert gpu_claims.claim_gpus(2) == ["0", "1"]  # os.environ, the default folder
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
        env = {"CUDA_VISIBLE_DEVICES": "2"}
        assert gpu_claims.claim_gpus(1, env) == ["0", "1"] and env["CUDA_VISIBLE_DEVICES"] == "0,1"
    finally:
        gpu_claims.release_gpus()
        os.umask(old_umask)
    locks = sorted((tmp_path / "default" / "locks").iterdir())
    assert [p.name for p in locks] == ["gpu-0.lock", "gpu-1.lock"]
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in locks)  # 0o666 less the umask


# ---- Inside a SLURM allocation: the allocation is the claim ----


def slurm_env(visible: str | None, tasks: int = 1) -> dict:
    env = {"SLURM_JOB_ID": "123", "SLURM_NTASKS": str(tasks)}
    return env | ({"CUDA_VISIBLE_DEVICES": visible} if visible is not None else {})


def test_inside_slurm_the_allocation_s_gpus_are_used_without_a_lock(monkeypatch, tmp_path):
    """Jobs on one node each see their own GPU as 0: a lock on gpu-0 held by another job
    (here, this process) must not make this one wait."""
    monkeypatch.setattr(gpu_claims, "physical_gpus", lambda: ["0", "1"])
    held = gpu_claims._try_lock(tmp_path / "gpu-0.lock")  # another job's claim of "its" GPU 0
    try:
        env = slurm_env("0") | {gpu_claims.LOCK_DIR_ENV: str(tmp_path)}
        started = time.monotonic()
        assert gpu_claims.claim_gpus(1, environ=env, poll=0.05) == ["0"]
        assert time.monotonic() - started < 1.0
    finally:
        os.close(held)
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu-0.lock"]  # no lock of its own
    assert gpu_claims._claimed == []


def test_inside_slurm_one_process_takes_the_first_gpus_of_its_allocation(monkeypatch, capsys):
    monkeypatch.setattr(gpu_claims, "physical_gpus", lambda: ["0", "1", "2", "3"])
    env = slurm_env("2,3")
    assert gpu_claims.claim_gpus(1, environ=env) == ["2"]
    assert env["CUDA_VISIBLE_DEVICES"] == "2"
    env = slurm_env("2,3")
    assert gpu_claims.claim_gpus(2, environ=env) == ["2", "3"]
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert capsys.readouterr().err.splitlines() == [
        "using GPU 2 (SLURM job 123's allocation, no lock)",
        "using GPU 2,3 (SLURM job 123's allocation, no lock)",
    ]


def test_a_slurm_job_without_a_task_count_has_one_task():
    assert gpu_claims.slurm_tasks({"SLURM_JOB_ID": "7"}) == 1
    assert gpu_claims.slurm_tasks({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "3"}) == 3
    assert gpu_claims.slurm_tasks({"SLURM_NTASKS": "3"}) == 1  # not in a job: one


@pytest.mark.parametrize(
    ("visible", "tasks", "n", "named"),
    [("0", 1, 2, "1 GPU(s) per task x 1 task(s)"), ("0,1", 2, 6, "2 GPU(s) per task x 2 task(s)")],
)
def test_inside_slurm_more_processes_than_the_allocation_is_refused_naming_both(
    monkeypatch, visible, tasks, n, named
):
    monkeypatch.setattr(gpu_claims, "physical_gpus", lambda: ["0", "1"])
    with pytest.raises(StageError) as err:
        gpu_claims.claim_gpus(
            n, environ=slurm_env(visible, tasks), setting="pretrain.num_processes"
        )
    message = str(err.value)
    assert message.startswith(f"pretrain.num_processes: {n} processes, but SLURM job 123 has")
    assert named in message and f"CUDA_VISIBLE_DEVICES={visible}" in message


def test_inside_slurm_several_tasks_keep_each_task_s_own_gpus(monkeypatch):
    monkeypatch.setattr(gpu_claims, "physical_gpus", lambda: ["0", "1"])
    env = slurm_env("0,1", tasks=2)
    assert gpu_claims.claim_gpus(4, environ=env) == ["0", "1"]  # 2 per node, on 2 nodes
    monkeypatch.setattr(gpu_claims, "physical_gpus", lambda: ["0", "1", "2", "3"])
    env = slurm_env("0,1,2,3", tasks=2)
    assert gpu_claims.claim_gpus(2, environ=env) == ["0", "1", "2", "3"]  # the task's, all
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"


def test_inside_slurm_a_job_given_no_gpu_hides_the_node_s_gpus(monkeypatch, capsys):
    monkeypatch.setattr(gpu_claims, "physical_gpus", lambda: ["0", "1"])
    env = slurm_env(None)
    assert gpu_claims.claim_gpus(1, environ=env) == []
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # the other jobs' GPUs stay theirs
    assert capsys.readouterr().err == "SLURM job 123 was given no GPU: running on the CPU\n"
    monkeypatch.setattr(gpu_claims, "physical_gpus", lambda: [])
    env = slurm_env(None)
    assert gpu_claims.claim_gpus(1, environ=env) == [] and "CUDA_VISIBLE_DEVICES" not in env


def test_a_waiter_sleeps_the_poll_time_with_a_jitter_of_half_either_way(monkeypatch, tmp_path):
    """Between two tries a waiter sleeps poll x uniform(0.5, 1.5) (two waiters never poll in
    lock-step): with the draw stood in by 1.25 and poll 0.4 s, one sleep of 0.5 s, after which
    the GPU is free and claimed."""
    monkeypatch.setattr(gpu_claims, "physical_gpus", lambda: ["0"])
    env = {gpu_claims.LOCK_DIR_ENV: str(tmp_path)}
    taken = [lock(tmp_path, "0")]
    draws, sleeps = [], []

    def uniform(low, high):
        draws.append((low, high))
        return 1.25

    def sleep(seconds):
        sleeps.append(seconds)
        os.close(taken.pop())  # the GPU comes free while it sleeps

    monkeypatch.setattr(gpu_claims.random, "uniform", uniform)
    monkeypatch.setattr(gpu_claims.time, "sleep", sleep)
    try:
        assert gpu_claims.claim_gpus(1, env, poll=0.4) == ["0"]
    finally:
        gpu_claims.release_gpus()
    assert draws == [(0.5, 1.5)]
    assert sleeps == [pytest.approx(0.5)]
