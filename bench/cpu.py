"""`make bench`: the CPU benchmarks, each against its naive baseline measured in the same run.

    python -m bench.cpu                      # every benchmark, full size (~4 min on 2 idle cores)
    python -m bench.cpu --only prepare       # one or more of: training prepare evaluation pipeline
    python -m bench.cpu --quick              # tiny sizes: checks that everything runs

1. training: useful (non-padding) tokens/s of the project's Trainer path (`pubmedqa_gpt2/training/`:
   collator, dynamic padding, its sampler and precision) against the notebook's approach (every
   example padded to 1024, fp32, a plain PyTorch loop, labels = input ids), same examples and
   optimizer steps, on real PubMedQA examples and a small random GPT-2.
2. prepare: `python -m stages.prepare` on PQA-L plus N artificial records (PQA-L repeated under
   new PMIDs) up to pqa_artificial's 211,269: records/s, peak memory, and how time grows.
3. evaluation: decision scoring and greedy generation (`pubmedqa_gpt2/evaluation/answers.py`)
   batched against one question at a time.
4. pipeline: `dvc status` and `dvc repro prepare` with nothing changed, in a clone of HEAD, and the
   import time of each stage module (which import torch and transformers).

Needs the offline data: PUBMEDQA_DIR and GPT2_TOKENIZER_DIR (the Makefile sets both).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bench.common import (
    ROOT,
    committed,
    load_average,
    project_trainer,
    pubmedqa_examples,
    require_shared,
    small_gpt2,
    useful_tokens,
)
from pubmedqa_gpt2.core.config import EvaluateParams, ModelParams, TrainParams, load_params
from pubmedqa_gpt2.model.loading import build_model, load_tokenizer
from pubmedqa_gpt2.prompt import Encoded

NOTEBOOK_LENGTH = 1024  # the notebook padded every example to GPT-2's full context
ARTIFICIAL_RECORDS = 211_269  # rows of PubMedQA's pqa_artificial
ARTIFICIAL_PMID0 = 900_000_000  # synthetic PMIDs start here, far above any real one
PREPARE_TARGET_S = 180.0
PREPARE_TARGET_BYTES = 4 * 2**30
TRAINING_TARGET = 2.0
BENCHMARKS = ("training", "prepare", "evaluation", "pipeline")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big each benchmark is; `QUICK` only checks that everything runs."""

    train_examples: int = 64
    train_batch: int = 8
    train_shape: tuple[int, int, int] = (2, 128, 2)
    """n_layer, n_embd, n_head of the random GPT-2 trained."""
    prepare_records: tuple[int, ...] = (10_000, 50_000, ARTIFICIAL_RECORDS)
    """Artificial records added to PQA-L's 1,000, one `prepare` run each."""
    score_examples: int = 128
    generate_examples: int = 32
    max_new_tokens: int = 32
    eval_shape: tuple[int, int, int] = (2, 128, 2)
    repeats: int = 3
    """Timings of the no-op `dvc` commands (the median is reported)."""


FULL = Sizes()
QUICK = Sizes(
    train_examples=8,
    train_batch=4,
    train_shape=(1, 32, 2),
    prepare_records=(200, 1_000),
    score_examples=8,
    generate_examples=4,
    max_new_tokens=4,
    eval_shape=(1, 32, 2),
    repeats=1,
)


