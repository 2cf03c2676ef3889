"""The training callbacks as a run uses them (`pubmedqa_gpt2/training/callbacks.py`), in this
process: the console's named progress bars and the dvclive folder, finished and written as
dvclive's own (no DVC experiment, no dvc.yaml)."""

from __future__ import annotations

import json
import re
import subprocess
import types

import pytest

from pubmedqa_gpt2.training.callbacks import curve_name, curve_wanted
from stages import train as stage

from .training_helpers import run_module, set_params


def test_the_console_shows_named_bars_with_the_last_figures(workdir, tiny, capsys):
    set_params(workdir, tiny(epochs=1))
    stage.main()
    err = capsys.readouterr().err
    assert "train: 100%" in err and "loss=" in err and "dev_acc=" in err
    # the dev evaluation's bar, by name, counting the dev batches (6 examples, batch 4: 2)
    assert re.search(r"(^|[\r\n])dev loss: +\d+%\|[^\r\n]*\| \d/2 ", err), err[-2000:]
    assert re.search(r"(^|[\r\n])dev accuracy: +\d+%\|", err), err[-2000:]
    assert "{'loss'" not in err  # the Trainer's own dict lines are not printed


def test_counters_and_timings_are_no_curves():
    from pubmedqa_gpt2.training.callbacks import curve_wanted

    for key in ("step", "epoch", "total_flos", "num_input_tokens_seen", "train_loss",
                "eval_runtime", "eval_samples_per_second", "train_steps_per_second"):  # fmt: skip
        assert not curve_wanted(key), key
    for key in ("loss", "grad_norm", "learning_rate", "eval_loss", "eval_accuracy"):
        assert curve_wanted(key), key


def test_the_curves_folder_is_dvclive_s_finished_and_no_experiment(workdir, tiny):
    """Inside a DVC repository (as `python -m stages.train` by hand would be), training saves
    no DVC experiment and writes no dvc.yaml; dvclive's summary is written at the end."""
    for command in (
        ["git", "init", "--quiet"],
        ["dvc", "init", "--quiet"],
        ["git", "commit", "--quiet", "-m", "start"],
    ):
        subprocess.run(command, cwd=workdir, check=True, capture_output=True)
    set_params(workdir, tiny(epochs=1))
    stage.main()
    refs = subprocess.run(
        ["git", "for-each-ref", "refs/exps"], cwd=workdir, capture_output=True, text=True
    ).stdout
    assert refs == "" and not (workdir / "dvc.yaml").exists()
    summary = json.loads((workdir / "dvclive" / "metrics.json").read_text())
    assert summary["step"] == 3  # 12 examples, batch 4, one epoch


def test_curve_names():
    assert [curve_name(k) for k in ("loss", "grad_norm", "eval_loss", "eval_accuracy")] == [
        "train/loss",
        "train/grad_norm",
        "eval/loss",
        "eval/accuracy",
    ]
    kept = [
        k
        for k in (
            "loss",
            "learning_rate",
            "eval_loss",
            "eval_runtime",
            "train_loss",
            "train_samples_per_second",
            "epoch",
            "total_flos",
        )
        if curve_wanted(k)
    ]
    assert kept == ["loss", "learning_rate", "eval_loss"]


