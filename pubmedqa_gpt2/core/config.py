"""Typed, validated view of `params.yaml`: one section per stage.

Every knob of the experiment lives in `params.yaml`, and only there: the fields below have no
defaults, each has a description (its docstring), and this module is the only code that reads
the file. Unknown or misspelled keys, wrong types and out-of-range values are errors that name the
key and say what is allowed (`params.yaml: train.learning_rte: unknown key; allowed: ...`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pubmedqa_gpt2.core.errors import StageError, one_line
from pubmedqa_gpt2.core.paths import PARAMS_FILE

MAX_SEED = 2**32 - 1  # numpy's seeds (transformers' set_seed, the bootstrap) are 0 .. 2**32 - 1


class Section(BaseModel):
    """A params section: unknown keys are rejected and values are type- and range-checked.

    No field has a default: `params.yaml` holds every value, once, and each field's docstring
    (its pydantic description) says what it means. Lax mode on purpose: YAML reads `1e-5` (no
    dot) as a string, and `dvc exp run -S` writes values that way, so numeric strings are
    accepted where a number is expected.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class DataParams(Section):
    """Section `data` (stages download and ingest): where PubMedQA comes from."""

    source: Literal["official", "hub", "parquet"]
    """Where PQA-L comes from: the benchmark's `ori_pqal.json` (downloaded from `url` and
    checked against `md5`), the Hugging Face hub dataset, or a parquet file in the hub's schema."""
    url: str
    """The official file at a fixed commit of the benchmark's repository."""
    md5: str
    """The official file's md5: a download or local copy that differs is an error."""
    parquet_path: str
    """The hub-schema parquet file read when source=parquet (keep it under data/external/)."""
    hub_id: str
    """The hub dataset read when source=hub (config pqa_labeled) and for PQA-A from the hub."""
    hub_revision: str
    """The hub dataset's revision (branch, tag or commit)."""
    artificial: bool
    """Fetch `pqa_artificial` (PQA-A: 211k questions labelled automatically) for phase 1
    (the `pretrain` stage); it is never mixed into PQA-L's training split."""
    artificial_parquet: str | None
    """PQA-A from a parquet file in the hub's schema (keep it under data/external/); null:
    from the hub (`hub_id`, config pqa_artificial)."""
    max_artificial: int | None = Field(ge=1)
    """Keep only the first N artificial records (null: all)."""

    @field_validator("md5")
    @classmethod
    def _md5_is_hex(cls, value: str) -> str:
        if len(value) != 32 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError("must be 32 lowercase hex digits")
        return value


class PrepareParams(Section):
    """Section `prepare`: the official split and the token budget."""

    seed: int = Field(ge=0, le=MAX_SEED)
    """Seed of the official split procedure (the benchmark uses 0)."""
    fold: int = Field(ge=0, le=9)
    """Which of the 10 cross-validation folds is the dev set."""
    max_length: int = Field(ge=64)
    """Token budget of prompt + completion; only the context is shortened to fit."""
    max_train_samples: int | None = Field(ge=1)
    """Keep N training examples, a seeded sample with each decision's share of the training split
    (smoke runs); null keeps all."""


class ModelParams(Section):
    """Section `model`: the model trained and evaluated, and its tokenizer."""

    name: str
    """A Hugging Face causal-LM id or a local directory."""
    init: Literal["pretrained", "random"]
    """`pretrained`: from_pretrained(name). `random`: a GPT-2 preset's config, random weights."""
    tokenizer: str | None
    """Tokenizer id or directory; null means the same as `name`."""
    overrides: dict[str, int | float | str]
    """Config fields to override for init=random, e.g. {n_layer: 2, n_embd: 128}."""
    seed: int = Field(ge=0, le=MAX_SEED)
    """Seed of the random initialisation."""

    @property
    def tokenizer_source(self) -> str:
        """Where the tokenizer is loaded from: `tokenizer`, else `name`."""
        return self.tokenizer or self.name


