"""The training recipe (`pubmedqa_gpt2/training/recipe.py`): one GPU a process, claimed before
CUDA starts (GPU paths simulated on the CPU), the model made ready for training, and CUDA
out of memory as one line of advice."""

from __future__ import annotations

import os

import pytest
import torch

from pubmedqa_gpt2.core import paths
from pubmedqa_gpt2.core.config import load_params
from pubmedqa_gpt2.core.errors import StageError, run_stage
from pubmedqa_gpt2.training import recipe
from pubmedqa_gpt2.training.phase import TRAIN_PHASE
from stages import train as stage

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
