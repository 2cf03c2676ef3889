"""Stop a run on request, at the next optimizer step, with a checkpoint to resume from.

A SLURM task is warned before its time limit (`--signal=B:USR1@SECONDS`) or asked to yield
(`scancel -b --signal=USR1`): the batch script's trap creates the file named by
`PUBMEDQA_STOP_FILE`. Every training process looks for it after each optimizer step (the
processes of a data-parallel run agree through an all-reduce, so all stop at the same step);
the Trainer then saves a checkpoint and training ends. The stage exits with STOPPED_EXIT
instead of saving a model, and the task is requeued: the rerun resumes from that checkpoint
(with `train.resumable_checkpoints: true`, which keeps the optimizer state).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback

STOP_FILE_ENV = "PUBMEDQA_STOP_FILE"
STOPPED_EXIT = 75  # EX_TEMPFAIL: stopped to be resumed, not failed


def stop_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the file named by PUBMEDQA_STOP_FILE exists (False when none is named)."""
    path = (os.environ if environ is None else environ).get(STOP_FILE_ENV)
    return bool(path) and Path(path).exists()


class StopOnRequest(TrainerCallback):
    """After each optimizer step: when a stop is requested, checkpoint and end training."""

    def __init__(self):
        self.stopped_at: int | None = None  # the step training stopped at, None if it did not

    def on_step_end(self, args, state, control, **kwargs):
        wanted = stop_requested()
        if dist.is_available() and dist.is_initialized():
            flag = torch.tensor([int(wanted)], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            wanted = bool(flag.item())
        if wanted:
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        # The Trainer ends the epoch it stops in as if it were complete: an evaluation and a
        # second save at the stop step, which would put a dev evaluation no uninterrupted run
        # makes into the history, and the random state after it into the checkpoint (the
        # resumed run then draws other dropout masks and another data order).
        if self.stopped_at is not None:
            control.should_evaluate = False
            control.should_save = False
        return control
