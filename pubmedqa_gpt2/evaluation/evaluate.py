"""One model on the official PubMedQA test set: every figure the evaluate stage writes.

Decisions (the benchmark's task): one forward pass per prompt, the prediction is the most
likely of " yes", " no", " maybe". Long answers (what the notebook measured): greedy
generation after the predicted decision, scored against the reference with ROUGE, METEOR and
BLEU (`metrics.py`), and the perplexity of the reference long answer given the prompt and the
gold decision. Calibration of the decisions (`calibration.py`): the expected calibration error
and the reliability diagram's bins. `metrics/eval_<model>.json` holds the headline figures with
their bootstrap intervals; `details.json` says how the intervals were computed ("ci_method": a
sentence, no metric, so that `dvc metrics diff` stays narrow), and its "perf" key alone holds
timings, so that the other figures are equal whenever params, data and model are.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pubmedqa_gpt2.core.config import EvaluateParams, ModelParams
from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.core.io import atomic_file, write_json
from pubmedqa_gpt2.core.paths import EVAL_DIR, FINETUNED, eval_metrics
from pubmedqa_gpt2.evaluation import calibration, statistics
from pubmedqa_gpt2.evaluation.answers import decide, generate_answers, perplexity, reference_nll
from pubmedqa_gpt2.evaluation.metrics import decision_metrics, generation_metrics
from pubmedqa_gpt2.evaluation.testset import TestExample
from pubmedqa_gpt2.model.loading import build_model, load_model, load_tokenizer


@dataclass(frozen=True)
class Evaluation:
    """Everything the stage writes, computed before anything is written."""

    predictions: dict[str, str]
    probabilities: dict[str, dict[str, float]]
    samples: list[dict[str, Any]]
    confusion: list[dict[str, str]]
    reliability: list[dict[str, Any]]
    """The reliability diagram's bins (`calibration.py`): `eval/<model>/calibration.json`."""
    metrics: dict[str, Any]
    """The headline figures with their intervals: `metrics/eval_<model>.json`."""
    details: dict[str, Any]
    """Per-class scores, the confusion matrix, timings: `eval/<model>/details.json`."""


def load_evaluated(which: str, params: ModelParams, dtype: torch.dtype | None = None):
    """(model, tokenizer): `base` is built exactly as train builds it; `finetuned` is loaded."""
    if which == "base":
        return build_model(params, dtype=dtype), load_tokenizer(params.tokenizer_source)
    if not FINETUNED.is_dir():
        raise StageError(f"{FINETUNED}: not found; run the train stage first (dvc repro train)")
    model = load_model(FINETUNED, dtype=dtype, what=str(FINETUNED))
    return model, load_tokenizer(FINETUNED)


def confusion_rows(gold: Sequence[str], pred: Sequence[str]) -> list[dict[str, str]]:
    """One {"actual", "predicted"} row per question: what `dvc plots`' confusion template reads."""
    return [{"actual": g, "predicted": p} for g, p in zip(gold, pred, strict=True)]


