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


# Each setting differs from params.yaml's value and from TrainingArguments' own default, so a
# setting that is dropped or swapped for another shows.
DISTINCT = {
    "epochs": 5,
    "learning_rate": 3.0e-4,
    "lr_scheduler": "cosine",
    "weight_decay": 0.01,
    "batch_size": 4,
    "eval_batch_size": 12,
    "gradient_accumulation_steps": 3,
    "max_grad_norm": 0.5,
    "seed": 7,
    "logging_steps": 9,
}


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("num_train_epochs", 5), ("learning_rate", 3.0e-4), ("lr_scheduler_type", "cosine"),
        ("warmup_steps", 4), ("weight_decay", 0.01), ("per_device_train_batch_size", 4),
        ("per_device_eval_batch_size", 12), ("gradient_accumulation_steps", 3),
        ("max_grad_norm", 0.5), ("seed", 7), ("data_seed", 7), ("logging_steps", 9),
    ],
)  # fmt: skip
def test_each_training_setting_becomes_its_trainer_argument(tmp_path, field, expected):
    """The DISTINCT values above, each where the Trainer reads it: train.seed seeds both the
    model (seed) and the data order (data_seed); warmup_steps is the one passed (4)."""
    from pubmedqa_gpt2.training.settings import training_arguments

    train = committed_params({"train": DISTINCT}).train
    args = training_arguments(train, "fp32", 4, cuda=False, output_dir=tmp_path)
    assert getattr(args, field) == expected
    assert args.output_dir == str(tmp_path)


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("eval_strategy", "epoch"), ("save_strategy", "epoch"), ("logging_strategy", "steps"),
        ("load_best_model_at_end", True), ("save_total_limit", 2), ("label_names", ["labels"]),
        ("prediction_loss_only", True), ("report_to", []), ("ddp_find_unused_parameters", False),
        ("dataloader_num_workers", 0), ("train_sampling_strategy", "group_by_length"),
        ("include_num_input_tokens_seen", "non_padding"),
    ],
)  # fmt: skip
def test_the_trainer_arguments_no_setting_changes(tmp_path, field, expected):
    """A dev evaluation and a checkpoint each epoch, the best one loaded at the end, the last
    and the best kept (2); the loss alone out of the dev pass (never the logits); no reporting
    integration (transformers turns "none" into []); DDP told every parameter is used; data
    loaded in the process; batches grouped by length; the tokens seen counted without padding.
    `== expected` also tells None from False."""
    from pubmedqa_gpt2.training.settings import training_arguments

    args = training_arguments(committed_params().train, "fp32", 0, False, tmp_path)
    assert getattr(args, field) == expected


@pytest.mark.parametrize(
    ("precision", "bf16", "fp16"),
    [("fp32", False, False), ("bf16", True, False), ("fp16", False, True)],
)
def test_the_resolved_precision_sets_exactly_its_own_flag(tmp_path, precision, bf16, fp16):
    """fp32: neither mixed-precision flag; bf16 and fp16: that one alone (TrainingArguments
    takes both on a CPU-only run without complaint)."""
    from pubmedqa_gpt2.training.settings import training_arguments

    args = training_arguments(committed_params().train, precision, 0, False, tmp_path)
    assert (args.bf16, args.fp16) == (bf16, fp16)


@pytest.mark.parametrize("cuda", [False, True])
def test_a_run_without_cuda_is_told_to_use_the_cpu(tmp_path, cuda):
    """use_cpu is `not cuda`: True on a machine without CUDA, False where there is a GPU."""
    from pubmedqa_gpt2.training.settings import training_arguments

    args = training_arguments(committed_params().train, "fp32", 0, cuda, tmp_path)
    assert args.use_cpu == (not cuda)


@pytest.mark.parametrize(
    ("best_metric", "metric", "greater"),
    [("dev_loss", "eval_loss", False), ("dev_accuracy", "eval_accuracy", True)],
)
def test_the_best_epoch_is_picked_by_the_dev_figure_asked_for(
    tmp_path, best_metric, metric, greater
):
    """The Trainer names the dev loss eval_loss and the decision accuracy (the compute_metrics
    key `accuracy`) eval_accuracy; lower loss is better, higher accuracy is."""
    from pubmedqa_gpt2.training.settings import training_arguments

    train = committed_params({"train": {"best_metric": best_metric}}).train
    args = training_arguments(train, "fp32", 0, False, tmp_path)
    assert (args.metric_for_best_model, args.greater_is_better) == (metric, greater)


@pytest.mark.parametrize(("resumable", "weights_only"), [(False, True), (True, False)])
def test_checkpoints_keep_the_optimizer_state_only_when_resumable(
    tmp_path, resumable, weights_only
):
    """save_only_model is `not train.resumable_checkpoints`."""
    from pubmedqa_gpt2.training.settings import training_arguments

    train = committed_params({"train": {"resumable_checkpoints": resumable}}).train
    args = training_arguments(train, "fp32", 0, False, tmp_path)
    assert args.save_only_model == weights_only


def test_run_arguments_names_the_section_of_a_precision_the_machine_cannot_run(
    monkeypatch, tmp_path
):
    """fp16 on a machine without CUDA is refused; the section defaults to `train`, phase 1
    passes `pretrain`."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    train = committed_params({"train": {"precision": "fp16"}}).train
    message = "{}.precision: fp16 needs a CUDA GPU; use auto, bf16 or fp32"
    with pytest.raises(StageError) as error:
        run_arguments(train, 450, 1, tmp_path)
    assert str(error.value) == message.format("train")
    with pytest.raises(StageError) as error:
        run_arguments(train, 450, 1, tmp_path, section="pretrain")
    assert str(error.value) == message.format("pretrain")


def test_run_arguments_on_a_cpu_keeps_the_precision_asked_for(monkeypatch, tmp_path):
    """bf16 runs on a CPU: it comes back as the precision and as the bf16 flag, with use_cpu
    and the output folder given."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    train = committed_params({"train": {"precision": "bf16"}}).train
    precision, args = run_arguments(train, 450, 1, tmp_path)
    assert precision == "bf16"
    assert (args.bf16, args.fp16, args.use_cpu) == (True, False, True)
    assert args.output_dir == str(tmp_path)


@pytest.mark.parametrize(("native_bf16", "precision"), [(True, "bf16"), (False, "fp16")])
def test_run_arguments_on_a_gpu_resolve_auto_by_its_bf16(
    monkeypatch, tmp_path, native_bf16, precision
):
    """On a GPU (faked: torch says CUDA is there, with or without native bf16) auto is bf16
    where the GPU computes it natively, else fp16, and the Trainer is not told to use the CPU.
    TrainingArguments itself would set the fake GPU up, so what it is given is recorded."""
    from pubmedqa_gpt2.training import settings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: native_bf16
    )
    monkeypatch.setattr(settings, "TrainingArguments", lambda **kwargs: kwargs)
    train = committed_params({"train": {"precision": "auto"}}).train
    resolved, kwargs = settings.run_arguments(train, 450, 1, tmp_path)
    assert resolved == precision
    assert (kwargs["bf16"], kwargs["fp16"]) == (precision == "bf16", precision == "fp16")
    assert kwargs["use_cpu"] is False
    assert kwargs["output_dir"] == str(tmp_path)
