"""The training recipe of both phases, top-down: setup (data, model, trainer) -> fit -> save.

    setup: the phase's prepared examples (checked), the starting model (the base model, built
           as evaluate@base builds it, or phase 1's), LoRA when asked for, the checkpoints of
           this run to resume from, and the Trainer with its collator and callbacks;
    fit:   Trainer.train, with a marker left behind if the process is killed; a stop asked
           for (a SLURM task's warning signal, `stop.py`) ends it at the next optimizer step
           with a checkpoint, and the stage exits with STOPPED_EXIT, saving nothing else;
    save:  on the main process, the best checkpoint's model, the metrics, the perf figures.

The loss is on the completion only (decision + long answer), or on every token with
`loss_on: all`; padding never counts. After each epoch (and every `save_steps` steps) the dev
split is evaluated: `dev_loss` from the Trainer, `dev_accuracy` by reading the decision the
way `evaluate` does; the checkpoint best by `best_metric` is the one saved. With
`num_processes > 1` the stage is relaunched under `torch.distributed.run` (`run_phase`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from pubmedqa_gpt2.core.config import Params, TrainParams
from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.core.io import write_json
from pubmedqa_gpt2.core.paths import DEV_FILE
from pubmedqa_gpt2.data.token_files import check_fits
from pubmedqa_gpt2.gpu_claims import claim_gpus
from pubmedqa_gpt2.model.loading import build_model, load_model, load_tokenizer
from pubmedqa_gpt2.out_of_memory import out_of_memory_message, train_advice
from pubmedqa_gpt2.prompt import Encoded, label_token_ids
from pubmedqa_gpt2.training.callbacks import StepCount, StopOnRequest, phase_callbacks
from pubmedqa_gpt2.training.checkpoints import (
    reconcile_checkpoints,
    run_fingerprint,
    tokens_seen,
)
from pubmedqa_gpt2.training.collator import Collator
from pubmedqa_gpt2.training.examples import read_split, to_features
from pubmedqa_gpt2.training.launch import launch
from pubmedqa_gpt2.training.lora import apply_lora
from pubmedqa_gpt2.training.phase import Phase
from pubmedqa_gpt2.training.run_figures import device_figures, gather_from_ranks, memory_line
from pubmedqa_gpt2.training.running_marker import mark_running, report_unfinished_run
from pubmedqa_gpt2.training.saving import save_model, training_metrics
from pubmedqa_gpt2.training.settings import run_arguments
from pubmedqa_gpt2.training.stop import STOPPED_EXIT
from pubmedqa_gpt2.training.trainer import DecisionTrainer


@dataclass
class Run:
    """One process's training run, as `setup` leaves it for `fit` and `save`."""

    params: Params
    phase: Phase
    tokenizer: object
    train_examples: list[Encoded]
    dev_examples: list[Encoded]
    precision: str
    args: TrainingArguments
    trainer: DecisionTrainer
    step_count: StepCount
    stop: StopOnRequest
    resume: str | None
    tokens_before: int  # input tokens seen by the checkpoint resumed from
    world_size: int
    trainable: int
    total: int

    @property
    def main_process(self) -> bool:
        return self.args.process_index == 0


def run_phase(params: Params, phase: Phase) -> None:
    """Run a training phase in `<section>.num_processes` processes (relaunching
    `phase.module` under torch.distributed.run when more than one), each on a GPU of its own if
    any. `params` are the phase's own: `params.train` holds phase 1's settings for pretrain."""
    processes = params.train.num_processes
    setting = f"{phase.section}.num_processes"  # what the user sets, named in every message
    launched = "WORLD_SIZE" in os.environ  # by launch(), or by the user's own accelerate/torchrun
    if launched and int(os.environ["WORLD_SIZE"]) != processes:
        raise StageError(
            f"{setting}: is {processes} but the launcher started "
            f"{os.environ['WORLD_SIZE']} processes; set it to match"
        )
    if not launched:
        # Before CUDA starts: lock free GPUs, one per process, and see only those. A single
        # process seeing several would be run with DataParallel by the Trainer.
        claim_gpus(processes, setting=setting)
    if processes > 1 and not launched:
        launch(processes, phase.module, phase.section)
    else:
        train(params, phase)


