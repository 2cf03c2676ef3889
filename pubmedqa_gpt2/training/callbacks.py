"""The Trainer callbacks of a phase: step checkpoints, the dvclive curves, a step count, a stop
on request (`stop.py`), and the progress bar with the logged figures in its postfix."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.distributed as dist
from dvclive import Live
from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from pubmedqa_gpt2.training.stop import stop_requested


def curve_name(key: str) -> str:
    """The dvclive name of a Trainer log key: `eval_loss` -> `eval/loss`, `loss` -> `train/loss`."""
    return "eval/" + key.removeprefix("eval_") if key.startswith("eval_") else "train/" + key


def curve_wanted(key: str) -> bool:
    """Per-step figures only: not the end-of-run summary (`train_loss`, the mean over this
    session only, is misleading after a resume), counters, nor speed figures that vary."""
    counter = key in ("step", "epoch", "total_flos", "num_input_tokens_seen")
    return not (counter or key.startswith("train_") or key.endswith(("_runtime", "_per_second")))


class StepCount(TrainerCallback):
    """The step training (re)started at, the optimizer steps taken since (fewer than the run's
    after a resume), and their seconds: from each step's beginning to its end, the device
    synchronised there, so neither the dev evaluations nor the checkpoint writes between
    steps count (`loop_seconds`, the time a training MFU divides by)."""

    def __init__(self):
        self.first_step = 0
        self.steps = 0
        self.loop_seconds = 0.0
        self._began: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.first_step = state.global_step  # a resumed run starts at its checkpoint's step

    def on_step_begin(self, args, state, control, **kwargs):
        self._began = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1
        if self._began is not None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.loop_seconds += time.perf_counter() - self._began
            self._began = None


class StepCheckpoints(TrainerCallback):
    """Evaluate and checkpoint every `save_steps` optimizer steps, on top of the epoch ends."""

    def __init__(self, save_steps: int):
        self.save_steps = save_steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.save_steps == 0:
            control.should_evaluate = True
            control.should_save = True
        return control


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


class LiveCurves(TrainerCallback):
    """Training and dev curves in a dvclive folder, indexed by optimizer step.

    A resumed run replays the history stored in its checkpoint, so the curves are those of
    one uninterrupted run.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.live = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.live = Live(str(self.folder), save_dvc_exp=False, dvcyaml=False)
            for logs in state.log_history:
                self.record(logs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.live is not None:
            self.record({**logs, "step": state.global_step})

    def on_train_end(self, args, state, control, **kwargs):
        if self.live is not None:
            self.live.end()

    def record(self, logs: dict) -> None:
        self.live.step = logs["step"]
        for key, value in logs.items():
            if curve_wanted(key):
                self.live.log_metric(curve_name(key), value)
        self.live.make_summary()


class PostfixProgress(ProgressCallback):
    """The Trainer's progress bars, named ("train", "dev loss"), with the last logged figures
    in the training bar's postfix: the Trainer's own prints each log as a dict line
    ({'loss': '10.81', ...}) through the bar. Every figure still goes to dvclive."""

    SHOWN = {"loss": "loss", "eval_loss": "dev_loss", "eval_accuracy": "dev_acc"}

    def __init__(self):
        super().__init__()
        self.postfix: dict[str, str] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            self.training_bar.set_description("train")

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if state.is_world_process_zero and self.prediction_bar is None:
            self.prediction_bar = tqdm(
                total=len(eval_dataloader), desc="dev loss", leave=False, dynamic_ncols=True
            )
        super().on_prediction_step(args, state, control, eval_dataloader, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training_bar is None:
            return
        for key, name in self.SHOWN.items():
            if isinstance((logs or {}).get(key), int | float):
                self.postfix[name] = f"{logs[key]:.4g}"
        self.training_bar.set_postfix(self.postfix)


def phase_callbacks(save_steps: int | None, dvclive: Path) -> list[TrainerCallback]:
    """Step checkpoints when asked for, the dvclive curves, and the step count, last."""
    return ([StepCheckpoints(save_steps)] if save_steps else []) + [
        LiveCurves(dvclive),
        StepCount(),
    ]
