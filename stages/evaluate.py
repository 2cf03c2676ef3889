"""Stage `evaluate`: one model on the official PubMedQA test set
(`pubmedqa_gpt2/evaluation/evaluate.py`).

    python -m stages.evaluate base        # the model before fine-tuning, built as train builds it
    python -m stages.evaluate finetuned   # models/finetuned

Writes `eval/<model>/{predictions.json (the official submission format), probabilities.json,
samples.jsonl, confusion.json, calibration.json (the reliability diagram's bins), details.json}`
and `metrics/eval_<model>.json`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import torch

from pubmedqa_gpt2.core.config import load_params
from pubmedqa_gpt2.core.errors import StageError, run_stage
from pubmedqa_gpt2.core.paths import EVALUATED, TEST_FILE
from pubmedqa_gpt2.data.token_files import check_fits
from pubmedqa_gpt2.evaluation.evaluate import evaluate_model, load_evaluated, write_outputs
from pubmedqa_gpt2.evaluation.testset import read_test
from pubmedqa_gpt2.gpu_claims import claim_gpus
from pubmedqa_gpt2.model.loading import inference_dtype, pick_device
from pubmedqa_gpt2.out_of_memory import EVALUATE_ADVICE, out_of_memory_message


def parse_which(argv: Sequence[str]) -> str:
    if len(argv) != 1 or argv[0] not in EVALUATED:
        raise StageError(f"usage: python -m stages.evaluate {'|'.join(EVALUATED)}")
    return argv[0]


def main() -> None:
    started = time.perf_counter()
    which = parse_which(sys.argv[1:])
    params = load_params()
    examples = read_test(TEST_FILE)
    claim_gpus(1)  # a free GPU of its own (several experiments may run at once), if any
    device = pick_device()
    dtype = inference_dtype(device)
    model, tokenizer = load_evaluated(which, params.model, dtype=dtype)
    model.to(device)
    if device.type == "cuda":
        # The peak of evaluating, not of drawing a random base model in fp32 before the cast.
        torch.cuda.reset_peak_memory_stats(device)
    check_fits(examples, model.config.n_positions, TEST_FILE)
    print(f"evaluate {which}: {len(examples)} test questions on {device} ({dtype})", flush=True)
    try:
        evaluation = evaluate_model(model, tokenizer, examples, params.evaluate, name=which)
    except torch.OutOfMemoryError as exc:
        raise StageError(out_of_memory_message(exc, EVALUATE_ADVICE)) from None
    evaluation.details["perf"].update(
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        runtime_s=round(time.perf_counter() - started, 3),
    )
    if device.type == "cuda":
        evaluation.details["perf"]["peak_gpu_allocated_bytes"] = torch.cuda.max_memory_allocated(
            device
        )
    write_outputs(which, evaluation)
    m = evaluation.metrics
    print(
        f"evaluate {which}: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, "
        f"perplexity {m['perplexity']:.2f}, {m['n_generated']} answers generated"
    )


if __name__ == "__main__":
    run_stage(main)
