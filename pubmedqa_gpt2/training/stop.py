"""Stop a run on request, at the next optimizer step, with a checkpoint to resume from.

A SLURM task is warned before its time limit (`--signal=B:USR1@SECONDS`) or asked to yield
(`scancel -b --signal=USR1`): the batch script's trap creates the file named by
`PUBMEDQA_STOP_FILE`. Every training process looks for it after each optimizer step (the
processes of a data-parallel run agree through an all-reduce, so all stop at the same step:
`callbacks.StopOnRequest`);
the Trainer then saves a checkpoint and training ends. The stage exits with STOPPED_EXIT
instead of saving a model, and the task is requeued: the rerun resumes from that checkpoint
(with `train.resumable_checkpoints: true`, which keeps the optimizer state).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

STOP_FILE_ENV = "PUBMEDQA_STOP_FILE"
STOPPED_EXIT = 75  # EX_TEMPFAIL: stopped to be resumed, not failed


def stop_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the file named by PUBMEDQA_STOP_FILE exists (False when none is named)."""
    path = (os.environ if environ is None else environ).get(STOP_FILE_ENV)
    return bool(path) and Path(path).exists()
