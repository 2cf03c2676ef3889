"""Typed, validated view of `params.yaml`: one section per stage.

Every knob of the experiment lives in `params.yaml`; this module is the only code that reads
it. Unknown or misspelled keys, wrong types and out-of-range values are errors that name the
key and say what is allowed (`params.yaml: train.learning_rte: unknown key; allowed: ...`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from stages.errors import StageError

PARAMS_FILE = Path("params.yaml")
OFFICIAL_URL = (
    "https://raw.githubusercontent.com/pubmedqa/pubmedqa/"
    "1f00b98d5cc626844bf8c4ca513b6e62c40071ec/data/ori_pqal.json"
)
OFFICIAL_MD5 = "05b2b70949907e260d2aa82bc5d20c6f"


class Section(BaseModel):
    """A params section: unknown keys are rejected and values are type- and range-checked.

    Lax mode on purpose: YAML reads `1e-5` (no dot) as a string, and `dvc exp run -S` writes
    values that way, so numeric strings are accepted where a number is expected.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class DataParams(Section):
    source: Literal["official", "hub", "parquet"] = "official"
    """Where PQA-L comes from: the benchmark's `ori_pqal.json` (downloaded from `url` and
    checked against `md5`), the Hugging Face hub dataset, or a parquet file in the hub's schema."""
    url: str = OFFICIAL_URL
    """The official file at a fixed commit of the benchmark's repository."""
    md5: str = OFFICIAL_MD5
    """The official file's md5: a download or local copy that differs is an error."""
    parquet_path: str = "data/external/pqa_labeled.parquet"
    """The hub-schema parquet file read when source=parquet (keep it under data/external/)."""
    hub_id: str = "qiaojin/PubMedQA"
    hub_revision: str = "main"
    artificial: bool = False
    """Fetch `pqa_artificial` (PQA-A: 211k questions labelled automatically) for phase 1
    (the `pretrain` stage); it is never mixed into PQA-L's training split."""
    artificial_parquet: str | None = None
    """PQA-A from a parquet file in the hub's schema (keep it under data/external/); null:
    from the hub (`hub_id`, config pqa_artificial)."""
    max_artificial: int | None = Field(default=None, ge=1)
    """Keep only the first N artificial records (null: all)."""

    @field_validator("md5")
    @classmethod
    def _md5_is_hex(cls, value: str) -> str:
        if len(value) != 32 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError("must be 32 lowercase hex digits")
        return value


class PrepareParams(Section):
    seed: int = 0
    """Seed of the official split procedure (the benchmark uses 0)."""
    fold: int = Field(default=0, ge=0, le=9)
    """Which of the 10 cross-validation folds is the dev set."""
    max_length: int = Field(default=1024, ge=64)
    """Token budget of prompt + completion; only the context is shortened to fit."""
    max_train_samples: int | None = Field(default=None, ge=1)
    """Keep the first N training examples (smoke runs); null keeps all."""


class ModelParams(Section):
    name: str = "gpt2-large"
    """A Hugging Face causal-LM id or a local directory."""
    init: Literal["pretrained", "random"] = "pretrained"
    """`pretrained`: from_pretrained(name). `random`: a GPT-2 preset's config, random weights."""
    tokenizer: str | None = None
    """Tokenizer id or directory; null means the same as `name`."""
    overrides: dict[str, int | float | str] = Field(default_factory=dict)
    """Config fields to override for init=random, e.g. {n_layer: 2, n_embd: 128}."""
    seed: int = 0
    """Seed of the random initialisation."""


class LoraParams(Section):
    enabled: bool = False
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)


class TrainParams(Section):
    epochs: int = Field(default=3, ge=1)
    learning_rate: float = Field(default=2e-5, gt=0.0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(default=0.06, ge=0.0, le=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    batch_size: int = Field(default=8, ge=1)
    """Per-device batch size."""
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    max_grad_norm: float = Field(default=1.0, gt=0.0)
    seed: int = 42
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    gradient_checkpointing: bool = False
    loss_on: Literal["completion", "all"] = "completion"
    best_metric: Literal["dev_loss", "dev_accuracy"] = "dev_loss"
    eval_batch_size: int = Field(default=16, ge=1)
    num_processes: int = Field(default=1, ge=1)
    """Data-parallel processes (one per GPU, or CPU processes with gloo)."""
    save_steps: int | None = Field(default=None, ge=1)
    """Also checkpoint every N optimizer steps (null: only at each epoch end)."""
    keep_checkpoints: bool = False
    """Keep models/checkpoints/ after a successful run (else it is deleted: the best epoch
    is saved in models/finetuned). A killed run's checkpoints are kept either way."""
    resumable_checkpoints: bool = False
    """Checkpoints with optimizer, scheduler and RNG state, so that a killed run resumes where
    it stopped. Off: weights only (a third of the bytes: GPT-2 Large is 3.1 GB instead of
    9.3 GB a checkpoint), enough to pick the best epoch; a killed run then starts afresh."""
    logging_steps: int = Field(default=10, ge=1)
    lora: LoraParams = Field(default_factory=LoraParams)


class PretrainParams(Section):
    """Phase 1 (stage `pretrain`): the base model trained on PQA-A before `train` (phase 2)
    trains it on PQA-L. What is not here is TrainParams' default, not params.yaml's `train`,
    so that a phase-2 change never reruns phase 1 (only `train.num_processes` is shared)."""

    enabled: bool = False
    """Run phase 1 (needs data.artificial: true); `train` then starts from its model."""
    epochs: int = Field(default=1, ge=1)
    learning_rate: float = Field(default=2e-5, gt=0.0)
    batch_size: int = Field(default=8, ge=1)
    """Per-device batch size."""
    max_samples: int | None = Field(default=None, ge=1)
    """Train on the first N PQA-A examples (null: all)."""


class EvaluateParams(Section):
    batch_size: int = Field(default=16, ge=1)
    generate_examples: int | None = Field(default=None, ge=0)
    """How many test questions get a generated long answer (null: all 500)."""
    max_new_tokens: int = Field(default=128, ge=1)
    generation_batch_size: int = Field(default=16, ge=1)
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    no_repeat_ngram_size: int = Field(default=0, ge=0)
    bootstrap_samples: int = Field(default=1000, ge=100)
    """Resamples of the test questions for every 95% interval (evaluate and compare)."""
    bootstrap_seed: int = 0
    """Seed of those resamples."""


class Params(Section):
    data: DataParams = Field(default_factory=DataParams)
    prepare: PrepareParams = Field(default_factory=PrepareParams)
    model: ModelParams = Field(default_factory=ModelParams)
    pretrain: PretrainParams = Field(default_factory=PretrainParams)
    train: TrainParams = Field(default_factory=TrainParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)


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


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read and validate `params.yaml`."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StageError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise StageError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw, origin=str(path))
