"""What the GPU check leaves behind (gpu_check/record.py): summary.json and one archive,
rewritten after every step and, while a step runs, every REFRESH_S seconds."""

from __future__ import annotations

import json
import os
import tarfile
import time

from gpu_check import record as rec


def test_results_hold_the_summary_and_one_archive_cut_to_16_mib(tmp_path):
    out, results = tmp_path / "out", tmp_path / "results"
    (out / "logs").mkdir(parents=True)
    results.mkdir()
    # 20 MiB of incompressible log: the archive keeps each log's last 256 KiB.
    (out / "logs/train.log").write_bytes(os.urandom(20 << 20))
    (out / "logs/report.log").write_text("done\n")
    record = rec.Results(out, results, time.time())
    record.add(rec.Step("train", 12.5, "ok"), "ran train")
    assert sorted(p.name for p in results.iterdir()) == ["gpu_check.tar.gz", "summary.json"]
    summary = json.loads((results / "summary.json").read_text())
    assert summary["status"] == "ran train" and summary["running"] is None
    assert summary["steps"] == [{"name": "train", "seconds": 12.5, "status": "ok"}]
    assert (results / "gpu_check.tar.gz").stat().st_size <= 16 << 20
    with tarfile.open(results / "gpu_check.tar.gz") as tar:
        tail = tar.extractfile("logs/train.log").read()
        assert tail == (out / "logs/train.log").read_bytes()[-(256 << 10) :]
        assert tar.extractfile("logs/report.log").read() == b"done\n"
    record.add(rec.Step("report", 1.0, "failed (exit 1)"), "ran report")
    assert len(json.loads((out / "summary.json").read_text())["steps"]) == 2


def test_a_running_step_is_refreshed_with_its_log_so_far(tmp_path, monkeypatch):
    """A step that logs a line, then another: each refresh (every 0.2 s here) names the step,
    since when, its last log line and the time elapsed, and the archive holds its log so far;
    once stopped, nothing more is written."""
    monkeypatch.setattr(rec, "REFRESH_S", 0.2)
    out, results = tmp_path / "out", tmp_path / "results"
    (out / "logs").mkdir(parents=True)
    results.mkdir()
    started = time.time() - 100  # the check began 100 s ago
    record = rec.Results(out, results, started)
    log = out / "logs/train.log"
    log.write_text("loading\n")
    record.start("train")
    first = json.loads((results / "summary.json").read_text())
    assert first["status"] == "running: train"
    assert first["running"]["step"] == "train" and first["running"]["last_log_line"] == "loading"
    since = first["running"]["since"]
    assert since == rec.utc(record.running["since"]) and since.endswith("Z")
    log.write_text("loading\n 40%|####      | 4/10 [00:02<00:03]\r 50%|#####     | 5/10\n")
    time.sleep(0.7)
    later = json.loads((results / "summary.json").read_text())
    assert later["running"]["last_log_line"] == "50%|#####     | 5/10"  # the bar's last state
    assert later["running"]["since"] == since and later["running"]["running_s"] >= 0.4
    assert later["elapsed_s"] >= 100.4
    with tarfile.open(results / "gpu_check.tar.gz") as tar:
        assert tar.extractfile("logs/train.log").read() == log.read_bytes()
    record.stop()
    time.sleep(0.3)  # a refresh already under way may still land
    stamp = (results / "summary.json").stat().st_mtime_ns
    time.sleep(0.6)
    assert (results / "summary.json").stat().st_mtime_ns == stamp
    assert record.last_started == "train" and record.running_state() is None


def test_the_last_log_line_skips_blank_lines_and_reads_only_the_tail(tmp_path):
    log = tmp_path / "a.log"
    assert rec.last_line(log) is None
    log.write_text("x" * 10_000 + "\nfirst\nsecond\n\n  \n")
    assert rec.last_line(log) == "second"
    log.write_text("")
    assert rec.last_line(log) is None
