"""The training recipe (`pubmedqa_gpt2/training/recipe.py`): one GPU a process, claimed before
CUDA starts (GPU paths simulated on the CPU), the model made ready for training, and CUDA
out of memory as one line of advice."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch

from pubmedqa_gpt2.core import paths
from pubmedqa_gpt2.core.config import load_params
from pubmedqa_gpt2.core.errors import StageError, run_stage
from pubmedqa_gpt2.training import recipe
from pubmedqa_gpt2.training.phase import TRAIN_PHASE
from stages import train as stage

from .committed import committed_params
from .training_helpers import set_params


@pytest.mark.parametrize(
    ("visible", "expected"), [(None, "0"), ("3,5", "3"), ("GPU-a1, GPU-b2", "GPU-a1"), ("2", "2")]
)
def test_one_training_process_sees_one_gpu(workdir, tiny, monkeypatch, visible, expected):
    """With train.num_processes 1 on a machine of several GPUs, the Trainer would wrap the
    model in DataParallel (a larger batch, warmup for one device, no bf16 autocast): the
    stage restricts CUDA to one free device before anything starts it."""
    from pubmedqa_gpt2 import gpu_claims

    seen = {}
    monkeypatch.setattr(gpu_claims, "physical_gpus", lambda: ["0", "1"])
    monkeypatch.setenv(gpu_claims.LOCK_DIR_ENV, str(workdir / "locks"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible or "")  # restored after the test
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(recipe, "train", lambda params, phase: seen.update(os.environ))
    set_params(workdir, tiny())
    try:
        stage.main()
    finally:
        gpu_claims.release_gpus()
    assert seen["CUDA_VISIBLE_DEVICES"] == expected


def test_a_data_parallel_run_claims_a_gpu_per_process(workdir, tiny, monkeypatch):
    from pubmedqa_gpt2 import gpu_claims

    seen = {}
    monkeypatch.setattr(gpu_claims, "physical_gpus", lambda: ["0", "1", "2"])
    monkeypatch.setenv(gpu_claims.LOCK_DIR_ENV, str(workdir / "locks"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # restored after the test
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(recipe, "launch", lambda n, *_: seen.update(os.environ, n=n))
    set_params(workdir, tiny(num_processes=2))
    try:
        stage.main()
    finally:
        gpu_claims.release_gpus()
    assert (seen["n"], seen["CUDA_VISIBLE_DEVICES"]) == (2, "0,1")


def test_a_process_that_sees_several_gpus_is_refused(workdir, tiny, monkeypatch):
    """Should CUDA have started before the stage could restrict it, training refuses to run
    one process over several GPUs rather than silently changing the experiment."""
    from transformers import TrainingArguments

    monkeypatch.setattr(TrainingArguments, "n_gpu", property(lambda self: 2))
    set_params(workdir, tiny())
    with pytest.raises(StageError, match="sees 2 GPUs; set train.num_processes"):
        recipe.train(load_params(workdir / "params.yaml"), TRAIN_PHASE)
    assert not (workdir / paths.FINETUNED).exists()


def test_training_forward_passes_build_no_kv_cache(tiny_model_params, tokenizer):
    from pubmedqa_gpt2.model.loading import build_model

    model = build_model(tiny_model_params)
    recipe.prepare_for_training(model, tokenizer.pad_token_id)
    out = model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]]))
    assert out.past_key_values is None and out.loss is not None


OOM = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of "
    "which 1.06 GiB is free. Including non-PyTorch memory, this process has 78.12 GiB in use."
)


def test_cuda_out_of_memory_in_training_is_one_line_with_advice(workdir, tiny, monkeypatch, capsys):
    from transformers import Trainer

    def out_of_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError(OOM)

    monkeypatch.setattr(Trainer, "train", out_of_memory)
    set_params(workdir, tiny(epochs=1))
    with pytest.raises(SystemExit) as exit_info:
        run_stage(stage.main)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: CUDA out of memory, tried to allocate 2.00 GiB, 1.06 GiB free of 79.19 GiB; "
        "to fit: lower train.batch_size and raise train.gradient_accumulation_steps by the same "
        "factor, set train.gradient_checkpointing: true, set train.lora.enabled: true, or lower "
        "prepare.max_length"
    ]
    assert not (workdir / paths.FINETUNED).exists() and not TRAIN_PHASE.running_file.exists()


class _Saved:
    """A stand-in model or tokenizer: `save_pretrained` writes `<name>.txt` naming it."""

    def __init__(self, name: str, merged: _Saved | None = None):
        self.name, self.merged = name, merged

    def save_pretrained(self, out) -> None:
        (out / f"{self.name}.txt").write_text(self.name)

    def merge_and_unload(self) -> _Saved:
        return self.merged


def _finished_run(tmp_path, monkeypatch, runtime: float, lora: bool, keep: bool):
    """A Run as `fit` leaves it, with a stand-in trainer: 1000 input tokens seen in all, 400 of
    them by the checkpoint resumed from; step 2 (epoch 1) the best of two evaluations."""
    from types import SimpleNamespace

    monkeypatch.chdir(tmp_path)
    phase = replace(
        TRAIN_PHASE,
        output=tmp_path / "model",
        checkpoints=tmp_path / "checkpoints",
        metrics_file=tmp_path / "metrics.json",
        perf_file=tmp_path / "perf.json",
    )
    (phase.checkpoints / "checkpoint-2").mkdir(parents=True)
    params = committed_params({"train": {"lora": {"enabled": lora}, "keep_checkpoints": keep}})
    log_history = [
        {"loss": 2.5, "step": 1},
        {"eval_loss": 1.5, "eval_accuracy": 0.25, "step": 1, "epoch": 0.5},
        {"loss": 2.0, "step": 2},
        {"eval_loss": 1.25, "eval_accuracy": 0.5, "step": 2, "epoch": 1.0},
    ]
    state = SimpleNamespace(
        num_input_tokens_seen=1000, log_history=log_history, best_global_step=2,
        global_step=2, epoch=1.0,
    )  # fmt: skip
    trainer = SimpleNamespace(
        is_world_process_zero=lambda: True,
        state=state,
        model=_Saved("adapted", merged=_Saved("merged")),
    )
    step_count = SimpleNamespace(loop_seconds=1.23456, first_step=3, steps=7)
    run = recipe.Run(
        params=params, phase=phase, tokenizer=_Saved("tokenizer"), train_examples=[None] * 12,
        dev_examples=[None] * 6, precision="fp32", args=None, trainer=trainer,
        step_count=step_count, stop=None, resume="checkpoints/checkpoint-1", tokens_before=400,
        world_size=1, trainable=30, total=100,
    )  # fmt: skip
    return run, SimpleNamespace(metrics={"train_runtime": runtime})


def test_save_writes_the_perf_figures_of_this_run(tmp_path, monkeypatch):
    """Tokens this run: 1000 seen in all - 400 before the resume = 600; over a runtime of 7 s,
    600 / 7 = 85.714... -> 85.7 tokens/s (one decimal); loop seconds 1.23456 -> 1.23."""
    import json

    run, result = _finished_run(tmp_path, monkeypatch, runtime=7.0, lora=False, keep=False)
    recipe.save(run, result)
    perf = json.loads(run.phase.perf_file.read_text())
    ranks = perf.pop("ranks")
    assert perf == {
        "runtime_seconds": 7.0,
        "train_loop_seconds": 1.23,
        "train_tokens_per_second": 85.7,
        "train_tokens_this_run": 600,
        "resumed_from_step": 3,
        "steps_this_run": 7,
        "precision": "fp32",
        "processes": 1,
        "device": "cpu",
    }
    assert [rank["device"] for rank in ranks] == ["cpu"]
    metrics = json.loads(run.phase.metrics_file.read_text())
    assert (metrics["best_step"], metrics["dev_loss"], metrics["train_examples"]) == (2, 1.25, 12)
    # Not LoRA: the trained model itself is saved; the run is done: its checkpoints go.
    assert sorted(p.name for p in run.phase.output.glob("*.txt")) == [
        "adapted.txt",
        "tokenizer.txt",
    ]
    assert not run.phase.checkpoints.exists()


def test_save_of_a_run_too_short_to_time_has_no_token_rate(tmp_path, monkeypatch):
    """A runtime rounded to 0 s: no rate (rather than a division by zero)."""
    import json

    run, result = _finished_run(tmp_path, monkeypatch, runtime=0.0, lora=False, keep=False)
    recipe.save(run, result)
    perf = json.loads(run.phase.perf_file.read_text())
    assert (perf["runtime_seconds"], perf["train_tokens_per_second"]) == (0.0, None)


def test_save_of_a_lora_run_saves_the_merged_model_and_keeps_checkpoints_if_asked(
    tmp_path, monkeypatch
):
    run, result = _finished_run(tmp_path, monkeypatch, runtime=7.0, lora=True, keep=True)
    recipe.save(run, result)
    assert sorted(p.name for p in run.phase.output.glob("*.txt")) == ["merged.txt", "tokenizer.txt"]
    assert (run.phase.checkpoints / "checkpoint-2").is_dir()


def test_the_trainer_batches_with_the_project_s_collator(tmp_path, tiny_model_params, tokenizer):
    """Two examples of different lengths, prompt 3 + completion 2 and prompt 3 + completion 1
    tokens, in one dev batch. By hand: right-padded to 5 with the pad id; labels -100 on the
    prompt and the padding, [[-, -, -, 13, 14], [-, -, -, 23, -]]; the first labelled position
    is 3, so the head runs on the last 5 - 3 + 1 = 3 positions and the labels are cut to them."""
    from transformers import TrainingArguments

    from pubmedqa_gpt2.model.loading import build_model
    from pubmedqa_gpt2.prompt import Encoded
    from pubmedqa_gpt2.training.collator import Collator

    pad = tokenizer.pad_token_id
    examples = [Encoded([10, 11, 12], [13, 14], False), Encoded([20, 21, 22], [23], False)]
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=2, use_cpu=True, report_to=[]
    )
    cfg = committed_params({"train": {"loss_on": "completion"}}).train
    trainer = recipe.make_trainer(
        build_model(tiny_model_params), args, cfg, examples, examples, Collator(pad), [],
        tokenizer=tokenizer, label_ids=[3763, 645, 3863],
    )  # fmt: skip
    batch = next(iter(trainer.get_eval_dataloader()))
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13, 14], [20, 21, 22, 23, pad]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 13, 14], [-100, 23, -100]]
    assert batch["logits_to_keep"] == 3


def test_each_loss_setting_reaches_the_trainer_s_train_and_dev_features(
    tmp_path, tiny_model_params, tokenizer
):
    """loss_on=all: every token is a label (labels == input_ids, by the definition of the
    setting); completion: the 3 prompt tokens are -100."""
    from transformers import TrainingArguments

    from pubmedqa_gpt2.model.loading import build_model
    from pubmedqa_gpt2.prompt import Encoded
    from pubmedqa_gpt2.training.collator import Collator

    examples = [Encoded([10, 11, 12], [13, 14], False)]
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    model = build_model(tiny_model_params)
    expected = {"all": [10, 11, 12, 13, 14], "completion": [-100, -100, -100, 13, 14]}
    for loss_on, labels in expected.items():
        cfg = committed_params({"train": {"loss_on": loss_on}}).train
        trainer = recipe.make_trainer(
            model, args, cfg, examples, examples, Collator(tokenizer.pad_token_id), []
        )
        feature = {"input_ids": [10, 11, 12, 13, 14], "labels": labels}
        assert (trainer.train_dataset, trainer.eval_dataset) == ([feature], [feature]), loss_on


class _Training:
    """A stand-in trainer: `train` records its argument and whether the run's marker is there,
    then does `during` (a callable, or None)."""

    def __init__(self, marker, during=None):
        self.marker, self.during, self.seen = marker, during, {}

    def train(self, resume_from_checkpoint):
        self.seen = {"resume": resume_from_checkpoint, "marked": self.marker.is_file()}
        if self.during is not None:
            self.during()
        return "result"


def _fitting_run(tmp_path, stopped_at=None, during=None):
    from types import SimpleNamespace

    phase = replace(TRAIN_PHASE, checkpoints=tmp_path / "checkpoints")
    phase.checkpoints.mkdir()
    return recipe.Run(
        params=None, phase=phase, tokenizer=None, train_examples=[], dev_examples=[],
        precision="fp32", args=SimpleNamespace(process_index=0),
        trainer=_Training(phase.running_file, during), step_count=None,
        stop=SimpleNamespace(stopped_at=stopped_at), resume="checkpoints/checkpoint-4",
        tokens_before=0, world_size=1, trainable=1, total=1,
    )  # fmt: skip


def test_fit_resumes_from_the_run_s_checkpoint_with_a_marker_while_it_trains(tmp_path):
    run = _fitting_run(tmp_path)
    assert recipe.fit(run) == "result"
    assert run.trainer.seen == {"resume": "checkpoints/checkpoint-4", "marked": True}
    assert not run.phase.running_file.exists()


def test_fit_ends_well_when_the_marker_went_during_the_run(tmp_path):
    """Someone removed checkpoints/running.json while the run trained: nothing to remove."""
    run = _fitting_run(tmp_path)
    run.trainer.during = run.phase.running_file.unlink
    assert recipe.fit(run) == "result"


def test_fit_stopped_on_request_says_where_the_checkpoint_is_and_exits_75(tmp_path, capsys):
    """75: EX_TEMPFAIL, the stop's exit status (STOPPED_EXIT, `training/stop.py`)."""
    run = _fitting_run(tmp_path, stopped_at=6)
    with pytest.raises(SystemExit) as exit_info:
        recipe.fit(run)
    assert exit_info.value.code == 75
    assert capsys.readouterr().out == (
        f"stopped on request at step 6: checkpoint saved in {tmp_path / 'checkpoints'}, "
        "the next run resumes from it\n"
    )
    assert not run.phase.running_file.exists()