def train(params: Params, phase: Phase) -> None:
    """Fine-tune in this process (one of the phase's processes) and, on the main one, save."""
    run = setup(params, phase)
    result = fit(run)
    save(run, result)


# ---- Setup: data, model, trainer ----


def setup(params: Params, phase: Phase) -> Run:
    cfg = params.train
    tokenizer = load_tokenizer(params.model.tokenizer_source)
    label_ids = label_token_ids(tokenizer)
    train_examples = read_split(phase.train_file, label_ids)[: phase.max_examples]
    dev_examples = read_split(DEV_FILE, label_ids)

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    precision, args = run_arguments(
        cfg, len(train_examples), world_size, phase.checkpoints, phase.section
    )
    if args.n_gpu > 1:
        # One process driving several GPUs: the Trainer would wrap the model in DataParallel
        # (a batch of batch_size x GPUs, warmup computed for one, no bf16 autocast).
        raise StageError(
            f"this process sees {args.n_gpu} GPUs; set {phase.section}.num_processes to use "
            "several (one process per GPU), or CUDA_VISIBLE_DEVICES to pick one"
        )

    model = starting_model(params, phase)
    prepare_for_training(model, tokenizer.pad_token_id)
    limit = model.config.max_position_embeddings
    check_fits(train_examples, limit, phase.train_file)
    check_fits(dev_examples, limit, DEV_FILE)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if args.process_index == 0:
        report_unfinished_run(phase.running_file, phase.section)
        print(memory_line(total, trainable, torch.cuda.is_available(), phase.section))

    resume = checkpoint_to_resume(params, phase, args)
    set_seed(cfg.seed)
    callbacks = phase_callbacks(cfg.save_steps, phase.dvclive)
    stop = StopOnRequest()
    collator = Collator(tokenizer.pad_token_id)
    trainer = make_trainer(
        model, args, cfg, train_examples, dev_examples, collator, [*callbacks, stop],
        tokenizer=tokenizer, label_ids=label_ids,
    )  # fmt: skip
    return Run(
        params, phase, tokenizer, train_examples, dev_examples, precision, args, trainer,
        callbacks[-1], stop, resume, tokens_seen(resume), world_size, trainable, total,
    )  # fmt: skip


def make_trainer(
    model,
    args: TrainingArguments,
    cfg: TrainParams,
    train_examples: Sequence[Encoded],
    dev_examples: Sequence[Encoded],
    collator: Collator,
    callbacks: list,
    tokenizer=None,
    label_ids: Sequence[int] = (),
) -> DecisionTrainer:
    """The Trainer of a run: the project's trainer class over the examples' features (the loss
    on `cfg.loss_on`), dev accuracy from `dev_examples` and `label_ids`. The benchmarks build
    theirs here too (`bench/common.py`), with no dev examples."""
    return DecisionTrainer(
        model=model,
        args=args,
        train_dataset=[to_features(ex, cfg.loss_on) for ex in train_examples],
        eval_dataset=[to_features(ex, cfg.loss_on) for ex in dev_examples],
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
        dev_examples=list(dev_examples),
        label_ids=list(label_ids),
    )


def starting_model(params: Params, phase: Phase):
    """The weights training starts from, in fp32 (master weights; AMP on top): the model that
    `phase.start_from` holds, else the base model, built as evaluate@base builds it."""
    if phase.start_from is None:
        return build_model(params.model, dtype=torch.float32)
    if not (phase.start_from / "config.json").is_file():
        raise StageError(
            f"{phase.start_from}: no model there; run the pretrain stage first (dvc repro pretrain)"
        )
    return load_model(phase.start_from, dtype=torch.float32, what="phase 1 model")