class LoraParams(Section):
    """LoRA adapters (peft) instead of full fine-tuning; the merged model is saved."""

    enabled: bool
    """Train LoRA adapters on c_attn, c_proj and c_fc instead of every weight."""
    r: int = Field(ge=1)
    """Rank of each adapter."""
    alpha: int = Field(ge=1)
    """Scale of the adapters' update (lora_alpha; the update is scaled by alpha / r)."""
    dropout: float = Field(ge=0.0, lt=1.0)
    """Dropout on the adapters' input."""


class TrainParams(Section):
    """A training run's settings: section `train` (phase 2, on PQA-L), and with `enabled` and
    `max_samples` added, section `pretrain` (phase 1, on PQA-A)."""

    epochs: int = Field(ge=1)
    """Passes over the training examples."""
    learning_rate: float = Field(gt=0.0)
    """Peak learning rate of AdamW."""
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"]
    """How the learning rate changes after warmup."""
    warmup_ratio: float = Field(ge=0.0, le=1.0)
    """Share of the run's optimizer steps spent warming the learning rate up (rounded up)."""
    weight_decay: float = Field(ge=0.0)
    """AdamW's decoupled weight decay."""
    batch_size: int = Field(ge=1)
    """Per-device batch size."""
    gradient_accumulation_steps: int = Field(ge=1)
    """Batches per optimizer step (the effective batch is batch_size x this x processes)."""
    max_grad_norm: float = Field(gt=0.0)
    """Gradients are clipped to this global norm."""
    seed: int = Field(ge=0, le=MAX_SEED)
    """Seed of the data order, dropout and (with LoRA) the adapters' initialisation."""
    precision: Literal["auto", "bf16", "fp16", "fp32"]
    """Mixed precision: auto is bf16 where the GPU has it, else fp16 on a GPU, fp32 on a CPU."""
    gradient_checkpointing: bool
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    loss_on: Literal["completion", "all"]
    """Which tokens are learnt: the completion (decision + long answer) or every token."""
    best_metric: Literal["dev_loss", "dev_accuracy"]
    """Which dev figure picks the checkpoint that is saved."""
    eval_batch_size: int = Field(ge=1)
    """Per-device batch size of the dev evaluation (loss and decision accuracy)."""
    num_processes: int = Field(ge=1)
    """Data-parallel processes (one per GPU, or CPU processes with gloo)."""
    save_steps: int | None = Field(ge=1)
    """Also checkpoint every N optimizer steps (null: only at each epoch end)."""
    keep_checkpoints: bool
    """Keep the checkpoints after a successful run (else they are deleted: the best epoch
    is saved as the stage's model). A killed run's checkpoints are kept either way."""
    resumable_checkpoints: bool
    """Checkpoints with optimizer, scheduler and RNG state, so that a killed run resumes where
    it stopped. Off: weights only (a third of the bytes: GPT-2 Large is 3.1 GB instead of
    9.3 GB a checkpoint), enough to pick the best epoch; a killed run then starts afresh."""
    logging_steps: int = Field(ge=1)
    """Log the training loss (and the dvclive curves) every N optimizer steps."""
    lora: LoraParams
    """LoRA adapters instead of full fine-tuning."""


class PretrainParams(TrainParams):
    """Section `pretrain`: phase 1, the base model trained on PQA-A before `train` (phase 2)
    trains it on PQA-L. A complete training section of its own, so that a phase-2 change never
    reruns phase 1 and every phase-1 setting shows in `dvc params diff`."""

    enabled: bool
    """Run phase 1 (needs data.artificial: true); `train` then starts from its model."""
    max_samples: int | None = Field(ge=1)
    """Train on the first N PQA-A examples (null: all)."""

    def training(self) -> TrainParams:
        """Phase 1's training settings, as the trainer reads them."""
        return TrainParams(**self.model_dump(exclude={"enabled", "max_samples"}))