def _main_process_args(tmp_path):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[])


def test_a_run_resumes_only_from_its_own_resumable_checkpoints(workdir, capsys):
    """Seed 1 marks the (empty) checkpoints folder as its run's; its checkpoint-3 is resumed
    from; a run of seed 2 drops it; and a run of weights-only checkpoints drops its own."""
    folder = workdir / paths.CHECKPOINTS
    args = _main_process_args(workdir)

    def resume(seed, resumable=True):
        params = committed_params({"train": {"seed": seed, "resumable_checkpoints": resumable}})
        return recipe.checkpoint_to_resume(params, TRAIN_PHASE, args)

    def checkpoint_3():
        (folder / "checkpoint-3").mkdir()
        (folder / "checkpoint-3" / "trainer_state.json").write_text("{}")

    assert resume(1) is None
    checkpoint_3()
    assert resume(1) == str(paths.CHECKPOINTS / "checkpoint-3")
    capsys.readouterr()
    assert resume(2) is None
    assert capsys.readouterr().out == (
        f"{paths.CHECKPOINTS}: checkpoints of another run (params or data changed); "
        "starting afresh\n"
    )
    assert resume(1, resumable=False) is None
    checkpoint_3()
    capsys.readouterr()
    assert resume(1, resumable=False) is None
    assert capsys.readouterr().out == (
        f"{paths.CHECKPOINTS}: weights-only checkpoints (train.resumable_checkpoints: false); "
        "starting afresh\n"
    )


