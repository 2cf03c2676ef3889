"""What the GPU check leaves behind, killed or not: OUTDIR/summary.json and, with `--results`,
its copy and one archive of the logs, metrics and bench JSON (<= 16 MiB), the two files a lent
machine sends back.

Both are rewritten atomically after every step and, while a step runs, every REFRESH_S
seconds: a run killed from outside (SIGKILL included) still says which step was running,
since when, its last log line and the time elapsed at the last refresh, and the archive holds
that step's log up to then.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

ARCHIVE = "gpu_check.tar.gz"
ARCHIVE_LIMIT = 16 << 20  # one file sent back from a lent machine: 16 MiB at most
LOG_TAIL = 256 << 10  # what is kept of each log when the whole archive would pass the limit
REFRESH_S = float(os.environ.get("GPU_CHECK_REFRESH_S", 30))


@dataclass
class Step:
    name: str
    seconds: float
    status: str  # ok | failed (exit N) | timed out | skipped | killed (SIGTERM)


def json_or_none(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def last_line(path: Path, limit: int = 4096) -> str | None:
    """The last non-empty line of a log (of its last `limit` bytes), without progress-bar
    carriage returns."""
    if not path.is_file():
        return None
    with path.open("rb") as log:
        log.seek(max(0, path.stat().st_size - limit))
        text = log.read().decode(errors="replace")
    lines = [ln.split("\r")[-1].strip() for ln in text.splitlines()]
    return next((ln for ln in reversed(lines) if ln), None)


def collect(work: Path, out: Path) -> None:
    """The run's metrics, perf and reports, copied to OUTDIR/metrics."""
    target = out / "metrics"
    target.mkdir(exist_ok=True)
    for pattern in ("metrics/*.json", "perf/*.json", "eval/*/details.json", "reports/*.md"):
        for path in work.glob(pattern):
            flat = str(path.relative_to(work)).replace("/", "__")
            shutil.copy2(path, target / flat)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` in one step: a reader (or a kill) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def archive_bytes(out: Path, log_tail: int | None = None) -> bytes:
    """gpu_check.tar.gz of OUTDIR's logs/, metrics/, environment.json and bench_gpu.json; with
    `log_tail`, each log cut to its last `log_tail` bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        paths = sorted((out / "logs").glob("*.log")) + sorted((out / "metrics").glob("*"))
        paths += [out / n for n in ("environment.json", "bench_gpu.json") if (out / n).is_file()]
        for path in paths:
            data = path.read_bytes()
            if log_tail is not None and path.suffix == ".log" and len(data) > log_tail:
                data = data[-log_tail:]
            info = tarfile.TarInfo(str(path.relative_to(out)))
            info.size, info.mtime = len(data), int(path.stat().st_mtime)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Results:
    """summary.json (and, with --results, its copy and the archive), rewritten after every
    step and every REFRESH_S seconds while one runs. `summarize(steps)` gives the figures of
    the run so far; `extra` is merged in as it is."""

    def __init__(self, out: Path, results: Path | None, started: float, summarize=None):
        self.out, self.results, self.started = out, results, started
        self.summarize = summarize or (lambda steps: {"steps": [asdict(s) for s in steps]})
        self.steps: list[Step] = []
        self.extra: dict = {}
        self.running: dict | None = None
        self.lock = threading.RLock()  # SIGTERM's handler may write while a write runs
        self.last_started: str | None = None

    def add(self, step: Step, status: str) -> Step:
        self.steps.append(step)
        self.write(status)
        return step

    def start(self, name: str) -> None:
        """`name` runs from now: refreshed every REFRESH_S seconds until `stop`."""
        self.running = {"step": name, "since": time.time(), "stop": threading.Event()}
        self.last_started = name
        thread = threading.Thread(target=self._refresh, args=(self.running,), daemon=True)
        thread.start()
        self.write(f"running: {name}")

    def stop(self) -> None:
        if self.running is not None:
            self.running["stop"].set()
            self.running = None

    def _refresh(self, running: dict) -> None:
        while not running["stop"].wait(REFRESH_S):
            self.write(f"running: {running['step']}")

    def running_state(self) -> dict | None:
        """The running step: name, since (UTC), seconds so far, its log's last line."""
        running = self.running
        if running is None:
            return None
        return {
            "step": running["step"],
            "since": utc(running["since"]),
            "running_s": round(time.time() - running["since"], 1),
            "last_log_line": last_line(self.out / "logs" / f"{running['step']}.log"),
        }

    def write(self, status: str, **figures) -> dict:
        with self.lock:
            now = time.time()
            summary = {
                "status": status,
                "written_at": utc(now),
                "elapsed_s": round(now - self.started, 1),
                "running": self.running_state(),
                **self.summarize(self.steps, **figures),
                **self.extra,
            }
            data = (json.dumps(summary, indent=2) + "\n").encode()
            write_atomic(self.out / "summary.json", data)
            if self.results is not None:
                write_atomic(self.results / "summary.json", data)
                archive = archive_bytes(self.out)
                if len(archive) > ARCHIVE_LIMIT:
                    archive = archive_bytes(self.out, LOG_TAIL)
                write_atomic(self.results / ARCHIVE, archive)
            return summary