@pytest.mark.child_process
def test_the_console_shows_progress_bars_not_log_lines_nor_harmless_warnings(workdir, tiny):
    """A run's console: the training bar carries the logged figures in its postfix (no dict
    line such as {'loss': '10.81', ...} printed through it); the dev evaluation has bars of
    its own; the two known-harmless transformers warnings (GPT-2's tied lm_head reported
    missing when the best checkpoint is loaded; `loss_type=None` unrecognized) are gone."""
    set_params(workdir, tiny())
    result = run_module(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    print(console)  # quoted in the issue note (pytest -s)
    assert "{'" not in console, console  # no log dict, of training, dev or the run's end
    assert "train: " in console and "loss=" in console and "dev_loss=" in console
    assert "dev_acc=" in console
    assert "dev loss: " in console and "dev accuracy: " in console  # the dev evaluation's bars
    assert "lm_head.weight" not in console and "missing keys" not in console
    assert "loss_type" not in console
    assert "warn" not in console.lower(), console  # no other warning either, here


def test_the_loop_clock_counts_the_steps_not_what_happens_between_them(monkeypatch):
    """Two steps of 0.5 s with a 3 s checkpoint write between them (a fake clock): 1.0 s of
    training loop, 2 steps; a step that never ended adds nothing."""
    from pubmedqa_gpt2.training import callbacks

    now = [100.0]
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: now[0])
    count = callbacks.StepCount()
    for _ in range(2):
        count.on_step_begin(None, None, None)
        now[0] += 0.5
        count.on_step_end(None, None, None)
        now[0] += 3.0  # dev evaluation and checkpoint write
    count.on_step_begin(None, None, None)
    now[0] += 7.0
    assert count.steps == 2 and count.loop_seconds == 1.0


def test_the_step_count_starts_at_the_step_training_resumes_from():
    """A run resumed from checkpoint-7 begins at global step 7."""
    from transformers import TrainerControl, TrainerState

    from pubmedqa_gpt2.training.callbacks import StepCount

    count = StepCount()
    count.on_train_begin(None, TrainerState(global_step=7), TrainerControl())
    assert count.first_step == 7


def test_the_epoch_a_stop_ends_is_neither_evaluated_nor_saved_again(tmp_path, monkeypatch):
    """A stop at step 5 saves there (on_step_end); the Trainer then ends the epoch as if
    complete, asking for an evaluation and a save, which the callback takes back. Without a
    stop, the epoch end's evaluation and save stay."""
    from transformers import TrainerControl, TrainerState

    from pubmedqa_gpt2.training.callbacks import StopOnRequest
    from pubmedqa_gpt2.training.stop import STOP_FILE_ENV

    stop = tmp_path / "stop"
    monkeypatch.setenv(STOP_FILE_ENV, str(stop))
    state = TrainerState(global_step=5)
    running = StopOnRequest()
    control = running.on_step_end(None, state, TrainerControl())
    assert not control.should_save and not control.should_training_stop
    control = running.on_epoch_end(
        None, state, TrainerControl(should_evaluate=True, should_save=True)
    )
    assert control.should_evaluate and control.should_save and running.stopped_at is None

    stop.touch()
    stopped = StopOnRequest()
    control = stopped.on_step_end(None, state, TrainerControl())
    assert control.should_save and control.should_training_stop and stopped.stopped_at == 5
    control = stopped.on_epoch_end(
        None, state, TrainerControl(should_evaluate=True, should_save=True)
    )
    assert not control.should_evaluate and not control.should_save


def test_the_curves_replay_the_stored_history_into_the_named_folder(tmp_path, monkeypatch):
    """A resumed run (history of steps 1 and 2 in its checkpoint) writes those steps, then its
    own, into its dvclive folder (not dvclive's default ./dvclive)."""
    from transformers import TrainerControl, TrainerState

    from pubmedqa_gpt2.training.callbacks import LiveCurves

    monkeypatch.chdir(tmp_path)
    history = [
        {"loss": 2.5, "learning_rate": 0.001, "epoch": 0.5, "step": 1},
        {"eval_loss": 3.25, "eval_runtime": 0.1, "epoch": 0.5, "step": 1},
        {"loss": 2.0, "learning_rate": 0.001, "epoch": 1.0, "step": 2},
    ]
    state = TrainerState(global_step=2, log_history=history)
    curves = LiveCurves(tmp_path / "curves")
    curves.on_train_begin(None, state, TrainerControl())
    state.global_step = 3
    curves.on_log(None, state, TrainerControl(), logs={"loss": 1.5, "epoch": 1.5})
    curves.on_train_end(None, state, TrainerControl())

    def rows(name: str) -> list[list[str]]:
        tsv = tmp_path / "curves" / "plots" / "metrics" / f"{name}.tsv"
        return [line.split("\t") for line in tsv.read_text().splitlines()[1:]]

    assert rows("train/loss") == [["1", "2.5"], ["2", "2.0"], ["3", "1.5"]]
    assert rows("eval/loss") == [["1", "3.25"]]
    assert not (tmp_path / "dvclive").exists()
    assert json.loads((tmp_path / "curves" / "metrics.json").read_text())["step"] == 3


