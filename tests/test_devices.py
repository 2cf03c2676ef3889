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

from pubmedqa_gpt2 import devices
from pubmedqa_gpt2.errors import StageError

from .conftest import ROOT

CLAIMANT = """
import json, os, sys, time
from pubmedqa_gpt2 import devices
devices.physical_gpus = lambda: ["0", "1"]  # a machine with two GPUs
asked = time.time()
got = devices.claim_gpus(int(sys.argv[1]), poll=0.2)
start = time.time()
time.sleep(float(sys.argv[2]))
print(json.dumps({"devices": got, "visible": os.environ["CUDA_VISIBLE_DEVICES"],
                  "asked": asked, "start": start, "end": time.time()}), flush=True)
"""


def claimant(lock_dir: Path, n: int, hold: float) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": str(ROOT), devices.LOCK_DIR_ENV: str(lock_dir)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
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
    env = {"CUDA_VISIBLE_DEVICES": "4,5", devices.LOCK_DIR_ENV: str(tmp_path)}
    with pytest.raises(StageError, match=r"3 GPUs asked for, 2 visible \(4,5\)"):
        devices.claim_gpus(3, env)


def test_a_process_keeps_the_gpus_it_holds(monkeypatch, tmp_path):
    """A second claim in the same process (evaluate after train in one interpreter) returns
    the GPUs it holds instead of waiting for its own lock."""
    monkeypatch.setattr(devices, "physical_gpus", lambda: ["0", "1"])
    env = {devices.LOCK_DIR_ENV: str(tmp_path)}
    try:
        assert devices.claim_gpus(1, env) == ["0"]
        assert devices.claim_gpus(1, {**env, "CUDA_VISIBLE_DEVICES": "0,1"}, poll=0.01) == ["0"]
    finally:
        devices.release_gpus()
    assert devices.claim_gpus(1, env) == ["0"]  # released: free again
    devices.release_gpus()


def test_no_gpu_no_claim(monkeypatch, tmp_path):
    monkeypatch.setattr(devices, "physical_gpus", lambda: [])
    env = {devices.LOCK_DIR_ENV: str(tmp_path)}
    assert devices.claim_gpus(1, env) == [] and "CUDA_VISIBLE_DEVICES" not in env
