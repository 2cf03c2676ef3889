"""The training recipe (`pubmedqa_gpt2/training/recipe.py`): one GPU a process, claimed before
CUDA starts (GPU paths simulated on the CPU), the model made ready for training, and CUDA
out of memory as one line of advice."""

from __future__ import annotations

import os
import re
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
    """Tokens this run: 1000 seen in all - 400 before the resume = 600; over a runtime of
    7.00456 s (-> 7.0, two decimals), 600 / 7.00456 = 85.658... -> 85.7 tokens/s (one decimal);
    loop seconds 1.23456 -> 1.23."""
    import json

    run, result = _finished_run(tmp_path, monkeypatch, runtime=7.00456, lora=False, keep=False)
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


# ---- run_phase: the processes of a phase, named by its own section ----


def _recorded_run_phase(monkeypatch, params, phase):
    """run_phase with stand-ins for what it starts (GPU claims, the relaunch, the training in
    this process), recording each call; returns the calls made."""
    calls = []
    monkeypatch.setattr(recipe, "claim_gpus", lambda n, **kw: calls.append(("claim", n, kw)))
    monkeypatch.setattr(
        recipe, "launch", lambda n, module, section="train": calls.append(("launch", n, module))
    )
    monkeypatch.setattr(recipe, "train", lambda p, ph: calls.append(("train", p, ph)))
    recipe.run_phase(params, phase)
    return calls


def test_a_launcher_s_other_process_count_is_refused_naming_the_phase_s_setting(monkeypatch):
    """Started by a launcher (WORLD_SIZE set) as 3 processes while pretrain.num_processes is
    2: refused, naming the setting of the phase's own section and both counts."""
    from pubmedqa_gpt2.training.phase import PRETRAIN_PHASE

    monkeypatch.setenv("WORLD_SIZE", "3")
    params = committed_params({"train": {"num_processes": 2}})
    with pytest.raises(StageError) as error:
        _recorded_run_phase(monkeypatch, params, PRETRAIN_PHASE)
    assert str(error.value) == (
        "pretrain.num_processes: is 2 but the launcher started 3 processes; set it to match"
    )