class _Batches:
    """A dev dataloader of `n` batches (the progress bar reads its length only)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


def test_the_dev_bar_is_named_counts_the_batches_and_goes_when_done(capsys):
    """Two dev batches: a bar "dev loss" at 2/2, cleared at the evaluation's end (no line of
    its own is left: nothing but carriage returns)."""
    from transformers import TrainerControl, TrainerState

    from pubmedqa_gpt2.training.callbacks import PostfixProgress

    progress = PostfixProgress()
    state = TrainerState(is_world_process_zero=True)
    for _ in range(2):
        progress.on_prediction_step(None, state, TrainerControl(), eval_dataloader=_Batches(2))
    bar = progress.prediction_bar
    assert (bar.desc, bar.n, bar.total) == ("dev loss", 2, 2)
    progress.on_evaluate(None, state, TrainerControl())
    err = capsys.readouterr().err
    assert "dev loss:" in err and "\n" not in err


def test_processes_other_than_the_first_show_no_dev_bar(capsys):
    from transformers import TrainerControl, TrainerState

    from pubmedqa_gpt2.training.callbacks import PostfixProgress

    progress = PostfixProgress()
    state = TrainerState(is_world_process_zero=False)
    progress.on_prediction_step(None, state, TrainerControl(), eval_dataloader=_Batches(2))
    assert progress.prediction_bar is None and capsys.readouterr().err == ""


def test_the_training_bar_s_postfix_holds_the_last_figures_to_4_digits():
    """loss 10.81234 -> "10.81" (4 significant digits); dev loss and accuracy by their short
    names; a later log replaces only the figures it has."""
    from transformers import TrainerControl, TrainerState

    from pubmedqa_gpt2.training.callbacks import PostfixProgress

    progress = PostfixProgress()
    state = TrainerState(is_world_process_zero=True, max_steps=3)
    progress.on_train_begin(None, state, TrainerControl())
    progress.on_log(None, state, TrainerControl(), logs={"loss": 10.81234, "grad_norm": 1.5})
    progress.on_log(None, state, TrainerControl(), logs={"eval_loss": 9.5, "eval_accuracy": 0.5})
    assert progress.postfix == {"loss": "10.81", "dev_loss": "9.5", "dev_acc": "0.5"}
    assert progress.training_bar.postfix == "loss=10.81, dev_loss=9.5, dev_acc=0.5"
    progress.training_bar.close()


def test_a_step_end_without_its_beginning_counts_the_step_but_no_time(monkeypatch):
    """The clock runs from a step's beginning to its end only: an end with no beginning
    before it (the first, or a second end after one beginning) adds a step and no seconds."""
    from pubmedqa_gpt2.training import callbacks

    now = [100.0]
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: now[0])
    count = callbacks.StepCount()
    count.on_step_end(None, None, None)
    count.on_step_begin(None, None, None)
    now[0] += 0.5
    count.on_step_end(None, None, None)
    now[0] += 2.0
    count.on_step_end(None, None, None)
    assert count.steps == 3 and count.loop_seconds == 0.5


def test_a_stop_seen_by_any_process_stops_every_process(tmp_path, monkeypatch):
    """Two processes: each one's flag (1: it sees the stop file) is all-reduced with MAX, so
    a stop the other process alone sees stops this one too, at the same step; when neither
    sees one (0, 0) both go on. The all-reduce is stood in for by the other process's flag,
    reduced with the op asked for (an op torch lacks is a TypeError, as in torch)."""
    import torch
    import torch.distributed as dist
    from transformers import TrainerControl, TrainerState

    from pubmedqa_gpt2.training import callbacks
    from pubmedqa_gpt2.training.stop import STOP_FILE_ENV

    ops = {
        dist.ReduceOp.MAX: torch.maximum,
        dist.ReduceOp.MIN: torch.minimum,
        dist.ReduceOp.SUM: torch.add,
    }
    other = [0]

    def all_reduce(tensor, op=dist.ReduceOp.SUM):
        if op not in ops:
            raise TypeError(f"all_reduce: no op {op!r}")
        tensor.copy_(ops[op](tensor, torch.tensor([other[0]])))

    monkeypatch.setattr(callbacks.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(callbacks.dist, "all_reduce", all_reduce)
    monkeypatch.setenv(STOP_FILE_ENV, str(tmp_path / "stop"))  # no such file here
    args = types.SimpleNamespace(device=torch.device("cpu"))
    state = TrainerState(global_step=4)

    running = callbacks.StopOnRequest()
    control = running.on_step_end(args, state, TrainerControl())
    assert not control.should_training_stop and running.stopped_at is None
    other[0] = 1
    stopped = callbacks.StopOnRequest()
    control = stopped.on_step_end(args, state, TrainerControl())
    assert control.should_training_stop and control.should_save and stopped.stopped_at == 4


def test_processes_other_than_the_first_write_no_curves(tmp_path, monkeypatch):
    from transformers import TrainerControl, TrainerState

    from pubmedqa_gpt2.training.callbacks import LiveCurves

    monkeypatch.chdir(tmp_path)
    state = TrainerState(global_step=1, is_world_process_zero=False)
    curves = LiveCurves(tmp_path / "curves")
    curves.on_train_begin(None, state, TrainerControl())
    curves.on_log(None, state, TrainerControl(), logs={"loss": 1.5})
    curves.on_train_end(None, state, TrainerControl())
    assert list(tmp_path.iterdir()) == []


def test_a_phase_checkpoints_every_save_steps_when_asked(tmp_path):
    """save_steps 2: an evaluation and a checkpoint at steps 2 and 4, not 3; then the curves
    and the step count, last. No save_steps: no step checkpoints (epoch ends only)."""
    from transformers import TrainerControl, TrainerState

    from pubmedqa_gpt2.training.callbacks import (
        LiveCurves,
        StepCheckpoints,
        StepCount,
        phase_callbacks,
    )

    every_2 = phase_callbacks(2, tmp_path / "curves")
    assert [type(c) for c in every_2] == [StepCheckpoints, LiveCurves, StepCount]
    saved = [
        step
        for step in (2, 3, 4)
        if every_2[0]
        .on_step_end(None, TrainerState(global_step=step), TrainerControl())
        .should_save
    ]
    assert saved == [2, 4]
    assert [type(c) for c in phase_callbacks(None, tmp_path / "curves")] == [LiveCurves, StepCount]


def test_the_stop_flag_is_all_reduced_on_the_process_s_device(tmp_path, monkeypatch):
    """The flag is made on the process's device (`args.device`), not torch's default one:
    NCCL reduces only tensors on the process's GPU. Stood in for here by a default device
    ("meta", shapes without values) other than the process's (the CPU), and an all-reduce
    that, like NCCL, refuses a tensor on any other device; the other process sees a stop."""
    import torch
    import torch.distributed as dist
    from transformers import TrainerControl, TrainerState

    from pubmedqa_gpt2.training import callbacks
    from pubmedqa_gpt2.training.stop import STOP_FILE_ENV

    args = types.SimpleNamespace(device=torch.device("cpu"))

    def all_reduce(tensor, op=dist.ReduceOp.SUM):
        if tensor.device != args.device:
            raise RuntimeError(f"all_reduce: a tensor on {tensor.device}, not {args.device}")
        tensor.copy_(torch.maximum(tensor, torch.ones_like(tensor)))

    monkeypatch.setattr(callbacks.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(callbacks.dist, "all_reduce", all_reduce)
    monkeypatch.setenv(STOP_FILE_ENV, str(tmp_path / "stop"))  # no such file here
    stopped = callbacks.StopOnRequest()
    with torch.device("meta"):
        control = stopped.on_step_end(args, TrainerState(global_step=3), TrainerControl())
    assert control.should_training_stop and stopped.stopped_at == 3
