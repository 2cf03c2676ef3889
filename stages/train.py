"""Stage `train`: fine-tune the model on the prepared training split, keep the best epoch.

Reads the token ids that `prepare` wrote (`data/prepared/{train,dev}.parquet`, columns
`prompt_ids`, `completion_ids` and `shortened`, encoded by `stages/prompt.py`), builds the
model exactly as `evaluate@base` does (`stages/modeling.py`), and trains it with the Hugging
Face Trainer:

- the loss is on the completion only (decision + long answer), or on every token with
  `train.loss_on: all`; padding never counts;
- after each epoch (and every `train.save_steps` steps) the dev split is evaluated: `dev_loss`
  from the Trainer, `dev_accuracy` by reading the decision the way `evaluate` does
  (`stages/scoring.py`); the checkpoint best by `train.best_metric` is the one saved;
- checkpoints go to `models/checkpoints/` (git-ignored and not a DVC output, so DVC never
  deletes it): a killed run resumes from the last complete one when the params and data are
  unchanged, and starts afresh otherwise;
- `train.num_processes > 1` relaunches this module under `torch.distributed.run`
  (one process per GPU, or CPU processes with gloo);
- with `pretrain.enabled`, training starts from phase 1's model (`models/phase1`, written by
  the `pretrain` stage on PQA-A, which trains through this module's `Phase` machinery too)
  instead of the base model.

Outputs: `models/finetuned/` (safetensors weights, tokenizer, params.json, a model card; LoRA
adapters are merged in), the curves in `dvclive/`, `metrics/train.json`, and the run's
timings, devices and memory in `perf/train.json`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from stages import memory
from stages.config import Params, TrainParams, load_params
from stages.devices import claim_gpus
from stages.errors import StageError, run_stage
from stages.io import atomic_dir, md5_of, write_json
from stages.memory import TRAIN_ADVICE, killed_message, out_of_memory_message
from stages.modeling import build_model, gpu_has_bf16, load_model, load_tokenizer
from stages.prepare import read_prepared
from stages.prompt import Encoded, label_token_ids
from stages.scoring import pad_right, score_decisions

PREPARED = Path("data/prepared")
TRAIN_FILE = PREPARED / "train.parquet"
DEV_FILE = PREPARED / "dev.parquet"
FINETUNED = Path("models/finetuned")
CHECKPOINTS = Path("models/checkpoints")
DVCLIVE = Path("dvclive")
METRICS_FILE = Path("metrics/train.json")
PERF_FILE = Path("perf/train.json")  # timings, devices, memory: an output, not a metric

COLUMNS = ("pmid", "prompt_ids", "completion_ids", "shortened")
IGNORE_INDEX = -100  # label of a position that does not count in the loss
RUN_FILE = "run.json"  # in CHECKPOINTS: the fingerprint of the run the checkpoints belong to
STATE_FILE = "trainer_state.json"  # the Trainer writes it last: a checkpoint without it is partial
LORA_TARGETS = ["c_attn", "c_proj", "c_fc"]
PHASE1_MODEL = Path("models/phase1")  # the pretrain stage's model (phase 1, on PQA-A)


@dataclass(frozen=True)
class Phase:
    """What one training phase reads and writes: phase 2 is this stage (PQA-L), phase 1 the
    `pretrain` stage (PQA-A, stages/pretrain.py). Both are trained by `train` below."""

    module: str  # the stage's module, relaunched under torch.distributed.run
    data: str  # what it trains on, for the model card
    train_file: Path
    output: Path
    checkpoints: Path
    dvclive: Path
    metrics_file: Path
    perf_file: Path
    max_examples: int | None = None  # train on the first N examples of train_file
    start_from: Path | None = None  # a saved model to start from; None: the base model

    @property
    def running_file(self) -> Path:
        """Written while the phase trains; left behind if it is killed."""
        return self.checkpoints / "running.json"


PHASE2 = Phase(
    "stages.train", "PQA-L", TRAIN_FILE, FINETUNED, CHECKPOINTS, DVCLIVE, METRICS_FILE, PERF_FILE
)
RUNNING_FILE = PHASE2.running_file  # while a run trains; left behind if it is killed


# ---- Reading the prepared splits ----


def read_split(path: Path, label_ids: list[int]) -> list[Encoded]:
    """The examples of a prepared parquet file, checked row by row.

    Every completion must start with one of the decision tokens (" yes", " no", " maybe"),
    since dev accuracy reads the gold decision from it.
    """
    table = read_prepared(path, COLUMNS)
    examples = []
    rows = zip(*(table.column(c).to_pylist() for c in COLUMNS), strict=True)
    for i, (pmid, prompt, completion, shortened) in enumerate(rows):
        where = f"{path}: row {i} (pmid {pmid})"
        if not prompt:
            raise StageError(f"{where}: prompt_ids is empty")
        if not completion or completion[0] not in label_ids:
            raise StageError(
                f"{where}: completion_ids must start with a decision token {label_ids}, "
                f"got {completion[:1]}"
            )
        examples.append(Encoded(prompt, completion, shortened))
    return examples


def check_fits(examples: list[Encoded], limit: int, path: Path) -> None:
    """Every prompt + completion must fit the model's positions."""
    for i, ex in enumerate(examples):
        length = len(ex.prompt_ids) + len(ex.completion_ids)
        if length > limit:
            raise StageError(
                f"{path}: row {i}: {length} tokens, over the model's {limit} positions; "
                f"lower prepare.max_length"
            )


