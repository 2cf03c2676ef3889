"""A run's settings on this machine: precision, warmup and the Trainer's arguments, every one
of them from the phase's training params."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from transformers import TrainingArguments

from pubmedqa_gpt2.core.config import TrainParams
from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.model.loading import gpu_has_bf16


def optimizer_steps(n_examples: int, train: TrainParams, world_size: int) -> int:
    """Optimizer steps of the whole run, counted as the Trainer counts them."""
    per_process = math.ceil(n_examples / world_size)
    batches = math.ceil(per_process / train.batch_size)
    return train.epochs * max(math.ceil(batches / train.gradient_accumulation_steps), 1)


def resolve_precision(choice: str, cuda: bool, bf16_supported: bool, section: str = "train") -> str:
    """`auto` is bf16 where the GPU has it, else fp16 on a GPU, else fp32 (CPU). `section`:
    the params section the choice came from, named in the error."""
    if choice == "auto":
        return "bf16" if cuda and bf16_supported else "fp16" if cuda else "fp32"
    if choice == "fp16" and not cuda:
        raise StageError(f"{section}.precision: fp16 needs a CUDA GPU; use auto, bf16 or fp32")
    if choice == "bf16" and cuda and not bf16_supported:
        raise StageError(f"{section}.precision: this GPU has no bf16; use auto, fp16 or fp32")
    return choice


def checkpointing_arguments() -> dict:
    """TrainingArguments that turn activation checkpointing on, under the name this version of
    transformers has: recent ones renamed `gradient_checkpointing` to
    `activation_checkpointing` and warn on the old name; older ones know only the old name."""
    names = {field.name for field in dataclasses.fields(TrainingArguments)}
    name = (
        "activation_checkpointing"
        if "activation_checkpointing" in names
        else "gradient_checkpointing"
    )
    return {name: True, f"{name}_kwargs": {"use_reentrant": False}}


def training_arguments(
    train: TrainParams,
    precision: str,
    warmup_steps: int,
    cuda: bool,
    output_dir: Path,
) -> TrainingArguments:
    """The Trainer's arguments, every one of them from `train` params."""
    greater = train.best_metric == "dev_accuracy"
    checkpointing = checkpointing_arguments() if train.gradient_checkpointing else {}
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=train.epochs,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=warmup_steps,
        weight_decay=train.weight_decay,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.eval_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        max_grad_norm=train.max_grad_norm,
        seed=train.seed,
        data_seed=train.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not cuda,
        **checkpointing,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="steps",
        logging_steps=train.logging_steps,
        load_best_model_at_end=True,
        metric_for_best_model="eval_accuracy" if greater else "eval_loss",
        greater_is_better=greater,
        # The last checkpoint to resume from and the best one to load at the end (the Trainer
        # never rotates the best one out; with a limit of 1 it deletes the last one at the end).
        save_total_limit=2,
        # Weights only unless resumable checkpoints are asked for (train.resumable_checkpoints).
        save_only_model=not train.resumable_checkpoints,
        label_names=["labels"],
        prediction_loss_only=True,  # dev loss only: never gather [examples, length, vocab] logits
        report_to="none",
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length",  # batches of similar length: little padding
        include_num_input_tokens_seen="non_padding",
    )


def run_arguments(
    train: TrainParams, n_examples: int, world_size: int, output_dir: Path, section: str = "train"
) -> tuple[str, TrainingArguments]:
    """(precision, TrainingArguments) for this machine: precision resolved, warmup in steps.
    `section`: where `train` came from in params.yaml (`pretrain` for phase 1)."""
    cuda = torch.cuda.is_available()
    precision = resolve_precision(train.precision, cuda, gpu_has_bf16(), section)
    warmup = math.ceil(optimizer_steps(n_examples, train, world_size) * train.warmup_ratio)
    return precision, training_arguments(train, precision, warmup, cuda, output_dir)