def prepare_for_training(model, pad_id: int) -> None:
    """Set the pad token, no KV cache (the Trainer's forward passes, training and dev loss,
    never decode, and a cache of GPT-2 Large at 16 x 1024 holds about 6 GB in fp32), and the
    loss by name."""
    model.config.pad_token_id = model.generation_config.pad_token_id = pad_id
    model.config.use_cache = False
    # The loss transformers falls back to for GPT2LMHeadModel (whose class name maps to no
    # loss type), named so that it no longer warns "`loss_type=None` was set in the config
    # but it is unrecognized. Using the default loss: `ForCausalLMLoss`": the same loss.
    model.loss_type = "ForCausalLM"


def checkpoint_to_resume(params: Params, phase: Phase, args: TrainingArguments) -> str | None:
    """The last checkpoint of this very run (same params, data, starting model), if any; the
    main process first drops checkpoints of other runs and partial ones."""
    with args.main_process_first(local=False, desc="checking checkpoints"):
        if args.process_index == 0:
            reconcile_checkpoints(
                phase.checkpoints,
                run_fingerprint(params, phase),
                resumable=params.train.resumable_checkpoints,
                section=phase.section,
            )
    resume = get_last_checkpoint(str(phase.checkpoints))
    if resume and args.process_index == 0:
        print(f"resuming from {resume}")
    return resume


# ---- Fit ----


def fit(run: Run):
    """Trainer.train, from the checkpoint to resume from; a marker says a run is under way.
    Stopped on request: the checkpoint is saved, the process exits with STOPPED_EXIT."""
    if run.main_process:
        mark_running(run.phase.running_file)
    try:
        result = run.trainer.train(resume_from_checkpoint=run.resume)
    except torch.OutOfMemoryError as exc:
        raise StageError(out_of_memory_message(exc, train_advice(run.phase.section))) from None
    finally:
        if run.main_process:
            run.phase.running_file.unlink(missing_ok=True)
    if run.stop.stopped_at is not None:
        if run.main_process:
            print(
                f"stopped on request at step {run.stop.stopped_at}: checkpoint saved in "
                f"{run.phase.checkpoints}, the next run resumes from it"
            )
        raise SystemExit(STOPPED_EXIT)
    return result


# ---- Save ----


def save(run: Run, result) -> None:
    """On the main process: the best checkpoint's model, the metrics and the perf figures;
    then the checkpoints go unless `keep_checkpoints` (the run is done: nothing to resume)."""
    cuda = torch.cuda.is_available()
    ranks = gather_from_ranks(device_figures(cuda))  # a collective: every process calls it
    trainer, cfg, phase = run.trainer, run.params.train, run.phase
    if not trainer.is_world_process_zero():
        return
    runtime = result.metrics["train_runtime"]
    # The Trainer gathers the non-padding token count over all processes.
    tokens = trainer.state.num_input_tokens_seen - run.tokens_before
    perf = {
        "runtime_seconds": round(runtime, 2),
        "train_loop_seconds": round(run.step_count.loop_seconds, 2),
        "train_tokens_per_second": round(tokens / runtime, 1) if runtime else None,
        "train_tokens_this_run": tokens,
        "resumed_from_step": run.step_count.first_step,
        "steps_this_run": run.step_count.steps,
        "precision": run.precision,
        "processes": run.world_size,
        "device": ranks[0]["device"],
        "ranks": ranks,
    }
    counts = {
        "train_examples": len(run.train_examples),
        "dev_examples": len(run.dev_examples),
        "trainable_parameters": run.trainable,
        "total_parameters": run.total,
    }
    metrics = training_metrics(trainer.state, counts)
    final = trainer.model.merge_and_unload() if cfg.lora.enabled else trainer.model
    save_model(final, run.tokenizer, run.params, metrics, phase)
    write_json(phase.metrics_file, metrics)
    write_json(phase.perf_file, perf)
    if not cfg.keep_checkpoints:
        shutil.rmtree(phase.checkpoints)
    print(
        f"saved {phase.output} (step {metrics['best_step']}): "
        f"dev_loss {metrics['dev_loss']:.4f}, dev_accuracy {metrics['dev_accuracy']:.4f}, "
        f"{perf['train_tokens_per_second']} tokens/s"
    )