# ---- Features and batches ----


def to_features(example: Encoded, loss_on: str) -> dict[str, list[int]]:
    """input_ids and labels of one example; with loss_on=completion the prompt is not learnt."""
    input_ids = example.prompt_ids + example.completion_ids
    if loss_on == "all":
        return {"input_ids": input_ids, "labels": list(input_ids)}
    masked = [IGNORE_INDEX] * len(example.prompt_ids)
    return {"input_ids": input_ids, "labels": masked + example.completion_ids}


class Collator:
    """Right-pads a batch, as scoring does; padded positions are masked and not learnt.

    The LM head (vocabulary x width, the largest matrix product of a small model) only has to
    run from the position before the first label on: the batch carries `logits_to_keep` and
    labels cut to those positions, and the model's own loss shifts them as usual. With the
    loss on the completion this skips the prompt, most of each example; the loss is the same.
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor | int]:
        input_ids, attention_mask = pad_right([f["input_ids"] for f in features], self.pad_id)
        labels, _ = pad_right([f["labels"] for f in features], IGNORE_INDEX)
        labelled = (labels != IGNORE_INDEX).any(dim=0).nonzero()
        first = max(int(labelled[0]), 1) if len(labelled) else 1
        keep = labels.shape[1] - first + 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels[:, -keep:],
            "logits_to_keep": keep,
        }


# ---- Run settings ----


def optimizer_steps(n_examples: int, train: TrainParams, world_size: int) -> int:
    """Optimizer steps of the whole run, counted as the Trainer counts them."""
    per_process = math.ceil(n_examples / world_size)
    batches = math.ceil(per_process / train.batch_size)
    return train.epochs * max(math.ceil(batches / train.gradient_accumulation_steps), 1)


def resolve_precision(choice: str, cuda: bool, bf16_supported: bool) -> str:
    """`auto` is bf16 where the GPU has it, else fp16 on a GPU, else fp32 (CPU)."""
    if choice == "auto":
        return "bf16" if cuda and bf16_supported else "fp16" if cuda else "fp32"
    if choice == "fp16" and not cuda:
        raise StageError("train.precision: fp16 needs a CUDA GPU; use auto, bf16 or fp32")
    if choice == "bf16" and cuda and not bf16_supported:
        raise StageError("train.precision: this GPU has no bf16; use auto, fp16 or fp32")
    return choice


def run_fingerprint(params: Params, files: list[Path]) -> str:
    """What decides the training trajectory: model and train params and the data files."""
    digest = hashlib.sha256()
    settings = {"model": params.model.model_dump(), "train": params.train.model_dump()}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for path in files:
        digest.update(md5_of(path).encode())
    return digest.hexdigest()


def reconcile_checkpoints(folder: Path, fingerprint: str, resumable: bool = True) -> None:
    """Keep the checkpoints in `folder` only when they belong to this run; drop partial ones.

    A checkpoint without its trainer state was cut off while being written and cannot be
    resumed from. Checkpoints of other params or data are removed: resuming from them would
    silently train a different experiment. Weights-only checkpoints (`resumable` False) hold
    no optimizer state to resume from: they are removed too.
    """
    run_file = folder / RUN_FILE
    recorded = json.loads(run_file.read_text()).get("fingerprint") if run_file.is_file() else None
    if folder.exists() and (recorded != fingerprint or not resumable):
        if any(folder.glob("checkpoint-*")):
            why = (
                "weights-only checkpoints (train.resumable_checkpoints: false)"
                if recorded == fingerprint
                else "checkpoints of another run (params or data changed)"
            )
            print(f"{folder}: {why}; starting afresh")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for child in folder.glob("checkpoint-*"):
        if not (child / STATE_FILE).is_file():
            print(f"{child}: incomplete checkpoint, removed")
            shutil.rmtree(child)
    write_json(run_file, {"fingerprint": fingerprint})


# ---- Trainer pieces ----


def decision_accuracy(
    model, examples: list[Encoded], label_ids: list[int], batch_size: int, pad_id: int
) -> float:
    """Share of examples whose most likely decision token is the gold one."""
    probabilities = score_decisions(
        model, [ex.prompt_ids for ex in examples], label_ids, batch_size=batch_size, pad_id=pad_id
    )
    gold = torch.tensor([label_ids.index(ex.completion_ids[0]) for ex in examples])
    return (probabilities.argmax(dim=1) == gold).float().mean().item()


def make_trainer_class():
    """The Trainer subclass (built on call so that importing this module stays light)."""
    from transformers import Trainer

    class DecisionTrainer(Trainer):
        """A Trainer whose evaluation also reports `<prefix>_accuracy` on the dev decisions."""

        def __init__(self, *args, dev_examples: list[Encoded], label_ids: list[int], **kwargs):
            super().__init__(*args, **kwargs)
            self.dev_examples = dev_examples
            self.label_ids = label_ids

        def evaluation_loop(
            self,
            dataloader,
            description,
            prediction_loss_only=None,
            ignore_keys=None,
            metric_key_prefix="eval",
        ):
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
            # Every process scores the whole (small) dev split on its own copy of the weights,
            # so all of them agree on the best checkpoint.
            model = (
                self.model.get_base_model() if hasattr(self.model, "peft_config") else self.model
            )
            # Under the autocast that training and dev loss use, so that the checkpoint is
            # chosen on the numbers the model computes everywhere else.
            with self.accelerator.autocast():
                output.metrics[f"{metric_key_prefix}_accuracy"] = decision_accuracy(
                    model,
                    self.dev_examples,
                    self.label_ids,
                    self.args.eval_batch_size,
                    self.processing_class.pad_token_id,
                )
            return output

    return DecisionTrainer


def curve_name(key: str) -> str:
    """The dvclive name of a Trainer log key: `eval_loss` -> `eval/loss`, `loss` -> `train/loss`."""
    return "eval/" + key.removeprefix("eval_") if key.startswith("eval_") else "train/" + key


def curve_wanted(key: str) -> bool:
    """Per-step figures only: not the end-of-run summary (`train_loss`, the mean over this
    session only, is misleading after a resume), counters, nor speed figures that vary."""
    counter = key in ("step", "epoch", "total_flos", "num_input_tokens_seen")
    return not (counter or key.startswith("train_") or key.endswith(("_runtime", "_per_second")))


def make_callbacks(save_steps: int | None, dvclive: Path = DVCLIVE):
    """Checkpoints every `save_steps` steps (besides each epoch end), the dvclive curves, and
    the count of optimizer steps this process ran (fewer than the run's after a resume), last."""
    from transformers import TrainerCallback

    class StepCount(TrainerCallback):
        """The step training (re)started at, and the optimizer steps taken since."""

        def __init__(self):
            self.first_step = 0
            self.steps = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.first_step = state.global_step  # a resumed run starts at its checkpoint's step

        def on_step_end(self, args, state, control, **kwargs):
            self.steps += 1

    class StepCheckpoints(TrainerCallback):
        """Evaluate and checkpoint every N optimizer steps, on top of the epoch ends."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % save_steps == 0:
                control.should_evaluate = True
                control.should_save = True
            return control

    class LiveCurves(TrainerCallback):
        """Training and dev curves in `dvclive/`, indexed by optimizer step.

        A resumed run replays the history stored in its checkpoint, so the curves are those of
        one uninterrupted run.
        """

        def __init__(self):
            self.live = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                from dvclive import Live

                self.live = Live(str(dvclive), save_dvc_exp=False, dvcyaml=False)
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

    return ([StepCheckpoints()] if save_steps else []) + [LiveCurves(), StepCount()]


def training_arguments(
    train: TrainParams,
    precision: str,
    warmup_steps: int,
    cuda: bool,
    output_dir: Path = CHECKPOINTS,
):
    """The Trainer's arguments, every one of them from `train` params."""
    from transformers import TrainingArguments

    greater = train.best_metric == "dev_accuracy"
    # Only named when on: recent transformers renames the option (activation_checkpointing).
    checkpointing = (
        {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}
        if train.gradient_checkpointing
        else {}
    )
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
    train: TrainParams, n_examples: int, world_size: int, output_dir: Path = CHECKPOINTS
):
    """(precision, TrainingArguments) for this machine: precision resolved, warmup in steps."""
    cuda = torch.cuda.is_available()
    precision = resolve_precision(train.precision, cuda, gpu_has_bf16())
    warmup = math.ceil(optimizer_steps(n_examples, train, world_size) * train.warmup_ratio)
    return precision, training_arguments(train, precision, warmup, cuda, output_dir)


