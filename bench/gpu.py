"""GPU benchmark: GPT-2 Large training throughput, MFU and peak memory, and the pipeline's cost.

    python -m bench.gpu                                  # one H100: a few minutes
    python -m bench.gpu --optim adamw_torch --compile --out gpu.json
    python -m bench.gpu --tiny                           # 2-layer model, CPU: checks that it runs

GPT-2 Large with random weights (`pubmedqa_gpt2/model/loading.py`; the same FLOPs as the real
model) is trained through the project's Trainer path (`pubmedqa_gpt2/training/`: fp32 master
weights with bf16 autocast where the GPU has it, SDPA attention, dynamic padding,
length-grouped batches), for full fine-tuning, full fine-tuning with gradient checkpointing,
and LoRA (`apply_lora`), at PubMedQA's lengths and at 1024 tokens. Each run trains one warm-up
epoch and one timed epoch of `--steps` optimizer steps and prints:

- useful tokens/s: real (non-padding) tokens learnt per second of the timed epoch;
- MFU: model FLOPs of those tokens per second over the card's dense bf16 peak (read from the
  device name). FLOPs per token are 6N + 12*L*d*T for full fine-tuning (N: parameters without
  the position embeddings, L layers, width d, T the example's length); with LoRA the frozen
  weights get no weight gradients, so 4N + 2*N_trainable + 12*L*d*T. Recomputation under
  gradient checkpointing is not counted (it is MFU, not hardware FLOPs utilisation). The
  project's collator runs the LM head only where labels are (the completion); the formula
  counts it at every token, so at PubMedQA's lengths MFU reads up to ~7% high. At 1024 every
  token but the first is learnt, so there the formula is the work done;
- peak memory: torch.cuda.max_memory_allocated during the run.

PubMedQA's lengths are the real ones (PQA-L through the project's template, mean ~390 tokens)
when PUBMEDQA_DIR and GPT2_TOKENIZER_DIR point at the data, else a fixed 384 (the last 54,
PQA-L's mean, as completion). Then decision
scoring, perplexity and generation (`pubmedqa_gpt2/model/{scoring,generate}.py`, bf16) are timed
and the compute of the default `dvc repro` (PQA-L, 3 epochs, both evaluations) is estimated.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from bench.common import (
    PUBMEDQA_DIR,
    TOKENIZER_DIR,
    committed,
    length,
    project_trainer,
    pubmedqa_examples,
    useful_tokens,
)
from pubmedqa_gpt2.core.config import ModelParams, TrainParams
from pubmedqa_gpt2.model.loading import build_model, load_tokenizer
from pubmedqa_gpt2.prompt import Encoded

# Dense bf16 peak FLOP/s by the exact name torch reports (NVIDIA datasheets, no sparsity); a
# card not listed gets no MFU rather than a neighbour's rating.
PEAK_FLOPS = {
    "NVIDIA H100 80GB HBM3": 989e12,  # SXM
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H100 NVL": 835e12,
    "NVIDIA H200": 989e12,  # SXM
    "NVIDIA H200 NVL": 835e12,
    "NVIDIA GH200 480GB": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12,
    "NVIDIA A100-PCIE-40GB": 312e12,
}
MODES = ("full", "checkpointing", "lora")
FALLBACK_LENGTH = 384  # PubMedQA-like length when the data is not available
FALLBACK_COMPLETION = 54  # PQA-L's mean completion (decision + long answer) in tokens
LABEL_IDS = (0, 1, 2)  # scoring costs the same whichever three tokens are read
TRAIN_EXAMPLES, TEST_EXAMPLES = 450, 500  # the official PQA-L split: train (fold 0) and test
TARGET_MFU = 0.40
TARGET_PIPELINE_S = 600.0


@dataclass(frozen=True)
class Settings:
    """What one benchmark run measures; `--tiny` shrinks everything to check it runs on CPU."""

    model: ModelParams
    batch_size: int
    steps: int
    long_length: int
    fallback_length: int
    fallback_completion: int
    eval_examples: int
    max_new_tokens: int
    modes: tuple[str, ...]
    optim: str | None  # None: the Trainer's default (adamw_torch_fused on torch >= 2.8)
    compile: bool
    write_test_bytes: int


def peak_flops(device_name: str) -> float | None:
    """The dense bf16 peak FLOP/s of a device by its exact name; None when unknown (or a CPU)."""
    return PEAK_FLOPS.get(device_name.strip())


def flop_parameters(model) -> tuple[int, int]:
    """(parameters that take part in matmuls, those of them trained): all but the position
    embeddings, which are a lookup. GPT-2's token embeddings are also its output layer."""
    skip = {id(p) for name, p in model.named_parameters() if name.endswith("wpe.weight")}
    params = [p for p in model.parameters() if id(p) not in skip]
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def training_flops(examples: Sequence[Encoded], model) -> float:
    """Model FLOPs of one training pass over `examples` (see the module docstring)."""
    return training_flops_of_lengths([length(ex) for ex in examples], model)


