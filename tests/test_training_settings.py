"""A run's settings on this machine: optimizer steps, warmup, precision
(`pubmedqa_gpt2/training/settings.py`)."""

from __future__ import annotations

import pytest
import torch

from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.training.settings import optimizer_steps, resolve_precision, run_arguments

from .committed import committed_params


@pytest.mark.parametrize(
    ("n", "batch", "accum", "world", "epochs", "steps"),
    [(450, 8, 1, 1, 3, 171), (450, 8, 4, 1, 1, 15), (450, 8, 1, 2, 1, 29), (3, 8, 4, 1, 2, 2)],
)
def test_optimizer_steps(n, batch, accum, world, epochs, steps):
    changes = {"batch_size": batch, "gradient_accumulation_steps": accum, "epochs": epochs}
    train = committed_params({"train": changes}).train
    assert optimizer_steps(n, train, world) == steps


def test_precision_resolution():
    assert resolve_precision("auto", cuda=True, bf16_supported=True) == "bf16"
    assert resolve_precision("auto", cuda=True, bf16_supported=False) == "fp16"
    assert resolve_precision("auto", cuda=False, bf16_supported=False) == "fp32"
    with pytest.raises(StageError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", cuda=False, bf16_supported=False)


@pytest.mark.parametrize(
    ("choice", "cuda", "bf16_supported"),
    [
        ("fp32", False, False), ("fp32", True, False), ("bf16", False, False),
        ("bf16", True, True), ("fp16", True, False), ("fp16", True, True),
    ],
)  # fmt: skip
def test_an_explicit_precision_the_device_can_run_is_kept(choice, cuda, bf16_supported):
    """fp32 runs anywhere, bf16 on a CPU or a GPU that has it, fp16 on any GPU."""
    assert resolve_precision(choice, cuda, bf16_supported) == choice


def test_a_precision_the_device_cannot_run_is_refused_naming_the_setting():
    """The section defaults to `train`."""
    with pytest.raises(StageError) as error:
        resolve_precision("bf16", cuda=True, bf16_supported=False)
    assert str(error.value) == "train.precision: this GPU has no bf16; use auto, fp16 or fp32"
    with pytest.raises(StageError) as error:
        resolve_precision("fp16", cuda=False, bf16_supported=True)
    assert str(error.value) == "train.precision: fp16 needs a CUDA GPU; use auto, bf16 or fp32"


@pytest.mark.parametrize(
    ("world", "ratio", "warmup"),
    # 450 examples, batch 8, 1 epoch: 57 optimizer steps in one process, 29 in two (225 each),
    # 15 in four (113 each); warmup is the ratio of those, rounded up.
    [(1, 0.1, 6), (2, 0.1, 3), (4, 0.1, 2), (2, 0.0, 0), (2, 1.0, 29), (1, 0.06, 4)],
)
def test_warmup_is_a_share_of_the_whole_run_s_optimizer_steps(tmp_path, world, ratio, warmup):
    changes = {"batch_size": 8, "gradient_accumulation_steps": 1, "epochs": 1}
    train = committed_params({"train": changes | {"warmup_ratio": ratio}}).train
    _, args = run_arguments(train, 450, world, tmp_path)
    assert args.warmup_steps == warmup


def test_older_transformers_get_activation_checkpointing_under_its_old_name(monkeypatch):
    """A transformers whose TrainingArguments has no `activation_checkpointing` field (the
    name recent ones brought in) is asked by the old one, `gradient_checkpointing`."""
    import dataclasses

    from pubmedqa_gpt2.training import settings

    real = dataclasses.fields
    recent = settings.checkpointing_arguments()
    assert recent == {
        "activation_checkpointing": True,
        "activation_checkpointing_kwargs": {"use_reentrant": False},
    }
    monkeypatch.setattr(
        settings.dataclasses,
        "fields",
        lambda cls: [f for f in real(cls) if f.name != "activation_checkpointing"],
    )
    assert settings.checkpointing_arguments() == {
        "gradient_checkpointing": True,
        "gradient_checkpointing_kwargs": {"use_reentrant": False},
    }


def test_activation_checkpointing_is_asked_for_by_the_name_transformers_knows(tmp_path):
    """On when train.gradient_checkpointing is, off otherwise, and without the deprecation
    warning recent transformers prints for the old argument name."""
    import warnings

    from pubmedqa_gpt2.training.settings import training_arguments

    for on in (True, False):
        train = committed_params({"train": {"gradient_checkpointing": on}}).train
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            args = training_arguments(train, "fp32", 0, cuda=False, output_dir=tmp_path)
        assert args.gradient_checkpointing is on  # transformers mirrors the two names
        assert not [w for w in caught if "checkpointing" in str(w.message)]
    train = committed_params({"train": {"gradient_checkpointing": True}}).train
    args = training_arguments(train, "fp32", 0, cuda=False, output_dir=tmp_path)
    assert args.gradient_checkpointing_kwargs == {"use_reentrant": False}


def test_train_and_evaluate_refuse_emulated_bf16(monkeypatch):
    """A V100 or T4 runs bf16 only by emulation, slower than fp16: train, evaluate and the
    CLI all pick fp16 there, through the same function."""
    from pubmedqa_gpt2.model.loading import gpu_has_bf16, inference_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # torch's own answer on such a card: yes with emulation, no without.
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation
    )
    assert not gpu_has_bf16()
    assert inference_dtype(torch.device("cuda")) == torch.float16
    assert resolve_precision("auto", True, gpu_has_bf16()) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert inference_dtype(torch.device("cuda")) == torch.bfloat16