def prepare_for_training(model, pad_id: int) -> None:
    """Set the pad token, and no KV cache: the Trainer's forward passes (training and dev
    loss) never decode, and a cache of GPT-2 Large at 16 x 1024 holds about 6 GB in fp32."""
    model.config.pad_token_id = model.generation_config.pad_token_id = pad_id
    model.config.use_cache = False


def apply_lora(model, train: TrainParams):
    """Wrap the model with LoRA adapters on the attention and MLP projections."""
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    set_seed(train.seed)  # the adapters' initialisation
    config = LoraConfig(
        r=train.lora.r,
        lora_alpha=train.lora.alpha,
        lora_dropout=train.lora.dropout,
        target_modules=LORA_TARGETS,
        fan_in_fan_out=True,  # GPT-2's projections are Conv1D, weights stored transposed
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


# ---- Results ----


def device_figures(cuda: bool) -> dict:
    """This process's device and its memory peaks, each under a key that says what it is.

    On a GPU: the allocator's peak allocation and reservation (what torch holds, cached
    blocks included), and the memory in use on the whole device at the end (that also counts
    the CUDA context, communication buffers and any other process). On a CPU: peak RSS.
    """
    if not cuda:
        import resource

        # Linux reports ru_maxrss in KiB.
        return {
            "device": "cpu",
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }
    free, total = torch.cuda.mem_get_info()
    return {
        "device": torch.cuda.get_device_name(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "peak_gpu_allocated_bytes": torch.cuda.max_memory_allocated(),
        "peak_gpu_reserved_bytes": torch.cuda.max_memory_reserved(),
        "gpu_used_bytes": total - free,
        "gpu_total_bytes": total,
    }


def gather_from_ranks(figures: dict) -> list[dict]:
    """Every process's `figures`, in rank order (a collective: all processes must call it)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [figures]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, figures)
    return out


def summarize(state, counts: dict) -> dict:
    """metrics/train.json: the saved checkpoint's dev metrics and how the run went.

    The same for the same params and data on CPU; timings and memory, which differ from run
    to run, go to perf/train.json instead.
    """
    evals = {e["step"]: e for e in state.log_history if "eval_loss" in e}
    losses = [e["loss"] for e in state.log_history if "loss" in e]
    best = evals[state.best_global_step]
    return {
        "dev_loss": best["eval_loss"],
        "dev_accuracy": best["eval_accuracy"],
        "best_step": state.best_global_step,
        "best_epoch": best["epoch"],
        "final_train_loss": losses[-1] if losses else None,
        "steps": state.global_step,
        "epochs": state.epoch,
        **counts,
    }


def model_card(params: Params, metrics: dict, phase: Phase = PHASE2) -> str:
    """README.md of the saved model: what it is, how it was trained, how it did on dev."""
    import yaml

    source = "random initialisation" if params.model.init == "random" else "pretrained weights"
    if phase.start_from is not None:
        source += f", then phase 1 on PQA-A: started from `{phase.start_from}`"
    settings = yaml.safe_dump(
        {"model": params.model.model_dump(), "train": params.train.model_dump()}, sort_keys=False
    )
    dev = f"dev loss {metrics['dev_loss']:.4f}, dev accuracy {metrics['dev_accuracy']:.4f}"
    return (
        f"# {params.model.name} fine-tuned on PubMedQA ({phase.data})\n\n"
        f"Base: `{params.model.name}` ({source}). Reasoning-required setting: the model reads "
        "the question and the abstract's contexts and writes the decision (yes/no/maybe) and "
        "a long answer; see `stages/prompt.py` for the exact template.\n\n"
        f"Saved checkpoint: step {metrics['best_step']} (epoch {metrics['best_epoch']:g}), "
        f"best by {params.train.best_metric}: {dev}.\n\n"
        f"Trained on {metrics['train_examples']} examples for {metrics['steps']} optimizer "
        f"steps with these params:\n\n```yaml\n{settings}```\n\n"
        "Weights are safetensors; load with `AutoModelForCausalLM.from_pretrained(dir)` "
        "(no remote code).\n"
    )


def save_finetuned(
    model, tokenizer, params: Params, metrics: dict, folder: Path, phase: Phase = PHASE2
) -> None:
    """Write the model, tokenizer, params and model card to `folder`, all or nothing."""
    with atomic_dir(folder) as out:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        settings = {"model": params.model.model_dump(), "train": params.train.model_dump()}
        write_json(out / "params.json", settings)
        (out / "README.md").write_text(model_card(params, metrics, phase), encoding="utf-8")


# ---- The stage ----


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


def phase_inputs(phase: Phase) -> list[Path]:
    """Files besides the data whose change makes old checkpoints another run's."""
    return sorted(phase.start_from.glob("*.safetensors")) if phase.start_from is not None else []


def train(params: Params, phase: Phase = PHASE2) -> None:
    """Fine-tune in this process (one of `train.num_processes`) and, on the main one, save."""
    from transformers import set_seed
    from transformers.trainer_utils import get_last_checkpoint

    cfg = params.train
    tokenizer = load_tokenizer(params.model)
    label_ids = label_token_ids(tokenizer)
    train_examples = read_split(phase.train_file, label_ids)[: phase.max_examples]
    dev_examples = read_split(DEV_FILE, label_ids)

    cuda = torch.cuda.is_available()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    precision, args = run_arguments(cfg, len(train_examples), world_size, phase.checkpoints)
    if args.n_gpu > 1:
        # One process driving several GPUs: the Trainer would wrap the model in DataParallel
        # (a batch of batch_size x GPUs, warmup computed for one, no bf16 autocast).
        raise StageError(
            f"this process sees {args.n_gpu} GPUs; set train.num_processes to use several "
            "(one process per GPU), or CUDA_VISIBLE_DEVICES to pick one"
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
        report_unfinished_run(phase.running_file)
        print(memory_line(total, trainable, cuda))

    with args.main_process_first(local=False, desc="checking checkpoints"):
        if args.process_index == 0:
            reconcile_checkpoints(
                phase.checkpoints,
                run_fingerprint(params, [phase.train_file, DEV_FILE, *phase_inputs(phase)]),
                resumable=cfg.resumable_checkpoints,
            )
    resume = get_last_checkpoint(str(phase.checkpoints))
    if resume and args.process_index == 0:
        print(f"resuming from {resume}")

    set_seed(cfg.seed)
    callbacks = make_callbacks(cfg.save_steps, phase.dvclive)
    step_count = callbacks[-1]
    trainer = make_trainer_class()(
        model=model,
        args=args,
        train_dataset=[to_features(ex, cfg.loss_on) for ex in train_examples],
        eval_dataset=[to_features(ex, cfg.loss_on) for ex in dev_examples],
        data_collator=Collator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=callbacks,
        dev_examples=dev_examples,
        label_ids=label_ids,
    )
    tokens_before = 0
    if resume:
        tokens_before = json.loads((Path(resume) / STATE_FILE).read_text()).get(
            "num_input_tokens_seen", 0
        )
    if args.process_index == 0:
        write_json(phase.running_file, {"pid": os.getpid()})
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    except torch.OutOfMemoryError as exc:
        raise StageError(out_of_memory_message(exc, TRAIN_ADVICE)) from None
    finally:
        if args.process_index == 0:
            phase.running_file.unlink(missing_ok=True)
    ranks = gather_from_ranks(device_figures(cuda))

    if trainer.is_world_process_zero():
        runtime = result.metrics["train_runtime"]
        # The Trainer gathers the non-padding token count over all processes.
        tokens = trainer.state.num_input_tokens_seen - tokens_before
        perf = {
            "runtime_seconds": round(runtime, 2),
            "train_tokens_per_second": round(tokens / runtime, 1) if runtime else None,
            "resumed_from_step": step_count.first_step,
            "steps_this_run": step_count.steps,
            "precision": precision,
            "processes": world_size,
            "device": ranks[0]["device"],
            "ranks": ranks,
        }
        counts = {
            "train_examples": len(train_examples),
            "dev_examples": len(dev_examples),
            "trainable_parameters": trainable,
            "total_parameters": total,
        }
        metrics = summarize(trainer.state, counts)
        final = trainer.model.merge_and_unload() if cfg.lora.enabled else trainer.model
        save_finetuned(final, tokenizer, params, metrics, phase.output, phase)
        write_json(phase.metrics_file, metrics)
        write_json(phase.perf_file, perf)
        if not cfg.keep_checkpoints:
            shutil.rmtree(phase.checkpoints)  # the run is done: nothing left to resume
        print(
            f"saved {phase.output} (step {metrics['best_step']}): "
            f"dev_loss {metrics['dev_loss']:.4f}, dev_accuracy {metrics['dev_accuracy']:.4f}, "
            f"{perf['train_tokens_per_second']} tokens/s"
        )


def memory_line(total: int, trained: int, cuda: bool) -> str:
    """The training state's memory against this device's (see `stages.memory.memory_line`)."""
    if cuda:
        capacity = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        return memory.memory_line(total, trained, gpu_capacity=capacity)
    return memory.memory_line(total, trained, gpu_capacity=None)


def report_unfinished_run(marker: Path) -> None:
    """Say so when the last run of this stage here ended without finishing (its marker is
    still there and its process is gone): a SIGKILL, most often the out-of-memory killer."""
    if not marker.is_file():
        return
    try:
        pid = int(json.loads(marker.read_text())["pid"])
        os.kill(pid, 0)
    except ProcessLookupError:
        ended = killed_message(TRAIN_ADVICE)
        print(f"the last training run here (pid {pid}) did not finish; if it was {ended}")
    except (ValueError, KeyError, json.JSONDecodeError, PermissionError, OSError):
        return


def launch(num_processes: int, module: str = "stages.train") -> None:
    """Run this stage in `num_processes` data-parallel processes and wait for them."""
    if torch.cuda.is_available() and num_processes > torch.cuda.device_count():
        raise StageError(
            f"train.num_processes: {num_processes} processes but "
            f"{torch.cuda.device_count()} GPU(s) visible"
        )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={num_processes}",
        "-m",
        module,
    ]
    code = subprocess.call(command)
    if code == -9:
        raise StageError(f"training processes {killed_message(TRAIN_ADVICE)}")
    if code != 0:
        raise StageError(f"training processes failed (exit status {code}); see their output above")


def run_phase(params: Params, phase: Phase) -> None:
    """Run a training phase in `train.num_processes` processes (relaunching `phase.module`
    under torch.distributed.run when more than one), each on a GPU of its own if any."""
    processes = params.train.num_processes
    launched = "WORLD_SIZE" in os.environ  # by launch(), or by the user's own accelerate/torchrun
    if launched and int(os.environ["WORLD_SIZE"]) != processes:
        raise StageError(
            f"train.num_processes: is {processes} but the launcher started "
            f"{os.environ['WORLD_SIZE']} processes; set it to match"
        )
    if not launched:
        # Before CUDA starts: lock free GPUs, one per process, and see only those. A single
        # process seeing several would be run with DataParallel by the Trainer.
        claim_gpus(processes)
    if processes > 1 and not launched:
        launch(processes, phase.module)
    else:
        train(params, phase)


def phase2(params: Params) -> Phase:
    """This stage's phase: from phase 1's model when the pretrain stage ran (`pretrain.enabled`)."""
    return replace(PHASE2, start_from=PHASE1_MODEL) if params.pretrain.enabled else PHASE2


def main() -> None:
    params = load_params()
    run_phase(params, phase2(params))


if __name__ == "__main__":
    run_stage(main)