def header(title: str, sizes: str) -> None:
    print(f"\n== {title}\n   {sizes}; {load_average()}, torch threads {torch.get_num_threads()}")


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """(fn's result, wall seconds)."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def shape_params(shape: tuple[int, int, int]) -> ModelParams:
    """A random GPT-2 of (n_layer, n_embd, n_head) with the offline tokenizer."""
    n_layer, n_embd, n_head = shape
    return small_gpt2(require_shared()[1], n_layer=n_layer, n_embd=n_embd, n_head=n_head)


# ---- 1. Training throughput ----


def notebook_epoch(model, tokenizer, examples: Sequence[Encoded], train: TrainParams) -> float:
    """Seconds of one epoch the notebook's way: every example padded to 1024 tokens, fp32,
    AdamW in a plain loop, labels = input ids (padding included), no scheduler or clipping."""
    rows = [ex.prompt_ids + ex.completion_ids for ex in examples]
    random.Random(train.seed).shuffle(rows)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.learning_rate)
    model.train()
    start = time.perf_counter()
    for i in range(0, len(rows), train.batch_size):
        batch = tokenizer.pad(
            {"input_ids": rows[i : i + train.batch_size]},
            padding="max_length",
            max_length=NOTEBOOK_LENGTH,
            return_tensors="pt",
        )
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - start


def bench_training(sizes: Sizes) -> dict[str, float]:
    """Useful tokens/s of the project's training path and of the notebook's, same examples."""
    params = shape_params(sizes.train_shape)
    tokenizer = load_tokenizer(params.tokenizer_source)
    examples = random.Random(0).sample(pubmedqa_examples(tokenizer), sizes.train_examples)
    train = committed("train", epochs=1, batch_size=sizes.train_batch)
    useful = useful_tokens(examples)
    steps = -(-len(examples) // train.batch_size)
    n_layer, n_embd, n_head = sizes.train_shape
    header(
        "1. Training throughput: useful (non-padding) tokens/s",
        f"random GPT-2 n_layer={n_layer} n_embd={n_embd} n_head={n_head}; "
        f"{len(examples)} PubMedQA examples ({useful:,} tokens), batch {train.batch_size}, "
        f"{steps} optimizer steps each",
    )
    model = build_model(params, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        trainer, clock = project_trainer(model, examples, train, tokenizer.pad_token_id, Path(tmp))
        trainer.train()
    project_s, project_positions = clock.seconds[0], clock.positions[0]
    sampler = trainer.args.train_sampling_strategy
    precision = "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "fp32"

    notebook_s = notebook_epoch(
        build_model(params, dtype=torch.float32), tokenizer, examples, train
    )
    notebook_positions = len(examples) * NOTEBOOK_LENGTH

    def line(name: str, seconds: float, positions: int) -> None:
        print(
            f"   {name:<54} {useful / seconds:>7,.0f} useful tokens/s  ({seconds:6.1f} s; "
            f"{useful / positions:4.0%} of {positions:,} computed positions are real)"
        )

    line("notebook: pad to 1024, fp32, plain loop", notebook_s, notebook_positions)
    line(
        f"project: Trainer + Collator, {sampler} sampler, {precision}",
        project_s,
        project_positions,
    )
    ratio = notebook_s / project_s
    print(
        f"   ratio project/notebook: {ratio:.2f}x  (target >= {TRAINING_TARGET:g}x: "
        f"{verdict(ratio >= TRAINING_TARGET)})"
    )
    return {
        "project_tokens_per_s": useful / project_s,
        "notebook_tokens_per_s": useful / notebook_s,
        "ratio": ratio,
    }


# ---- 2. prepare at pqa_artificial scale ----


def prepare_workdir(folder: Path, labeled: list, artificial: int, tokenizer_dir: Path) -> None:
    """A stage working directory: data/raw with PQA-L and `artificial` records, params.yaml."""
    import yaml

    from pubmedqa_gpt2.core.paths import RAW_ARTIFICIAL, RAW_DIR, RAW_LABELED
    from pubmedqa_gpt2.data.records import write_jsonl

    (folder / RAW_DIR).mkdir(parents=True)
    write_jsonl(folder / RAW_LABELED, labeled)
    copies = (
        dataclasses.replace(record, pmid=str(ARTIFICIAL_PMID0 + i))
        for i, record in zip(range(artificial), itertools.cycle(labeled))
    )
    write_jsonl(folder / RAW_ARTIFICIAL, copies)
    model = committed("model", name="gpt2", tokenizer=str(tokenizer_dir))
    params = load_params(ROOT / "params.yaml").model_copy(update={"model": model})
    (folder / "params.yaml").write_text(yaml.safe_dump(params.model_dump()), encoding="utf-8")


# Runs argv[1:] and prints its peak resident set (KiB) last. A child started straight from the
# benchmark would report the benchmark's own memory as its peak (Linux keeps the high-water mark
# of the process it was forked from), so a bare interpreter starts it instead.
LAUNCHER = (
    "import os, subprocess, sys; child = subprocess.Popen(sys.argv[1:]); "
    "_, status, usage = os.wait4(child.pid, 0); child.returncode = 0; "
    "print(usage.ru_maxrss, flush=True); sys.exit(os.waitstatus_to_exitcode(status))"
)


def run_measured(command: Sequence[str], cwd: Path, env: dict[str, str]) -> tuple[float, int, str]:
    """(wall seconds, peak resident bytes, output) of a command; SystemExit if it fails."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *command],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seconds = time.perf_counter() - start
    output, _, peak_kib = proc.stdout.rstrip("\n").rpartition("\n")
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed in {cwd}:\n{proc.stdout[-3000:]}")
    return seconds, int(peak_kib) * 1024, output