def training_flops_of_lengths(lengths: Sequence[int], model) -> float:
    """Model FLOPs of one training pass over examples of these lengths (prompt + completion)."""
    n_all, n_trained = flop_parameters(model)
    config = model.config
    per_token = 4 * n_all + 2 * n_trained
    return sum(t * (per_token + 12 * config.n_layer * config.n_embd * t) for t in lengths)


def synthetic_examples(
    n: int, tokens: int, completion: int, vocab: int, seed: int
) -> list[Encoded]:
    """`n` examples of exactly `tokens` random ids, the last `completion` of them learnt."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ids = [rng.randrange(vocab) for _ in range(tokens)]
        out.append(Encoded(ids[: tokens - completion], ids[tokens - completion :], shortened=False))
    return out


def clipped(example: Encoded, limit: int) -> Encoded:
    """The example cut to its first `limit` tokens (the tiny model's short context)."""
    if length(example) <= limit:
        return example
    ids = (example.prompt_ids + example.completion_ids)[:limit]
    cut = min(len(example.prompt_ids), limit - 1)
    return Encoded(ids[:cut], ids[cut:], shortened=True)


def workloads(settings: Settings, vocab: int) -> dict[str, list[Encoded]]:
    """The examples of one epoch for each length setting: "pubmedqa" and the long length."""
    n = settings.steps * settings.batch_size
    if PUBMEDQA_DIR and TOKENIZER_DIR:
        real = pubmedqa_examples(load_tokenizer(TOKENIZER_DIR))
        sample = random.Random(0).choices(real, k=n)
        pubmedqa = [clipped(ex, settings.long_length) for ex in sample]
    else:
        pubmedqa = synthetic_examples(
            n, settings.fallback_length, settings.fallback_completion, vocab, seed=0
        )
    # Every token but the first learnt: the LM head runs at every position, as 6N counts it.
    long = synthetic_examples(n, settings.long_length, settings.long_length - 1, vocab, seed=1)
    return {"pubmedqa": pubmedqa, str(settings.long_length): long}


def release(device: torch.device) -> None:
    """Free what the last run left, so that the next run's peak memory is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def train_run(
    model, examples: list[Encoded], train: TrainParams, settings: Settings, device: torch.device
) -> dict[str, float | None]:
    """Figures of one warm-up epoch plus one timed epoch over `examples`."""
    overrides: dict[str, Any] = {}
    if settings.optim:
        overrides["optim"] = settings.optim
    if settings.compile:
        overrides["torch_compile"] = True
    release(device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer, clock = project_trainer(
            model, examples, train, model.config.eos_token_id, Path(tmp), **overrides
        )
        trainer.train()
    seconds, positions = clock.seconds[-1], clock.positions[-1]
    useful = useful_tokens(examples)
    return {
        "tokens_per_s": useful / seconds,
        "useful_share": useful / positions,
        "model_flops_per_s": training_flops(examples, trainer.model) / seconds,
        "peak_memory_gib": (
            torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        ),
        "seconds": seconds,
        "precision": "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "fp32",
    }


def bench_training(
    settings: Settings, loads: dict[str, list[Encoded]], device: torch.device, peak: float | None
) -> list[dict]:
    """Every mode at every length setting; prints one line per run."""
    from pubmedqa_gpt2.training.lora import apply_lora

    runs: list[dict] = []
    for mode in settings.modes:
        train = committed(
            "train",
            epochs=2,
            batch_size=settings.batch_size,
            gradient_checkpointing=mode == "checkpointing",
            lora={"enabled": mode == "lora"},
        )
        model = build_model(settings.model, dtype=torch.float32)
        if not runs:
            print(f"   attention implementation: {model.config._attn_implementation}")
        if mode == "lora":
            model = apply_lora(model, train)
        for name, examples in loads.items():
            figures = train_run(model, examples, train, settings, device)
            mfu = figures["model_flops_per_s"] / peak if peak else None
            run = {"mode": mode, "lengths": name, **figures, "mfu": mfu}
            runs.append(run)
            memory = run["peak_memory_gib"]
            print(
                f"   {mode:<14} {name:>8}: {run['tokens_per_s']:>10,.0f} useful tokens/s  "
                f"MFU {'n/a' if mfu is None else f'{mfu:5.1%}'}  peak memory "
                f"{'n/a' if memory is None else f'{memory:5.1f} GiB'}  "
                f"({run['useful_share']:.0%} of positions real, {run['precision']})"
            )
        del model
        release(device)
    return runs


def bench_evaluation(
    settings: Settings, examples: Sequence[Encoded], device: torch.device
) -> dict[str, float]:
    """Examples/s of the evaluate stage's three model passes, at its default batch sizes."""
    from pubmedqa_gpt2.model.generate import generate_greedy
    from pubmedqa_gpt2.model.loading import inference_dtype
    from pubmedqa_gpt2.model.scoring import continuation_nll, score_decisions

    defaults = committed("evaluate")
    model = build_model(settings.model, dtype=inference_dtype(device)).to(device)
    eos = model.config.eos_token_id
    prompts = [ex.prompt_ids for ex in examples]
    passes = {
        "scoring": lambda: score_decisions(model, prompts, LABEL_IDS, defaults.batch_size, eos),
        "perplexity": lambda: continuation_nll(
            model, prompts, [ex.completion_ids for ex in examples], defaults.batch_size, eos
        ),
        "generation": lambda: generate_greedy(
            model,
            prompts,
            settings.max_new_tokens,
            eos_id=eos,
            pad_id=eos,
            batch_size=defaults.generation_batch_size,
            decode_step=defaults.decode_step,
        ),
    }
    passes["scoring"]()  # warm-up, untimed: the first kernels and allocations of this model
    rates = {}
    for name, run in passes.items():
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates[name] = len(prompts) / (time.perf_counter() - start)
        print(f"   {name:<10} {rates[name]:8.1f} examples/s")
    return rates


def meta_model(config, train: TrainParams | None = None):
    """A model of this config on the meta device (no memory, no weights), with LoRA's
    adapters when `train` enables them: what FLOPs and parameters are counted on."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    if train is not None and train.lora.enabled:
        from pubmedqa_gpt2.training.lora import apply_lora

        model = apply_lora(model, train)
    return model


def parameter_count(config) -> int:
    """Parameters of a model of this config (built on the meta device)."""
    return sum(p.numel() for p in meta_model(config).parameters())


def disk_write_rate(folder: Path, nbytes: int) -> float:
    """Bytes/s of writing `nbytes` to a file in `folder` and syncing it to disk, as a
    checkpoint is written (then deleted)."""
    block = os.urandom(1 << 24)
    path = folder / "write-rate.bin"
    start = time.perf_counter()
    with path.open("wb") as f:
        for _ in range(max(nbytes // len(block), 1)):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - start
    written = path.stat().st_size
    path.unlink()
    return written / seconds


def checkpoint_bytes(parameters: int, trained: int, resumable: bool) -> int:
    """Bytes of one training checkpoint: fp32 weights, plus AdamW's two fp32 moments of every
    trained parameter when the checkpoint is resumable (train.resumable_checkpoints)."""
    return 4 * parameters + (8 * trained if resumable else 0)


def pipeline_estimate(
    tokens_per_s: float,
    mean_tokens: float,
    rates: dict[str, float],
    epochs: int,
    write_s: float = 0.0,
) -> dict[str, float]:
    """Seconds of the default `dvc repro`: training compute, both evaluations, and the
    checkpoint writes (`write_s`, see `checkpoint_writes_s`)."""
    train_s = TRAIN_EXAMPLES * epochs * mean_tokens / tokens_per_s
    evaluate_s = 2 * TEST_EXAMPLES * sum(1 / rate for rate in rates.values())
    return {
        "train_s": train_s,
        "evaluate_s": evaluate_s,
        "checkpoint_write_s": write_s,
        "total_s": train_s + evaluate_s + write_s,
    }


def checkpoint_writes_s(
    parameters: int, trained: int, epochs: int, resumable: bool, bytes_per_s: float
) -> float:
    """Seconds to write a checkpoint at each epoch end and the final model (fp32 weights)."""
    total = epochs * checkpoint_bytes(parameters, trained, resumable) + 4 * parameters
    return total / bytes_per_s


def parse_args(argv: Sequence[str] | None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model, 2 steps, seq 64")
    parser.add_argument("--batch-size", type=int, default=committed("train").batch_size)
    parser.add_argument("--steps", type=int, help="timed optimizer steps per run (30; tiny 2)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--optim",
        help="the Trainer's optim, e.g. adamw_torch (foreach) against the default, "
        "adamw_torch_fused on torch >= 2.8",
    )
    parser.add_argument("--compile", action="store_true", help="torch_compile=True")
    parser.add_argument("--out", type=Path, help="also write every figure to this JSON file")
    parser.add_argument(
        "--scratch", type=Path, help="where checkpoint writes are timed (default: the temp dir)"
    )
    args = parser.parse_args(argv)
    tiny = {"n_layer": 2, "n_embd": 64, "n_head": 2} if args.tiny else {}
    settings = Settings(
        model=committed("model", name="gpt2-large", init="random", overrides=tiny),
        batch_size=args.batch_size,
        steps=args.steps or (2 if args.tiny else 30),
        long_length=64 if args.tiny else 1024,
        fallback_length=48 if args.tiny else FALLBACK_LENGTH,
        fallback_completion=8 if args.tiny else FALLBACK_COMPLETION,
        eval_examples=4 if args.tiny else 64,
        max_new_tokens=4 if args.tiny else committed("evaluate").max_new_tokens,
        modes=tuple(args.modes),
        optim=args.optim,
        compile=args.compile,
        write_test_bytes=(16 if args.tiny else 1024) << 20,
    )
    return settings, args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import transformers

    from pubmedqa_gpt2.model.loading import random_config

    settings, args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_flops(name)
    config = random_config(settings.model)
    shape = {key: getattr(config, key) for key in ("n_layer", "n_embd", "n_head")}
    loads = workloads(settings, config.vocab_size)
    print(
        f"bench.gpu on {name} (dense bf16 peak "
        f"{'unknown: MFU n/a' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'}); "
        f"torch {torch.__version__}, transformers {transformers.__version__}\n"
        f"   {settings.model.name} random weights {shape}; batch {settings.batch_size}, "
        f"{settings.steps} timed steps per run after a warm-up epoch; optimizer "
        f"{settings.optim or 'the Trainer default'}, torch.compile "
        f"{'on' if settings.compile else 'off'}"
    )
    source = "PubMedQA (PQA-L)" if PUBMEDQA_DIR and TOKENIZER_DIR else "fixed fallback"
    for key, examples in loads.items():
        lengths = [length(ex) for ex in examples]
        print(
            f"   lengths {key!r}: {len(examples)} examples, mean "
            f"{sum(lengths) / len(lengths):.0f}, max {max(lengths)} tokens"
            + (f" ({source})" if key == "pubmedqa" else "")
        )

    print("\n== Training throughput")
    runs = bench_training(settings, loads, device, peak)
    full = {r["lengths"]: r for r in runs if r["mode"] == "full"}
    long_full = full.get(str(settings.long_length))
    if long_full and long_full["mfu"] is not None:
        met = "met" if long_full["mfu"] >= TARGET_MFU else "MISSED"
        print(
            f"   full fine-tuning at {settings.long_length}: MFU {long_full['mfu']:.1%} "
            f"(target >= {TARGET_MFU:.0%}: {met})"
        )

    print("\n== Evaluation passes (the evaluate stage's dtype and default batch sizes)")
    rates = bench_evaluation(settings, loads["pubmedqa"][: settings.eval_examples], device)

    result: dict[str, Any] = {
        "device": name,
        "peak_flops": peak,
        "settings": {field.name: getattr(settings, field.name) for field in fields(Settings)}
        | {"model": settings.model.model_dump(), "shape": shape},
        "lengths_from": source,
        "training": runs,
        "evaluation_examples_per_s": rates,
    }
    if "pubmedqa" in full:
        defaults = committed("train")
        epochs = defaults.epochs
        mean = useful_tokens(loads["pubmedqa"]) / len(loads["pubmedqa"])
        with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
            write_rate = disk_write_rate(Path(tmp), settings.write_test_bytes)
        parameters = parameter_count(config)
        write_s = checkpoint_writes_s(
            parameters, parameters, epochs, defaults.resumable_checkpoints, write_rate
        )
        estimate = pipeline_estimate(full["pubmedqa"]["tokens_per_s"], mean, rates, epochs, write_s)
        estimate["disk_write_bytes_per_s"] = write_rate
        result["pipeline_estimate"] = estimate
        verdict = "met" if estimate["total_s"] < TARGET_PIPELINE_S else "MISSED"
        resumable = checkpoint_bytes(parameters, parameters, True)
        print(
            f"\n== Default dvc repro (train {TRAIN_EXAMPLES} examples x {epochs} epochs, "
            f"evaluate 2 x {TEST_EXAMPLES}, checkpoint writes; without model download and "
            f"loading, dev evaluation)\n"
            f"   disk writes {write_rate / 1e9:.2f} GB/s (fsync'd): a weights-only checkpoint "
            f"{checkpoint_bytes(parameters, parameters, False) / 1e9:.2f} GB, a resumable one "
            f"{resumable / 1e9:.2f} GB\n"
            f"   train {estimate['train_s']:.0f} s + evaluate {estimate['evaluate_s']:.0f} s + "
            f"checkpoints {write_s:.0f} s = {estimate['total_s'] / 60:.1f} min"
            + (f" (target < {TARGET_PIPELINE_S / 60:.0f} min: {verdict})" if peak else "")
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