def evaluate_model(
    model,
    tokenizer,
    examples: Sequence[TestExample],
    settings: EvaluateParams,
    name: str | None = None,
) -> Evaluation:
    """Decisions on every example, long answers on the first `settings.generate_examples`.

    `name` labels the progress bars (None shows none).
    """
    # Imported here: nltk and sklearn take a second or two, and the CLI computes no metric.

    progress = (lambda what: f"{name}: {what}") if name else (lambda what: None)
    gold = [ex.decision for ex in examples]
    prompts = [ex.prompt_ids for ex in examples]

    start = time.perf_counter()
    pred, probabilities = decide(model, tokenizer, prompts, settings.batch_size, progress("decide"))
    scoring_s = time.perf_counter() - start

    start = time.perf_counter()
    nll, tokens = reference_nll(
        model, tokenizer, examples, settings.batch_size, progress("perplexity")
    )
    perplexity_s = time.perf_counter() - start

    limit = settings.generate_examples
    n_generated = len(examples) if limit is None else min(limit, len(examples))
    start, decoding = time.perf_counter(), {}
    generated = generate_answers(
        model, tokenizer, prompts[:n_generated], pred[:n_generated], settings,
        progress("generate"), decoding,
    )  # fmt: skip
    generation_s = time.perf_counter() - start

    samples = [
        {
            "pmid": ex.pmid,
            "question": ex.question,
            "gold_decision": ex.decision,
            "predicted_decision": pred[i],
            "correct": pred[i] == ex.decision,
            "probabilities": probabilities[i],
            "reference_answer": ex.long_answer,
            "reference_nll": nll[i],
            "reference_tokens": tokens[i],
            "generated_answer": generated[i] if i < n_generated else None,
        }
        for i, ex in enumerate(examples)
    ]
    decisions = decision_metrics(gold, pred)
    metrics: dict[str, Any] = {
        "n_test": len(examples),
        "accuracy": decisions["accuracy"],
        "macro_f1": decisions["macro_f1"],
        "perplexity": perplexity(nll, tokens),
        "n_generated": n_generated,
    }
    details: dict[str, Any] = {
        "per_class": decisions["per_class"],
        "confusion_matrix": decisions["confusion_matrix"],
    }
    if n_generated:
        references = [ex.long_answer for ex in examples[:n_generated]]
        scores, figures = generation_metrics(references, generated)
        for sample, score in zip(samples, scores, strict=False):
            sample.update(score)
        details["meteor_wordnet"] = figures.pop("meteor_wordnet")
        metrics.update(figures)
    n_resamples, seed = settings.bootstrap_samples, settings.bootstrap_seed
    confidence, correct = calibration.confidences(samples)
    metrics["ece"] = round(float(calibration.expected_calibration_error(confidence, correct)), 6)
    metrics["ci95"] = statistics.figure_intervals(samples, n_resamples, seed)
    details["ci_method"] = statistics.describe_method(n_resamples, seed, len(samples))
    details["perf"] = {
        "scoring_examples_per_s": round(len(examples) / scoring_s, 3),
        "perplexity_examples_per_s": round(len(examples) / perplexity_s, 3),
        "scoring_s": round(scoring_s, 3),
        "perplexity_s": round(perplexity_s, 3),
        "generation_s": round(generation_s, 3),
    }
    if n_generated:
        details["perf"]["generation_examples_per_s"] = round(n_generated / generation_s, 3)
        # How the decoding ran: mode, rows per batch, steps after the prompts' own pass and
        # their milliseconds each (on a GPU the figure that says whether the host kept up).
        details["perf"]["decode_step"] = decoding["decode_step"]
        details["perf"]["generation_batch_size"] = decoding["generation_batch_size"]
        details["perf"]["decode_steps"] = decoding["decode_steps"]
        if decoding["decode_steps"]:
            details["perf"]["decode_step_ms"] = round(decoding["decode_step_ms"], 3)
        if "fallback" in decoding:
            details["perf"]["decode_fallback"] = decoding["fallback"]
    return Evaluation(
        predictions={ex.pmid: p for ex, p in zip(examples, pred, strict=True)},
        probabilities={ex.pmid: p for ex, p in zip(examples, probabilities, strict=True)},
        samples=samples,
        confusion=confusion_rows(gold, pred),
        reliability=calibration.reliability_rows(confidence, correct),
        metrics=metrics,
        details=details,
    )


def write_outputs(which: str, evaluation: Evaluation) -> None:
    """Every output of one model, each file written whole or not at all."""
    folder = EVAL_DIR / which
    write_json(folder / "predictions.json", evaluation.predictions)
    write_json(folder / "probabilities.json", evaluation.probabilities)
    write_json(folder / "confusion.json", evaluation.confusion)
    write_json(folder / "calibration.json", evaluation.reliability)
    write_json(folder / "details.json", evaluation.details)
    with atomic_file(folder / "samples.jsonl") as f:
        for sample in evaluation.samples:
            f.write(json.dumps(sample, ensure_ascii=False) + "\n")
    write_json(eval_metrics(which), evaluation.metrics)
