"""The GPU check run whole (gpu_check/run.sh, check.py): steps stopped at the budget, logs
written as they come, the tiny pipeline on the CPU, a refusal without CUDA, a failing stage,
and a check killed from outside."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from gpu_check import check

from .conftest import needs_pubmedqa, needs_tokenizer
from .test_gpu_check_pipeline import DVC_ORDER

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.child_process
def test_a_step_over_the_budget_is_stopped_and_the_next_skipped(tmp_path):
    slow = [sys.executable, "-c", "import time; time.sleep(30)"]
    start = time.monotonic()
    step = check.run_step("slow", slow, tmp_path, tmp_path, time.monotonic() + 1.0)
    assert step.status == "timed out"
    assert time.monotonic() - start < 15
    after = check.run_step("next", slow, tmp_path, tmp_path, time.monotonic() - 1)
    assert after.status == "skipped"
    failing = [sys.executable, "-c", "print('boom'); raise SystemExit(3)"]
    step = check.run_step("failing", failing, tmp_path, tmp_path, time.monotonic() + 60)
    assert step.status == "failed (exit 3)"
    assert (tmp_path / "failing.log").read_text() == "boom\n"


@pytest.mark.child_process
def test_a_step_log_holds_each_line_as_soon_as_the_step_prints_it(tmp_path, monkeypatch):
    """The child writes one line and sleeps: the log has it while the step still runs (the
    child's output unbuffered by the steps' environment, the log flushed line by line)."""
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    script = "print('first line'); import time; time.sleep(30)"
    env = check.child_env(None)
    step = threading.Thread(
        target=check.run_step,
        args=("slow", [sys.executable, "-c", script], tmp_path, tmp_path, time.monotonic() + 5),
        kwargs={"env": env},
    )
    step.start()
    time.sleep(3)
    seen = (tmp_path / "slow.log").read_text()
    step.join()
    assert seen == "first line\n"


@pytest.mark.child_process
def test_a_full_size_check_where_torch_sees_no_cuda_refuses_at_once(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "GPU_KIT": str(tmp_path / "no-kit")}
    start = time.monotonic()
    run = subprocess.run(
        ["bash", str(ROOT / "gpu_check/run.sh"), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    assert time.monotonic() - start < 60  # the import of torch, not a training run
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "--tiny" in lines[0]
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["status"] == "refused: no CUDA device" and summary["steps"] == []
    assert not (tmp_path / "out/work").exists()


@pytest.mark.child_process
def test_the_budget_counts_from_the_start_of_the_script(tmp_path):
    """A script started 1,000 s ago has no time left for any step of a 480 s budget."""
    env = {
        **os.environ,
        "GPU_CHECK_STARTED": str(time.time() - 1000),
        "GPU_KIT": str(tmp_path / "no-kit"),
    }
    run = subprocess.run(
        ["bash", str(ROOT / "gpu_check/run.sh"), str(tmp_path / "out"), "--tiny"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["budget_s"] == 480
    assert [(s["name"], s["seconds"], s["status"]) for s in summary["steps"]] == [
        ("imports", 0.0, "skipped")
    ]


@pytest.mark.e2e
@needs_pubmedqa
@needs_tokenizer
def test_the_tiny_check_runs_the_pipeline_and_the_benchmark_and_reports_them(
    tmp_path, pubmedqa_dir, tokenizer_dir
):
    out = tmp_path / "check out"  # a space in the path: the script quotes its paths
    env = {
        **os.environ,
        "GPU_KIT": str(tmp_path / "no-kit"),
        "PYTHON": sys.executable,
        "PUBMEDQA_DIR": str(pubmedqa_dir),
        "GPT2_TOKENIZER_DIR": str(tokenizer_dir),
    }
    results = tmp_path / "results"
    run = subprocess.run(
        ["bash", str(ROOT / "gpu_check/run.sh"), str(out), "--tiny", "--results", str(results)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(run.stdout[-3000:])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert [s["name"] for s in summary["steps"]] == ["imports", *DVC_ORDER, "bench.gpu"]
    assert all(s["status"] == "ok" and s["seconds"] > 0 for s in summary["steps"])
    for step in summary["steps"][1:]:  # the import check prints nothing when it passes
        assert (out / "logs" / f"{step['name']}.log").stat().st_size > 0
    # What comes back from a lent machine: two files with plain names, the archive < 16 MiB.
    assert sorted(p.name for p in results.iterdir()) == ["gpu_check.tar.gz", "summary.json"]
    assert json.loads((results / "summary.json").read_text()) == summary
    assert (results / "gpu_check.tar.gz").stat().st_size <= 16 << 20
    with tarfile.open(results / "gpu_check.tar.gz") as tar:
        archived = tar.getnames()
        assert tar.extractfile("logs/train.log").read() == (out / "logs/train.log").read_bytes()
    assert {"bench_gpu.json", "metrics/metrics__eval_finetuned.json"} <= set(archived)
    # The stages ran the scratch copy's smoke params: the tiny model on the 40 examples.
    assert "train_examples" in (out / "metrics/metrics__train.json").read_text()
    train = json.loads((out / "metrics/metrics__train.json").read_text())
    assert train["train_examples"] == 40
    assert json.loads((out / "metrics/perf__train.json").read_text())["device"] == "cpu"
    for which in ("base", "finetuned"):
        metrics = json.loads((out / f"metrics/metrics__eval_{which}.json").read_text())
        assert summary["evaluate"][which]["accuracy"] == metrics["accuracy"]
        details = json.loads((out / f"metrics/eval__{which}__details.json").read_text())
        assert details["meteor_wordnet"].startswith("wordnet")
    assert (out / "metrics/metrics__compare.json").is_file()
    assert (out / "metrics/reports__results.md").is_file()
    bench = json.loads((out / "bench_gpu.json").read_text())
    assert bench["settings"]["model"]["overrides"] == {"n_layer": 2, "n_embd": 64, "n_head": 2}
    assert summary["bench"]["full_fine_tuning"]["pubmedqa"]["tokens_per_s"] > 0
    assert "== GPU check summary" in run.stdout
    # The plan for the full-size run on an H100 beside each step's measured time.
    plan = summary["plan"]
    assert plan["total_expected_s"] == pytest.approx(sum(plan["expected_s"].values()), abs=0.2)
    for step in summary["steps"]:
        assert step["expected_s"] == plan["expected_s"][step["name"]]
        assert step["pessimistic_s"] == plan["pessimistic_s"][step["name"]]
    assert "plan for one H100" in run.stdout and "expected" in run.stdout
    # What ran: the commit, the interpreter and packages, the params the stages read.
    assert summary["project"]["source"] == "git" and len(summary["project"]["commit"]) == 40
    assert summary["kit_sha256"] is None  # no kit: the current Python's packages
    environment = summary["environment"]
    assert environment["python"] == ".".join(map(str, sys.version_info[:3]))
    import torch
    import transformers

    assert environment["packages"]["torch"] == torch.__version__
    assert environment["packages"]["transformers"] == transformers.__version__
    assert environment["gpu"] is None and environment["cuda_driver"] is None
    assert summary["params"]["model"]["init"] == "random"
    assert summary["params"]["train"] == json.loads(json.dumps(summary["params"]["train"]))
    assert summary["params"]["model"]["overrides"] == {"n_layer": 2, "n_embd": 64, "n_head": 2}
    with tarfile.open(results / "gpu_check.tar.gz") as tar:
        assert json.load(tar.extractfile("environment.json")) == environment
    # How generation ran, per evaluation: on a CPU the dynamic cache, its ms per step.
    for which in ("base", "finetuned"):
        ev = summary["evaluate"][which]
        assert ev["decode_step"] == "dynamic" and ev["decode_steps"] > 0
        assert ev["decode_step_ms"] > 0 and ev["generation_batch_size"] == 16
    # The project's own files are untouched: everything happened in the scratch copy.
    assert (
        subprocess.run(
            ["git", "status", "--porcelain", "metrics", "eval", "models", "data"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout
        == ""
    )


@pytest.mark.e2e
@needs_pubmedqa
@needs_tokenizer
def test_a_failing_stage_stops_the_pipeline_but_the_summary_is_written(tmp_path, tokenizer_dir):
    """A corrupt ori_pqal.json: download refuses it (md5), every later stage is skipped;
    bench.gpu still runs (at most until the 40-second budget stops it)."""
    bad = tmp_path / "pubmedqa"
    bad.mkdir()
    (bad / "ori_pqal.json").write_text("{}")
    env = {**os.environ, "PUBMEDQA_DIR": str(bad), "GPT2_TOKENIZER_DIR": str(tokenizer_dir)}
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "gpu_check.check", str(out), "--tiny", "--budget", "40"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1
    steps = {
        s["name"]: s["status"] for s in json.loads((out / "summary.json").read_text())["steps"]
    }
    assert steps["download"] == "failed (exit 1)"
    assert "md5" in (out / "logs/download.log").read_text()
    later = DVC_ORDER[DVC_ORDER.index("download") + 1 :]  # validate runs before download
    assert [steps[name] for name in later] == ["skipped"] * len(later)
    assert steps["bench.gpu"] != "skipped"  # it ran (and fails too, on this data, or times out)


def _start_tiny(tmp_path, pubmedqa_dir, tokenizer_dir) -> tuple[subprocess.Popen, Path, Path]:
    """The tiny check in a session of its own, refreshing its summary every second."""
    env = {
        **os.environ,
        "GPU_KIT": str(tmp_path / "no-kit"),
        "PUBMEDQA_DIR": str(pubmedqa_dir),
        "GPT2_TOKENIZER_DIR": str(tokenizer_dir),
        "GPU_CHECK_REFRESH_S": "1",
    }
    out, results = tmp_path / "out", tmp_path / "results"
    proc = subprocess.Popen(
        ["bash", str(ROOT / "gpu_check/run.sh"), str(out), "--tiny", "--results", str(results)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    return proc, out, results


def _wait_for_running(proc, results: Path, step: str, seconds: float, logged=True) -> dict:
    """The summary once `step` has run `seconds` (and logged a line) or fail after 300 s."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.3)
        try:
            running = json.loads((results / "summary.json").read_text())["running"]
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        if running and running["step"] == step and running["running_s"] >= seconds:
            if running["last_log_line"] or not logged:
                return running
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"the check never ran {step} for {seconds} s: {proc.stderr.read()[-2000:]}")


