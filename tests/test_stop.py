"""A run stopped on request (a SLURM task's warning signal: the stop file) checkpoints at the
next optimizer step, exits with STOPPED_EXIT and saves nothing else; the next run resumes
from that checkpoint and ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file

from pubmedqa_gpt2.core import paths
from pubmedqa_gpt2.training.checkpoints import STATE_FILE
from pubmedqa_gpt2.training.stop import STOP_FILE_ENV, STOPPED_EXIT, stop_requested
from pubmedqa_gpt2.training.trainer import DecisionTrainer
from stages import train as stage

from .conftest import needs_tokenizer
from .training_helpers import read_metrics, read_perf, set_params

pytestmark = needs_tokenizer


def test_stop_requested_only_when_the_named_file_exists(tmp_path):
    flag = tmp_path / "stop"
    assert not stop_requested({})
    assert not stop_requested({STOP_FILE_ENV: str(flag)})
    flag.touch()
    assert stop_requested({STOP_FILE_ENV: str(flag)})
    assert not stop_requested({STOP_FILE_ENV: ""})


def outputs(folder) -> dict:
    weights = load_file(folder / paths.FINETUNED / "model.safetensors")
    return {"metrics": read_metrics(folder), "weights": weights}


def test_a_stopped_run_resumes_to_the_uninterrupted_run_s_metrics_and_weights(
    workdir,
    tiny,
    monkeypatch,
    capsys,
):
    # 12 examples, batch 4, 2 epochs: 6 steps, a dev evaluation after steps 3 and 6. GPT-2's
    # dropout draws random numbers at every step, so a resumed run that restored another
    # random state, or trained on other batches, ends elsewhere.
    set_params(workdir, tiny(epochs=2, resumable_checkpoints=True))
    stage.main()
    whole = outputs(workdir)
    shutil.rmtree(workdir / paths.FINETUNED)
    for path in (paths.TRAIN_METRICS, paths.TRAIN_PERF):
        (workdir / path).unlink()

    flag = workdir / "stop"
    flag.touch()  # asked before training starts: it stops after its first optimizer step
    monkeypatch.setenv(STOP_FILE_ENV, str(flag))
    # Stopping is all a preempted job has time for: one checkpoint, no dev evaluation.
    calls = {"evaluate": 0, "_save_checkpoint": 0}
    for name in calls:
        real = getattr(DecisionTrainer, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(DecisionTrainer, name, counted)
    with pytest.raises(SystemExit) as stopped:
        stage.main()
    assert stopped.value.code == STOPPED_EXIT
    assert calls == {"evaluate": 0, "_save_checkpoint": 1}
    assert "stopped on request at step 1" in capsys.readouterr().out
    checkpoints = sorted(p.name for p in (workdir / paths.CHECKPOINTS).glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-1"]
    state = json.loads((workdir / paths.CHECKPOINTS / "checkpoint-1" / STATE_FILE).read_text())
    assert state["global_step"] == 1
    # No dev evaluation at the stop: the Trainer would end the cut epoch as a whole one.
    assert not any("eval_loss" in entry for entry in state["log_history"])
    assert not (workdir / paths.FINETUNED).exists() and not (workdir / paths.TRAIN_METRICS).exists()

    flag.unlink()
    stage.main()
    assert "resuming from models/checkpoints/checkpoint-1" in capsys.readouterr().out
    perf = read_perf(workdir)
    assert (perf["resumed_from_step"], perf["steps_this_run"]) == (1, 5)
    resumed = outputs(workdir)
    assert resumed["metrics"] == whole["metrics"]  # exactly: same batches, same dropout
    for key, value in whole["weights"].items():
        assert resumed["weights"][key].equal(value), key


def test_with_a_process_group_the_request_goes_through_an_all_reduce(tmp_path, monkeypatch):
    """Under torch.distributed (here a gloo group of one process) the flag is all-reduced, so
    that every process stops at the same step: without a request none stops, with one all do."""
    import types

    import torch
    import torch.distributed as dist
    from transformers import TrainerControl, TrainerState

    from pubmedqa_gpt2.training.callbacks import StopOnRequest

    stop_file = tmp_path / "stop"
    monkeypatch.setenv(STOP_FILE_ENV, str(stop_file))
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        args = types.SimpleNamespace(device=torch.device("cpu"))
        state = TrainerState(global_step=4)
        callback = StopOnRequest()
        control = callback.on_step_end(args, state, TrainerControl())
        assert not control.should_training_stop and callback.stopped_at is None
        stop_file.touch()
        control = callback.on_step_end(args, state, TrainerControl())
        assert control.should_training_stop and control.should_save
        assert callback.stopped_at == 4
        # and every process's device figures are gathered, in rank order
        from pubmedqa_gpt2.training.run_figures import gather_from_ranks

        assert gather_from_ranks({"device": "cpu", "rank": 0}) == [{"device": "cpu", "rank": 0}]
    finally:
        dist.destroy_process_group()