class EvaluateParams(Section):
    """Section `evaluate` (stages evaluate and compare; the CLI's decoding settings)."""

    batch_size: int = Field(ge=1)
    """Prompts per forward pass when scoring the decisions and the reference answers."""
    generate_examples: int | None = Field(ge=0)
    """How many test questions get a generated long answer (null: all 500)."""
    max_new_tokens: int = Field(ge=1)
    """Longest generated long answer, in tokens."""
    generation_batch_size: int | Literal["auto"]
    """Prompts decoded together; auto: as many as half the free GPU memory holds, up to 64
    (16 without a GPU; model/decoding.py)."""
    decode_step: Literal["auto", "dynamic", "static", "cuda_graph"]
    """How each greedy step runs (model/decoding.py): auto is cuda_graph on a GPU (a static KV
    cache, the step captured once per batch and replayed), dynamic on a CPU."""
    repetition_penalty: float = Field(gt=0.0)
    """Greedy decoding's repetition penalty (1.0: none)."""
    no_repeat_ngram_size: int = Field(ge=0)
    """Never repeat an n-gram of this size in a generated answer (0: no constraint)."""
    bootstrap_samples: int = Field(ge=100)
    """Resamples of the test questions for every 95% interval (evaluate and compare)."""
    bootstrap_seed: int = Field(ge=0, le=MAX_SEED)
    """Seed of those resamples."""

    @field_validator("generation_batch_size", mode="before")
    @classmethod
    def _count_or_auto(cls, value: object) -> object:
        if value == "auto" or (type(value) is int and value >= 1):
            return value
        raise ValueError("must be a count >= 1 or auto")


class Params(Section):
    """The whole of `params.yaml`, one section per stage."""

    data: DataParams
    """Where PubMedQA comes from (download, ingest)."""
    prepare: PrepareParams
    """The split and the token budget (prepare)."""
    model: ModelParams
    """The model and tokenizer (prepare, pretrain, train, evaluate)."""
    pretrain: PretrainParams
    """Phase 1 on PQA-A (pretrain)."""
    train: TrainParams
    """Phase 2 on PQA-L (train)."""
    evaluate: EvaluateParams
    """Evaluation and comparison (evaluate, compare)."""


def merge(target: dict, overrides: dict) -> None:
    """Deep-merge `overrides` into the mapping `target` in place (a ruamel mapping keeps its
    comments); a non-empty mapping merges into a mapping, anything else replaces the value."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict) and value:
            merge(target[key], value)
        else:
            target[key] = value


def with_changes(params: Params, changes: dict) -> Params:
    """`params` with `changes` (nested mappings, as `dvc exp run -S` sets them) merged in and
    validated again."""
    raw = params.model_dump()
    merge(raw, changes)
    return parse_params(raw, origin="changes")


def _describe(error: dict[str, Any], model: type[BaseModel]) -> str:
    """One line for one pydantic error: the dotted key, and what is allowed there."""
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc)
    if error["type"] == "extra_forbidden":
        section: type[BaseModel] | None = model
        for part in loc[:-1]:
            annotation = section.model_fields[part].annotation if section else None
            section = annotation if isinstance(annotation, type) else None
        allowed = ", ".join(section.model_fields) if section else "?"
        return f"{key}: unknown key; allowed: {allowed}"
    if error["type"] == "missing":
        return f"{key}: missing (params.yaml sets every key; see pubmedqa_gpt2/core/config.py)"
    return f"{key}: {error['msg']} (got {error.get('input')!r})"


def parse_params(raw: Any, origin: str = "params.yaml") -> Params:
    """Validate a params mapping; raise StageError naming every bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise StageError(f"{origin}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(err, Params) for err in exc.errors()]
        raise StageError(f"{origin}: " + f"\n{origin}: ".join(lines)) from None


def read_params_file(path: Path | str) -> Any:
    """The YAML document of a params file, not yet validated."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StageError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise StageError(f"{path}: not valid YAML: {one_line(exc)}") from None


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read and validate `params.yaml`."""
    return parse_params(read_params_file(path), origin=str(path))


def load_section(name: str, path: Path | str = PARAMS_FILE) -> Section:
    """One section of a params file, validated on its own (the CLI reads only `evaluate`, so
    a bad value elsewhere does not stop it)."""
    raw = read_params_file(path)
    section = raw.get(name) if isinstance(raw, dict) else None
    try:
        return Params.model_fields[name].annotation.model_validate(section)
    except ValidationError as exc:
        errors = [{**err, "loc": (name, *err["loc"])} for err in exc.errors()]
        raise StageError(
            f"{path}: " + f"\n{path}: ".join(_describe(err, Params) for err in errors)
        ) from None