@pytest.mark.e2e
@needs_pubmedqa
@needs_tokenizer
def test_a_check_killed_mid_step_leaves_the_running_step_and_its_log(
    tmp_path, pubmedqa_dir, tokenizer_dir
):
    """SIGKILL to the whole check (no handler runs) while train has run 3 s: the results say
    "running: train", since when, its last log line at the last refresh (at most a second
    old) and the elapsed time then; the archive holds train.log as it was then."""
    proc, out, results = _start_tiny(tmp_path, pubmedqa_dir, tokenizer_dir)
    _wait_for_running(proc, results, "train", 3)
    time.sleep(1.5)  # at least one refresh after the one seen
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    summary = json.loads((results / "summary.json").read_text())
    assert summary["status"] == "running: train"
    running = summary["running"]
    assert running["step"] == "train" and running["running_s"] >= 3.5
    assert running["since"].endswith("Z") and summary["elapsed_s"] > running["running_s"]
    log = (out / "logs/train.log").read_text()
    assert running["last_log_line"] in [ln.split("\r")[-1].strip() for ln in log.splitlines()]
    names = [s["name"] for s in summary["steps"]]
    assert names == ["imports", *DVC_ORDER[: DVC_ORDER.index("train")]]
    with tarfile.open(results / "gpu_check.tar.gz") as tar:
        archived = tar.extractfile("logs/train.log").read().decode()
        assert tar.extractfile("environment.json") is not None
    assert archived and log.startswith(archived)
    assert not list(out.glob(".*.tmp")) and not list(results.glob(".*.tmp"))


@pytest.mark.e2e
@needs_pubmedqa
@needs_tokenizer
def test_sigterm_stops_the_running_step_and_says_so(tmp_path, pubmedqa_dir, tokenizer_dir):
    """SIGTERM (what `timeout` sends) to the check while prepare runs (its longest step before
    training): the stage's process is stopped with it, the summary says "killed (SIGTERM)
    while running prepare", exit 143."""
    proc, out, results = _start_tiny(tmp_path, pubmedqa_dir, tokenizer_dir)
    _wait_for_running(proc, results, "prepare", 0, logged=False)
    proc.send_signal(signal.SIGTERM)  # the check only: run.sh exec'd it
    assert proc.wait(timeout=60) == 143
    assert proc.stderr.read().strip().splitlines() == [
        "gpu_check: killed (SIGTERM) while running prepare"
    ]
    summary = json.loads((results / "summary.json").read_text())
    assert summary["status"] == "killed (SIGTERM) while running prepare"
    deadline = time.monotonic() + 10
    while _alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(proc.pid)  # nothing of the check's process group is left: the stage went


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
