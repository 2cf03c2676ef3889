"""A killed run: the marker a phase writes while it trains, and the next run's report of it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pubmedqa_gpt2.core.io import write_json
from pubmedqa_gpt2.out_of_memory import killed_message, train_advice


def mark_running(marker: Path) -> None:
    """Record this process as training (the marker stays behind if it is killed)."""
    write_json(marker, {"pid": os.getpid()})


def report_unfinished_run(marker: Path, section: str = "train") -> None:
    """Say so when the last run of this stage here ended without finishing (its marker is
    still there and its process is gone): a SIGKILL, most often the out-of-memory killer.
    `section`: the params section whose settings would make it fit."""
    if not marker.is_file():
        return
    try:
        pid = int(json.loads(marker.read_text())["pid"])
        os.kill(pid, 0)
    except ProcessLookupError:
        ended = killed_message(train_advice(section))
        print(f"the last training run here (pid {pid}) did not finish; if it was {ended}")
    except (ValueError, KeyError, json.JSONDecodeError, PermissionError, OSError):
        return