def test_a_launched_process_trains_in_this_process_claiming_and_launching_nothing(monkeypatch):
    """WORLD_SIZE 2 == num_processes 2: this is one of the launched processes; the launcher
    gave it its GPU, so it claims none and relaunches nothing."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    params = committed_params({"train": {"num_processes": 2}})
    calls = _recorded_run_phase(monkeypatch, params, TRAIN_PHASE)
    assert calls == [("train", params, TRAIN_PHASE)]


def _claimable_gpus(monkeypatch, tmp_path, gpus):
    from pubmedqa_gpt2 import gpu_claims

    monkeypatch.setattr(gpu_claims, "physical_gpus", lambda: gpus)
    monkeypatch.setenv(gpu_claims.LOCK_DIR_ENV, str(tmp_path / "locks"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # restored after the test
    for name in ("CUDA_VISIBLE_DEVICES", "WORLD_SIZE", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    return gpu_claims


def test_too_few_gpus_for_a_phase_name_the_phase_s_setting(tmp_path, monkeypatch):
    """pretrain.num_processes 2 on a machine of one GPU ("0"): refused by the claim, which
    names the setting of the pretrain section (not train's)."""
    from pubmedqa_gpt2.training.phase import PRETRAIN_PHASE

    gpu_claims = _claimable_gpus(monkeypatch, tmp_path, ["0"])
    params = committed_params({"train": {"num_processes": 2}})
    try:
        with pytest.raises(StageError) as error:
            recipe.run_phase(params, PRETRAIN_PHASE)
    finally:
        gpu_claims.release_gpus()
    assert str(error.value) == "pretrain.num_processes: 2 GPUs asked for, 1 visible (0)"


def test_a_data_parallel_phase_is_relaunched_as_its_own_stage(tmp_path, monkeypatch):
    """Phase 1 in 2 processes on a machine of 3 GPUs: the first 2 claimed, then the pretrain
    stage's module relaunched in 2 processes, its messages naming the pretrain section."""
    from pubmedqa_gpt2.training.phase import PRETRAIN_PHASE

    gpu_claims = _claimable_gpus(monkeypatch, tmp_path, ["0", "1", "2"])
    seen = []

    def launch(n, module, section="train", environ=None):
        seen.append((n, module, section, os.environ["CUDA_VISIBLE_DEVICES"]))

    monkeypatch.setattr(recipe, "launch", launch)
    try:
        recipe.run_phase(committed_params({"train": {"num_processes": 2}}), PRETRAIN_PHASE)
    finally:
        gpu_claims.release_gpus()
    assert seen == [(2, "stages.pretrain", "pretrain", "0,1")]


# ---- setup: what it builds and passes along ----

# The tiny GPT-2 of the `tiny` fixture, counted by hand (vocabulary 50257, 1024 positions,
# n_embd 64, 2 layers, the head tied to the embedding): wte 50257 x 64 = 3,216,448;
# wpe 1024 x 64 = 65,536; a layer: ln_1 128 + c_attn 64 x 192 + 192 = 12,480 + attn c_proj
# 64 x 64 + 64 = 4,160 + ln_2 128 + c_fc 64 x 256 + 256 = 16,640 + mlp c_proj 256 x 64 + 64 =
# 16,448 -> 49,984, x 2 = 99,968; ln_f 128. In all 3,382,080.
TINY_PARAMETERS = 3_382_080
GPT2_EOS = 50256  # <|endoftext|>, GPT-2's only special token: the tokenizer's pad token here


def _pretrain_phase():
    """Phase 1's files, training on the workdir's train split (the section: `pretrain`)."""
    from pubmedqa_gpt2.training.phase import PRETRAIN_PHASE

    return replace(PRETRAIN_PHASE, train_file=paths.TRAIN_FILE)


def test_setup_of_a_phase_reports_resumes_and_builds_its_trainer(
    workdir, tiny, monkeypatch, capsys
):
    """Phase 1 (section pretrain) with step checkpoints every 2 steps, whose last run was
    killed (its marker left, its pid gone) after checkpoint-3, which had seen 500 tokens."""
    import json
    import subprocess

    from pubmedqa_gpt2.training.callbacks import StepCheckpoints, StepCount

    set_params(workdir, tiny(save_steps=2, resumable_checkpoints=True))
    params, phase = load_params(workdir / "params.yaml"), _pretrain_phase()
    assert recipe.checkpoint_to_resume(params, phase, _main_process_args(workdir)) is None
    (phase.checkpoints / "checkpoint-3").mkdir()
    (phase.checkpoints / "checkpoint-3" / "trainer_state.json").write_text(
        json.dumps({"num_input_tokens_seen": 500})
    )
    dead = subprocess.Popen(["true"])
    dead.wait()  # a process that existed and is gone, as a SIGKILLed run is
    phase.running_file.write_text(json.dumps({"pid": dead.pid}))
    lines = []
    real_memory_line = recipe.memory_line

    def memory_line(total, trained, cuda, section="train"):
        lines.append((total, trained, cuda, section))
        return real_memory_line(total, trained, cuda, section)

    monkeypatch.setattr(recipe, "memory_line", memory_line)
    capsys.readouterr()

    run = recipe.setup(params, phase)

    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        f"the last training run here (pid {dead.pid}) did not finish; if it was killed by "
        "signal 9: probably out of memory (the kernel's out-of-memory killer sends it); to fit: "
        "lower pretrain.batch_size and raise pretrain.gradient_accumulation_steps by the same "
        "factor, set pretrain.gradient_checkpointing: true, set pretrain.lora.enabled: true, "
        "or lower prepare.max_length"
    )
    assert (
        out[1].startswith("weights, gradients and AdamW state need ")
        and (f"({TINY_PARAMETERS:,} parameters, {TINY_PARAMETERS:,} trained), before activations")
        in out[1]
    )
    assert out[2] == f"resuming from {phase.checkpoints / 'checkpoint-3'}"
    assert lines == [(TINY_PARAMETERS, TINY_PARAMETERS, False, "pretrain")]
    assert (run.resume, run.tokens_before) == (str(phase.checkpoints / "checkpoint-3"), 500)
    assert (run.world_size, run.trainable, run.total) == (1, TINY_PARAMETERS, TINY_PARAMETERS)
    assert run.args.output_dir == str(phase.checkpoints)
    model = run.trainer.model
    assert model.config.pad_token_id == model.generation_config.pad_token_id == GPT2_EOS
    callbacks = run.trainer.callback_handler.callbacks
    assert [cb.save_steps for cb in callbacks if isinstance(cb, StepCheckpoints)] == [2]
    assert isinstance(run.step_count, StepCount) and run.step_count in callbacks
    assert run.stop in callbacks
    # The project's collator: right padding with the pad id, the head cut to the completion.
    batch = next(iter(run.trainer.get_eval_dataloader()))
    assert {"input_ids", "attention_mask", "labels", "logits_to_keep"} <= set(batch)
    assert GPT2_EOS in batch["input_ids"][:, -1].tolist()  # dev examples of different lengths


