"""A killed run (`pubmedqa_gpt2/training/running_marker.py`): the marker a phase leaves while
it trains, and the next run's report of it."""

from __future__ import annotations

import json
import subprocess
import sys

from pubmedqa_gpt2.core import paths
from pubmedqa_gpt2.training.phase import TRAIN_PHASE
from stages import train as stage

from .training_helpers import set_params


def test_a_killed_run_is_reported_by_the_next_one(workdir, tiny, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process that existed and is gone, as a SIGKILLed run is
    paths.CHECKPOINTS.mkdir(parents=True)
    TRAIN_PHASE.running_file.write_text(json.dumps({"pid": dead.pid}))
    set_params(workdir, tiny(epochs=1))
    stage.main()
    out = capsys.readouterr().out
    assert (
        f"the last training run here (pid {dead.pid}) did not finish; if it was killed by "
        "signal 9: probably out of memory" in out
    )
    stage.main()  # that run finished: nothing to report
    assert "did not finish" not in capsys.readouterr().out


def gone_pid() -> int:
    """The pid of a process that existed and is gone, as a SIGKILLed run's is."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


def test_the_marker_names_the_training_process(tmp_path, monkeypatch, capsys):
    """mark_running records this process; killed (here: its pid, of a process now gone),
    the next run reports it, with the advice of the train section unless told another."""
    from pubmedqa_gpt2.training import running_marker

    marker = tmp_path / "running.json"
    pid = gone_pid()
    monkeypatch.setattr(running_marker.os, "getpid", lambda: pid)
    running_marker.mark_running(marker)
    monkeypatch.undo()
    running_marker.report_unfinished_run(marker)
    assert capsys.readouterr().out == (
        f"the last training run here (pid {pid}) did not finish; if it was killed by signal 9: "
        "probably out of memory (the kernel's out-of-memory killer sends it); to fit: lower "
        "train.batch_size and raise train.gradient_accumulation_steps by the same factor, set "
        "train.gradient_checkpointing: true, set train.lora.enabled: true, or lower "
        "prepare.max_length\n"
    )
    running_marker.report_unfinished_run(marker, section="pretrain")
    assert "to fit: lower pretrain.batch_size" in capsys.readouterr().out


def test_a_run_still_under_way_is_neither_reported_nor_signalled(tmp_path, capsys):
    """The marker names a live process (this one): nothing is said, and the check sends it no
    signal (signal 0 only asks whether it exists)."""
    import os
    import signal

    from pubmedqa_gpt2.training import running_marker

    marker = tmp_path / "running.json"
    running_marker.mark_running(marker)
    assert json.loads(marker.read_text()) == {"pid": os.getpid()}
    received = []
    previous = signal.signal(signal.SIGHUP, lambda number, frame: received.append(number))
    try:
        running_marker.report_unfinished_run(marker)
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert received == [] and capsys.readouterr().out == ""
