"""What the benchmarks (`bench/cpu.py`, `bench/gpu.py`) and the GPU check share: the PubMedQA
examples encoded by the project's template (`pubmedqa_gpt2/prompt.py`), and the project's own
Trainer (`pubmedqa_gpt2/training/recipe.py::make_trainer`) with a clock on each epoch; params
come from the committed `params.yaml` (`committed`), the one place their values are set.
Figures are printed, never asserted."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PrinterCallback, TrainerCallback, set_seed

from bench.shared_data import PUBMEDQA_DIR, ROOT, SHARED, TOKENIZER_DIR, require_shared
from pubmedqa_gpt2.core.config import ModelParams, TrainParams, load_params, with_changes
from pubmedqa_gpt2.data.prepare import encode_records
from pubmedqa_gpt2.data.records import read_official_json
from pubmedqa_gpt2.prompt import Encoded
from pubmedqa_gpt2.training.collator import Collator
from pubmedqa_gpt2.training.recipe import make_trainer
from pubmedqa_gpt2.training.settings import run_arguments

__all__ = ["PUBMEDQA_DIR", "ROOT", "SHARED", "TOKENIZER_DIR", "require_shared"]


def committed(section: str, **changes):
    """A section of the committed params.yaml with `changes` on top (nested sections as
    mappings), validated: the experiment's own values wherever a benchmark sets none."""
    params = load_params(ROOT / "params.yaml")
    return getattr(with_changes(params, {section: changes}) if changes else params, section)


def small_gpt2(tokenizer_dir: Path | None, **shape: int) -> ModelParams:
    """Params of a random GPT-2 of the given shape (n_layer, n_embd, n_head), seeded."""
    return committed(
        "model",
        name="gpt2",
        init="random",
        tokenizer=str(tokenizer_dir) if tokenizer_dir else None,
        overrides=dict(shape),
        seed=0,
    )


def pubmedqa_examples(tokenizer, max_length: int = 1024) -> list[Encoded]:
    """The 1,000 PQA-L questions, encoded as `prepare` encodes them (prompt + completion)."""
    records = read_official_json(require_shared()[0] / "ori_pqal.json")
    return encode_records(tokenizer, records, max_length)


def length(example: Encoded) -> int:
    """Tokens of prompt and completion together."""
    return len(example.prompt_ids) + len(example.completion_ids)


def useful_tokens(examples: Sequence[Encoded]) -> int:
    """Real (non-padding) tokens: what a training epoch over `examples` learns from."""
    return sum(length(ex) for ex in examples)


class CountingCollator(Collator):
    """The project's collator, counting the token positions it hands the model (padding too)."""

    def __init__(self, pad_id: int):
        super().__init__(pad_id)
        self.positions = 0

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor | int]:
        batch = super().__call__(features)
        self.positions += batch["input_ids"].numel()
        return batch


class EpochClock(TrainerCallback):
    """Wall time and computed positions of each training epoch: its optimizer steps only, not
    the setup before nor evaluation after. Every batch of an epoch is collated within it."""

    def __init__(self, collator: CountingCollator) -> None:
        self.collator = collator
        self.seconds: list[float] = []
        self.positions: list[int] = []
        self._start = 0.0
        self._positions = 0

    @staticmethod
    def _now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._positions = self.collator.positions
        self._start = self._now()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.seconds.append(self._now() - self._start)
        self.positions.append(self.collator.positions - self._positions)


def project_trainer(
    model, examples: Sequence[Encoded], train: TrainParams, pad_id: int, output_dir: Path, **args
):
    """(trainer, clock): the Trainer the training recipe builds, over `examples`.

    Same arguments (precision, warmup, checkpointing, sampler), the same trainer class,
    features and collator; only what is not timed is off: evaluation, checkpoints, logging,
    progress bars. `args` overrides further TrainingArguments (`optim`, `torch_compile`).
    """
    _, arguments = run_arguments(train, len(examples), 1, output_dir)
    arguments = dataclasses.replace(
        arguments,
        output_dir=str(output_dir),
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
        logging_strategy="no",
        disable_tqdm=True,
        **args,
    )
    model.config.pad_token_id = pad_id
    collator = CountingCollator(pad_id)
    clock = EpochClock(collator)
    set_seed(train.seed)
    trainer = make_trainer(model, arguments, train, examples, [], collator, [clock])
    trainer.remove_callback(PrinterCallback)  # its end-of-run summary is not this benchmark's
    return trainer, clock


def load_average() -> str:
    """The 1-minute load average and the core count, for every benchmark's header."""
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