def test_setup_passes_the_process_count_and_the_phase_s_files_to_the_run_s_arguments(
    workdir, tiny, monkeypatch
):
    """Process 1 of 2 (WORLD_SIZE 2) of phase 1: the Trainer's arguments are those of 12
    training examples over 2 processes, checkpointed in phase 1's folder, their errors naming
    the pretrain section. A stand-in records them (real ones would start the process group)."""

    class Recorded(Exception):
        pass

    seen = []

    def run_arguments(train, n_examples, world_size, output_dir, section="train"):
        seen.append((train, n_examples, world_size, output_dir, section))
        raise Recorded

    set_params(workdir, tiny())
    params, phase = load_params(workdir / "params.yaml"), _pretrain_phase()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(recipe, "run_arguments", run_arguments)
    with pytest.raises(Recorded):
        recipe.setup(params, phase)
    assert seen == [(params.train, 12, 2, phase.checkpoints, "pretrain")]


@pytest.mark.parametrize("gpus", [1, 2])
def test_setup_refuses_only_a_process_of_several_gpus(workdir, tiny, monkeypatch, gpus):
    """One GPU a process goes on (to the starting model, a stand-in that stops it there);
    two are refused, the message naming the phase's setting and the way out."""
    from transformers import TrainingArguments

    class Reached(Exception):
        pass

    def starting_model(params, phase):
        raise Reached

    monkeypatch.setattr(TrainingArguments, "n_gpu", property(lambda self: gpus))
    monkeypatch.setattr(recipe, "starting_model", starting_model)
    set_params(workdir, tiny())
    params = load_params(workdir / "params.yaml")
    if gpus == 1:
        with pytest.raises(Reached):
            recipe.setup(params, _pretrain_phase())
        return
    with pytest.raises(StageError) as error:
        recipe.setup(params, _pretrain_phase())
    assert str(error.value) == (
        "this process sees 2 GPUs; set pretrain.num_processes to use several (one process per "
        "GPU), or CUDA_VISIBLE_DEVICES to pick one"
    )


@pytest.mark.parametrize(
    ("max_examples", "named"),
    [(None, "data/prepared/train.parquet"), (0, "data/prepared/dev.parquet")],
)
def test_setup_names_the_split_too_long_for_the_model(workdir, tiny, max_examples, named):
    """A model of 16 positions: every prepared example (a question, two context sentences and
    an answer: more than 16 tokens) is too long. With no training example (max_examples 0)
    the train split passes and the dev split is the one named."""
    params = tiny()
    overrides = {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 16}
    params["model"] = params["model"] | {"overrides": overrides}
    set_params(workdir, params)
    phase = replace(_pretrain_phase(), max_examples=max_examples)
    with pytest.raises(StageError) as err:
        recipe.setup(load_params(workdir / "params.yaml"), phase)
    message = str(err.value)
    assert re.match(rf"^{named}: row 0: \d+ tokens, over the model's 16 positions; ", message)
    assert message.endswith("; lower prepare.max_length")


def test_setup_of_a_lora_run_trains_the_adapters_only(workdir, tiny, capsys):
    """LoRA of rank 16 (params.yaml) on c_attn, c_proj and c_fc of the tiny GPT-2, by hand:
    A is r x in, B is out x r: a layer has c_attn 16 x (64 + 192) = 4,096, attn c_proj
    16 x (64 + 64) = 2,048, c_fc 16 x (64 + 256) = 5,120, mlp c_proj 16 x (256 + 64) = 5,120
    -> 16,384; 2 layers: 32,768 trained, on top of the 3,382,080 frozen."""
    set_params(workdir, tiny(lora={"enabled": True}))
    run = recipe.setup(load_params(workdir / "params.yaml"), TRAIN_PHASE)
    assert (run.trainable, run.total) == (32_768, TINY_PARAMETERS + 32_768)
    trained = [name for name, p in run.trainer.model.named_parameters() if p.requires_grad]
    assert len(trained) == 2 * 4 * 2 and all("lora_" in name for name in trained)
    assert f"({TINY_PARAMETERS + 32_768:,} parameters, 32,768 trained)" in capsys.readouterr().out


def _saved_bf16_model(folder, tiny_model_params):
    """The tiny GPT-2 saved in bf16 (as a bf16 run would save it); its weights, in fp32."""
    from pubmedqa_gpt2.model.loading import build_model

    model = build_model(tiny_model_params).to(torch.bfloat16)
    model.save_pretrained(folder)
    return {name: p.float() for name, p in model.named_parameters()}


