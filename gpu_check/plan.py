"""The check's time plan: what each step should take on one H100, by `bench.gpu`'s cost model at
PQA-L's real lengths, at assumed rates and at rates PESSIMISM times worse with 30 ms decode
steps; and the cap the check puts on its own generation so that even the pessimistic plan
fits the budget. Also the train stage's MFU from its measured loop time.

The rates are assumptions until a GPU has measured them; the summary sets the measured time of
every step beside its expected one, so the first device run says which assumption was wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

H100_PEAK = 989e12  # dense bf16 FLOP/s, H100 SXM


@dataclass(frozen=True)
class Rates:
    mfu: float  # training and the scoring passes
    decode_step_s: float  # one greedy step of a generation batch, whatever its rows
    disk_bytes_per_s: float
    overhead: float  # factor on every step's fixed cost below


ASSUMED = Rates(mfu=0.20, decode_step_s=0.015, disk_bytes_per_s=1e9, overhead=1.0)
PESSIMISM = 1.5
PESSIMISTIC = Rates(
    mfu=ASSUMED.mfu / PESSIMISM,
    decode_step_s=0.030,
    disk_bytes_per_s=ASSUMED.disk_bytes_per_s / PESSIMISM,
    overhead=PESSIMISM,
)
# Seconds each step costs before its compute: process start, imports, building or loading
# GPT-2 Large, metrics and the bootstrap (evaluate), bench.gpu's own fixed training steps.
FIXED_S = {
    "install": 20.0,
    "imports": 10.0,
    "validate": 3.0,
    "download": 3.0,
    "ingest": 3.0,
    "prepare": 6.0,
    "pretrain": 3.0,
    "train": 20.0,
    "evaluate": 20.0,
    "compare": 5.0,
    "report": 3.0,
    "bench.gpu": 80.0,
}
CAPTURE_S = 0.5  # recording one batch's CUDA graph
GPU_MEMORY_FREE = 70 * 2**30  # an 80 GB card with GPT-2 Large loaded: what sizes `auto`


@dataclass(frozen=True)
class Workload:
    """What the default experiment computes, from the data and the committed params."""

    train_tokens: float  # per epoch
    train_flops_per_token: float
    epochs: int
    checkpoint_bytes: float  # all writes of the train stage
    test_examples: int
    forward_flops_per_prompt: float  # one scoring pass over one test prompt
    generated: int  # answers generated per evaluate stage
    generation_batch: int
    max_new_tokens: int


def workload(pubmedqa: Path, tokenizer: Path) -> Workload:
    """The default experiment's workload at full size (GPT-2 Large, PQA-L's own lengths)."""
    from bench.common import committed, length
    from bench.gpu import (
        TEST_EXAMPLES,
        checkpoint_bytes,
        flop_parameters,
        meta_model,
        training_flops_of_lengths,
    )
    from pubmedqa_gpt2.data.prepare import encode_records
    from pubmedqa_gpt2.data.records import read_official_json
    from pubmedqa_gpt2.model.decoding import auto_batch_size
    from pubmedqa_gpt2.model.loading import load_tokenizer, random_config

    config = random_config(committed("model", name="gpt2-large", init="random"))
    model = meta_model(config)
    records = read_official_json(pubmedqa / "ori_pqal.json")
    examples = encode_records(load_tokenizer(tokenizer), records, 1024)
    lengths = [length(ex) for ex in examples]
    mean_prompt = sum(len(ex.prompt_ids) for ex in examples) / len(examples)
    train, evaluate = committed("train"), committed("evaluate")
    parameters = sum(p.numel() for p in model.parameters())
    writes = train.epochs * checkpoint_bytes(parameters, parameters, train.resumable_checkpoints)
    generated = TEST_EXAMPLES if evaluate.generate_examples is None else evaluate.generate_examples
    batch = evaluate.generation_batch_size
    if batch == "auto":
        longest = max(len(ex.prompt_ids) for ex in examples) + evaluate.max_new_tokens
        batch = auto_batch_size(config, longest, 2, GPU_MEMORY_FREE, generated or 1)
    return Workload(
        train_tokens=450 * sum(lengths) / len(lengths),
        train_flops_per_token=training_flops_of_lengths(lengths, model) / sum(lengths),
        epochs=train.epochs,
        checkpoint_bytes=writes + 4 * parameters,
        test_examples=TEST_EXAMPLES,
        forward_flops_per_prompt=2 * flop_parameters(model)[0] * mean_prompt,
        generated=generated,
        generation_batch=batch,
        max_new_tokens=evaluate.max_new_tokens,
    )


def step_seconds(names: list[str], work: Workload, rates: Rates) -> dict[str, float]:
    """Expected seconds of each step at `rates`. Generation counts every batch at its full
    `max_new_tokens` steps (a batch runs until its longest answer ends)."""
    flops_per_s = rates.mfu * H100_PEAK
    train_s = work.epochs * work.train_tokens * work.train_flops_per_token / flops_per_s
    train_s += work.checkpoint_bytes / rates.disk_bytes_per_s
    batches = math.ceil(work.generated / work.generation_batch) if work.generated else 0
    evaluate_s = 2 * work.test_examples * work.forward_flops_per_prompt / flops_per_s
    evaluate_s += batches * (work.max_new_tokens * rates.decode_step_s + CAPTURE_S)
    seconds = {}
    for name in names:
        kind = name.split("@")[0]
        fixed = FIXED_S.get(kind, 5.0) * rates.overhead
        compute = {"train": train_s, "evaluate": evaluate_s}.get(kind, 0.0)
        seconds[name] = round(fixed + compute, 1)
    return seconds


def plan(names: list[str], pubmedqa: Path, tokenizer: Path, budget_s: float) -> dict:
    """Expected and pessimistic seconds per step; when the pessimistic total passes
    `budget_s`, the fewest generated answers cut (`evaluate.generate_examples`, a multiple of
    the generation batch) that bring it inside, as params overrides for the check only."""
    work = workload(pubmedqa, tokenizer)
    result: dict = {"assumed": vars(ASSUMED), "pessimistic_rates": vars(PESSIMISTIC)}
    overrides: dict = {}
    while True:
        expected = step_seconds(names, work, ASSUMED)
        pessimistic = step_seconds(names, work, PESSIMISTIC)
        if sum(pessimistic.values()) <= budget_s or work.generated <= work.generation_batch:
            break
        fewer = work.generated - work.generation_batch
        work = replace(work, generated=fewer - fewer % work.generation_batch)
        overrides = {"evaluate": {"generate_examples": work.generated}}
    result.update(
        expected_s=expected,
        pessimistic_s=pessimistic,
        total_expected_s=round(sum(expected.values()), 1),
        total_pessimistic_s=round(sum(pessimistic.values()), 1),
        generated_answers=work.generated,
        generation_batch=work.generation_batch,
        overrides=overrides,
    )
    result["fits"] = result["total_pessimistic_s"] <= budget_s
    if overrides:
        result["capped"] = (
            f"evaluate.generate_examples={work.generated} for the check only: the pessimistic "
            f"plan ({result['total_pessimistic_s']:.0f} s) "
            + ("fits" if result["fits"] else "still does not fit")
            + f" {budget_s:.0f} s"
        )
    return result


def training_mfu(work_dir: Path, perf: dict, seconds_key: str) -> float | None:
    """Model FLOPs per second of the train stage over the card's dense bf16 peak: FLOPs as
    bench.gpu counts them (6N + 12*L*d*T per token) over the prepared training set times the
    epochs run, divided by `perf[seconds_key]` (the training loop alone, or the whole run)."""
    from bench.gpu import meta_model, peak_flops, training_flops_of_lengths
    from pubmedqa_gpt2.core.config import load_params
    from pubmedqa_gpt2.data.token_files import read_prepared
    from pubmedqa_gpt2.model.loading import random_config

    peak = peak_flops(perf.get("device", ""))
    if peak is None or not perf.get(seconds_key):
        return None
    params = load_params(work_dir / "params.yaml")
    table = read_prepared(
        work_dir / "data/prepared/train.parquet", ["prompt_ids", "completion_ids"]
    )
    prompts = table.column("prompt_ids").to_pylist()
    completions = table.column("completion_ids").to_pylist()
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions, strict=True)]
    model = meta_model(random_config(params.model), params.train)
    flops = params.train.epochs * training_flops_of_lengths(lengths, model)
    return flops / perf[seconds_key] / peak
