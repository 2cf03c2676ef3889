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