@pytest.mark.parametrize("start", ["phase 1 model", "base model"])
def test_setup_starts_from_the_saved_model_in_fp32(workdir, tiny, tiny_model_params, start):
    """Whether the saved model is phase 1's (phase.start_from) or the base model itself
    (model.init: pretrained from that folder), training starts from its weights in fp32 (the
    master weights), not in the bf16 it was saved in."""
    saved = workdir / "saved"
    weights = _saved_bf16_model(saved, tiny_model_params)
    params = tiny()
    phase = TRAIN_PHASE
    if start == "phase 1 model":
        phase = replace(TRAIN_PHASE, start_from=saved)
    else:
        pretrained = {"name": str(saved), "init": "pretrained", "overrides": {}}
        params["model"] = params["model"] | pretrained
    set_params(workdir, params)
    run = recipe.setup(load_params(workdir / "params.yaml"), phase)
    model = run.trainer.model
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert all(torch.equal(p, weights[name]) for name, p in model.named_parameters())


def test_a_phase_without_its_starting_model_says_which_stage_makes_it(tmp_path, tiny_model_params):
    params = committed_params({"model": tiny_model_params.model_dump()})
    phase = replace(TRAIN_PHASE, start_from=tmp_path / "phase1")
    with pytest.raises(StageError) as error:
        recipe.starting_model(params, phase)
    assert str(error.value) == (
        f"{tmp_path / 'phase1'}: no model there; run the pretrain stage first (dvc repro pretrain)"
    )


def test_a_phase_1_model_that_cannot_be_loaded_is_named_so(tmp_path, tiny_model_params):
    """A config.json and no weights (a copy cut short): the error names phase 1's model."""
    from pubmedqa_gpt2.model.loading import random_config

    random_config(tiny_model_params).save_pretrained(tmp_path / "phase1")
    params = committed_params({"model": tiny_model_params.model_dump()})
    phase = replace(TRAIN_PHASE, start_from=tmp_path / "phase1")
    with pytest.raises(StageError) as error:
        recipe.starting_model(params, phase)
    assert str(error.value).startswith(
        f"phase 1 model: cannot load a model from {str(tmp_path / 'phase1')!r}: "
    )


def test_a_model_ready_for_training_pads_with_the_pad_id_and_names_its_loss(
    tiny_model_params, tokenizer, monkeypatch
):
    """The pad id (GPT-2's <|endoftext|>, 50256, as the tokenizer pads) on the config and the
    generation config; the loss named, so transformers picks it without its warning
    "`loss_type=None` was set in the config but it is unrecognized"."""
    from transformers import modeling_utils
    from transformers.utils import logging as hf_logging

    from pubmedqa_gpt2.model.loading import build_model

    warned = []
    hf_logging.warning_once.cache_clear()  # a warning given before in this process: again
    monkeypatch.setattr(modeling_utils.logger, "warning", lambda msg, *a, **k: warned.append(msg))
    model = build_model(tiny_model_params)
    recipe.prepare_for_training(model, tokenizer.pad_token_id)
    assert model.config.pad_token_id == model.generation_config.pad_token_id == GPT2_EOS
    out = model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]]))
    assert out.loss is not None
    assert not [w for w in warned if "loss_type" in w]
    assert model.loss_type == "ForCausalLM"


def test_a_phase_resumes_its_own_checkpoint_and_names_its_own_setting(workdir, capsys):
    """Phase 1 (section pretrain): its checkpoint-3 is resumed from, and said so; with
    weights-only checkpoints they are dropped, naming pretrain's setting."""
    phase, args = _pretrain_phase(), _main_process_args(workdir)

    def resume(resumable):
        params = committed_params({"train": {"resumable_checkpoints": resumable}})
        return recipe.checkpoint_to_resume(params, phase, args)

    def checkpoint_3():
        (phase.checkpoints / "checkpoint-3").mkdir()
        (phase.checkpoints / "checkpoint-3" / "trainer_state.json").write_text("{}")

    assert resume(True) is None
    checkpoint_3()
    capsys.readouterr()
    assert resume(True) == str(phase.checkpoints / "checkpoint-3")
    assert capsys.readouterr().out == f"resuming from {phase.checkpoints / 'checkpoint-3'}\n"
    assert resume(False) is None  # another run's (the params changed): dropped
    checkpoint_3()
    capsys.readouterr()
    assert resume(False) is None
    assert capsys.readouterr().out == (
        f"{phase.checkpoints}: weights-only checkpoints (pretrain.resumable_checkpoints: false); "
        "starting afresh\n"
    )