def stage_env() -> dict[str, str]:
    """The environment of a child stage: offline, and this interpreter first on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    pubmedqa, tokenizer = require_shared()
    return os.environ | {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "PUBMEDQA_DIR": str(pubmedqa),
        "GPT2_TOKENIZER_DIR": str(tokenizer),
    }


def bench_prepare(sizes: Sizes) -> dict[str, Any]:
    """Records/s and peak memory of the prepare stage as the artificial records grow."""
    from pubmedqa_gpt2.data.records import read_official_json

    pubmedqa, tokenizer_dir = require_shared()
    labeled = read_official_json(pubmedqa / "ori_pqal.json")
    header(
        "2. prepare at pqa_artificial scale: python -m stages.prepare (a child process)",
        f"PQA-L's {len(labeled):,} records + N artificial (PQA-L repeated under new PMIDs), "
        f"N = {', '.join(f'{n:,}' for n in sizes.prepare_records)}",
    )
    runs = []
    for artificial in sizes.prepare_records:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            prepare_workdir(folder, labeled, artificial, tokenizer_dir)
            seconds, peak, _ = run_measured(
                [sys.executable, "-m", "stages.prepare"], folder, stage_env()
            )
            data = json.loads((folder / "metrics/data.json").read_text())
        records = len(labeled) + artificial
        examples = sum(data[split]["examples"] for split in ("train", "dev", "test", "artificial"))
        runs.append(
            {
                "artificial": artificial,
                "records": records,
                "examples": examples,
                "seconds": seconds,
                "peak_bytes": peak,
            }
        )
        print(
            f"   N={artificial:>9,}: {seconds:7.1f} s  {records / seconds:>7,.0f} records/s  "
            f"peak RSS {peak / 2**30:5.2f} GiB  ({examples:,} examples written)"
        )
    first, last = runs[0], runs[-1]
    growth = last["seconds"] / first["seconds"]
    # Time = fixed start-up + records / marginal rate: the line through the smallest and largest.
    marginal = (last["records"] - first["records"]) / (last["seconds"] - first["seconds"])
    startup = first["seconds"] - first["records"] / marginal
    print(
        f"   growth N={first['artificial']:,} -> {last['artificial']:,}: "
        f"{last['records'] / first['records']:.1f}x the records, {growth:.1f}x the time "
        f"(start-up {startup:.1f} s + {marginal:,.0f} records/s), "
        f"{last['peak_bytes'] / first['peak_bytes']:.2f}x the peak memory"
    )
    if last["artificial"] == ARTIFICIAL_RECORDS:
        print(
            f"   target at 211,269: < {PREPARE_TARGET_S:.0f} s: "
            f"{verdict(last['seconds'] < PREPARE_TARGET_S)}; < 4 GiB: "
            f"{verdict(last['peak_bytes'] < PREPARE_TARGET_BYTES)}"
        )
    return {
        "runs": runs,
        "time_growth": growth,
        "marginal_records_per_s": marginal,
        "startup_s": startup,
    }


# ---- 3. Evaluation: batched against one at a time ----


def bench_evaluation(sizes: Sizes) -> dict[str, float]:
    """Examples/s of decision scoring and of generation, batched and one at a time."""
    from pubmedqa_gpt2.evaluation.answers import decide, generate_answers
    from pubmedqa_gpt2.model.decoding import AUTO_BATCH_CPU

    params = shape_params(sizes.eval_shape)
    tokenizer = load_tokenizer(params.tokenizer_source)
    examples = random.Random(1).sample(pubmedqa_examples(tokenizer), sizes.score_examples)
    prompts = [ex.prompt_ids for ex in examples]
    batched = committed("evaluate", max_new_tokens=sizes.max_new_tokens)
    if batched.generation_batch_size == "auto":  # what `auto` is without a GPU
        batched = committed(
            "evaluate", max_new_tokens=sizes.max_new_tokens, generation_batch_size=AUTO_BATCH_CPU
        )
    single = committed(
        "evaluate", max_new_tokens=sizes.max_new_tokens, batch_size=1, generation_batch_size=1
    )
    n_layer, n_embd, n_head = sizes.eval_shape
    header(
        "3. Evaluation: the evaluate stage's decide and generate_answers, batched vs one at a time",
        f"random GPT-2 n_layer={n_layer} n_embd={n_embd} n_head={n_head}; "
        f"{len(prompts)} PubMedQA prompts scored, {sizes.generate_examples} answers of "
        f"{sizes.max_new_tokens} tokens generated (greedy, KV cache)",
    )
    model = build_model(params, dtype=torch.float32)
    figures: dict[str, float] = {}

    def compare(what: str, run: Callable[[EvaluateParams], Any], n: int, size: int) -> Any:
        (one, one_s) = timed(run, single)
        (many, many_s) = timed(run, batched)
        ratio = one_s / many_s
        print(
            f"   {what}: batch {size}: {n / many_s:8.1f} examples/s; one at a time: "
            f"{n / one_s:8.1f} examples/s; ratio {ratio:.2f}x"
        )
        figures[f"{what}_batched_per_s"] = n / many_s
        figures[f"{what}_single_per_s"] = n / one_s
        figures[f"{what}_ratio"] = ratio
        return one, many

    (labels_1, probs_1), (labels_b, probs_b) = compare(
        "scoring",
        lambda s: decide(model, tokenizer, prompts, s.batch_size, None),
        len(prompts),
        batched.batch_size,
    )
    chosen = prompts[: sizes.generate_examples]
    answers_1, answers_b = compare(
        "generation",
        lambda s: generate_answers(model, tokenizer, chosen, labels_b[: len(chosen)], s, None),
        len(chosen),
        batched.generation_batch_size,
    )
    gap = max(abs(a[k] - b[k]) for a, b in zip(probs_1, probs_b, strict=True) for k in a)
    agree = sum(a == b for a, b in zip(labels_1, labels_b, strict=True))
    same = sum(a == b for a, b in zip(answers_1, answers_b, strict=True))
    print(
        f"   batched = one at a time: same decisions {agree}/{len(prompts)} (max probability "
        f"gap {gap:.1e}), same answers {same}/{len(chosen)}"
    )
    return figures


# ---- 4. Pipeline overhead ----


def median_time(
    command: Sequence[str], cwd: Path, env: dict[str, str], repeats: int
) -> tuple[float, str]:
    """(median wall seconds, output of the last run)."""
    times, output = [], ""
    for _ in range(repeats):
        seconds, _, output = run_measured(command, cwd, env)
        times.append(seconds)
    return statistics.median(times), output


IMPORT_PROBE = (
    "import json, sys, time; t = time.perf_counter(); import {module}; "
    "print(json.dumps([time.perf_counter() - t, 'torch' in sys.modules, "
    "'transformers' in sys.modules]))"
)


def import_profile(module: str) -> tuple[float, bool, bool]:
    """(seconds to import `module` in a fresh interpreter, torch loaded?, transformers loaded?)."""
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE.format(module=module)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    seconds, torch_loaded, transformers_loaded = json.loads(out.splitlines()[-1])
    return seconds, torch_loaded, transformers_loaded


def bench_pipeline(sizes: Sizes) -> dict[str, Any]:
    """dvc's no-op overhead in a fresh clone, and what importing each stage module costs."""
    env = stage_env()
    dvc = [sys.executable, "-m", "dvc"]
    header(
        "4. Pipeline overhead: dvc with nothing changed, stage module imports",
        f"a clone of HEAD with the smoke params; median of {sizes.repeats} runs each",
    )
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        run_measured(["git", "clone", "--quiet", str(ROOT), str(repo)], Path(tmp), env)
        run_measured(
            ["make", f"PYTHON={sys.executable}", "offline-data", "smoke-params"], repo, env
        )
        first_s, _, _ = run_measured([*dvc, "repro", "prepare"], repo, env)
        status_s, _ = median_time([*dvc, "status"], repo, env, sizes.repeats)
        noop_s, output = median_time([*dvc, "repro", "prepare"], repo, env, sizes.repeats)
    skipped = "up to date" in output
    print(f"   dvc repro prepare, first run (download, ingest, prepare): {first_s:6.1f} s")
    print(
        f"   dvc repro prepare, nothing changed:                      {noop_s:6.1f} s  "
        f"({noop_s / first_s:.0%} of the first run; stages skipped: {'yes' if skipped else 'NO'})"
    )
    print(f"   dvc status (whole pipeline):                             {status_s:6.1f} s")

    # The stage modules in pipeline order, then the console script's.
    commands = re.findall(r"python -m (stages\.\w+)", (ROOT / "dvc.yaml").read_text())
    modules = [*dict.fromkeys(commands), "pubmedqa_gpt2.cli"]
    reference = {name: import_profile(name)[0] for name in ("torch", "transformers")}
    print(
        f"   import alone (fresh interpreter): torch {reference['torch']:.2f} s, "
        f"transformers {reference['transformers']:.2f} s"
    )
    figures: dict[str, Any] = {
        "dvc_first_repro_s": first_s,
        "dvc_noop_repro_s": noop_s,
        "dvc_status_s": status_s,
        "noop_skipped": skipped,
        "imports": {},
    }
    for module in modules:
        seconds, torch_loaded, transformers_loaded = import_profile(module)
        figures["imports"][module] = {
            "seconds": seconds,
            "torch": torch_loaded,
            "transformers": transformers_loaded,
        }
        print(
            f"   import {module:<16} {seconds:5.2f} s   torch: {'yes' if torch_loaded else 'no':<3}"
            f"  transformers: {'yes' if transformers_loaded else 'no'}"
        )
    return figures


RUNNERS: dict[str, Callable[[Sizes], Any]] = {
    "training": bench_training,
    "prepare": bench_prepare,
    "evaluation": bench_evaluation,
    "pipeline": bench_pipeline,
}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that all runs")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    args = parser.parse_args(argv)
    require_shared()
    sizes = QUICK if args.quick else FULL
    print(f"bench.cpu ({'quick' if args.quick else 'full'} sizes): {', '.join(args.only)}")
    start = time.perf_counter()
    results = {name: RUNNERS[name](sizes) for name in BENCHMARKS if name in args.only}
    print(f"\nbench.cpu done in {time.perf_counter() - start:.0f} s; {load_average()}")
    return results


if __name__ == "__main__":
    main()