def test_on_several_nodes_every_process_waits_for_rank_0_to_check_checkpoints(
    tmp_path, monkeypatch, caplog
):
    """Process 2 of 4, the first of the second node: with the checkpoints on a shared file
    system it must wait for rank 0 (the only one that removes checkpoints), not go ahead as
    its node's main process; transformers logs the wait, naming the work."""
    import logging
    from types import SimpleNamespace

    import torch.distributed as dist
    from transformers import TrainingArguments

    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: 4))
    monkeypatch.setattr(TrainingArguments, "process_index", property(lambda self: 2))
    args = _main_process_args(tmp_path)
    args.distributed_state = SimpleNamespace(is_main_process=False, is_local_main_process=True)
    logged, barriers = [], []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: logged.append(record.getMessage())
    logger = logging.getLogger("transformers.training_args")
    caplog.set_level(logging.DEBUG, logger=logger.name)  # setLevel, undone after the test
    monkeypatch.setattr(logger, "handlers", [handler])
    monkeypatch.setattr(logger, "propagate", False)
    monkeypatch.setattr(dist, "barrier", lambda: barriers.append(logged[:]))
    phase = replace(TRAIN_PHASE, checkpoints=tmp_path)
    assert recipe.checkpoint_to_resume(committed_params(), phase, args) is None
    # Waited once, before the work, and only that was logged.
    assert barriers == [["2: waiting for the main process to perform checking checkpoints"]]
    assert logged == barriers[0]
