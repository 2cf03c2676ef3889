"""The evaluate stage: one model on the official PubMedQA test set.

    python -m stages.evaluate base        # the model before fine-tuning, built as train builds it
    python -m stages.evaluate finetuned   # models/finetuned

Decisions (the benchmark's task): one forward pass per prompt, the prediction is the most
likely of " yes", " no", " maybe" (stages/scoring.py). Long answers (what the notebook
measured): greedy generation after the predicted decision (stages/generate.py), scored
against the reference with ROUGE, METEOR and BLEU (stages/metrics.py), and the perplexity of
the reference long answer given the prompt and the gold decision.

Writes `eval/<model>/predictions.json` (the official `{pmid: label}` submission format),
`probabilities.json`, `samples.jsonl`, `confusion.json` (rows for `dvc plots`' confusion
template) and `metrics/eval_<model>.json`, whose "perf" key alone holds timings, so that the
other figures are equal whenever params, data and model are.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stages.config import EvaluateParams, ModelParams, load_params
from stages.devices import claim_gpus
from stages.errors import StageError, run_stage
from stages.generate import generate_greedy
from stages.io import atomic_file, write_json
from stages.memory import EVALUATE_ADVICE, out_of_memory_message
from stages.modeling import (
    build_model,
    inference_dtype,
    load_model,
    load_tokenizer,
    pick_device,
)
from stages.prepare import read_prepared
from stages.prompt import LABELS, decision_text, label_token_ids
from stages.scoring import continuation_nll, score_decisions

MODELS = ("base", "finetuned")
TEST_FILE = Path("data/prepared/test.parquet")
FINETUNED = Path("models/finetuned")
EVAL_DIR = Path("eval")
METRICS_DIR = Path("metrics")
COLUMNS = ("pmid", "question", "decision", "long_answer", "prompt_ids", "completion_ids")


@dataclass(frozen=True)
class TestExample:
    """One prepared test question (see stages/prepare.py for the columns)."""

    pmid: str
    question: str
    decision: str
    long_answer: str
    prompt_ids: list[int]
    completion_ids: list[int]
    """Gold decision + long answer + end-of-text, as `decision_text` and the template encode."""


@dataclass(frozen=True)
class Evaluation:
    """Everything the stage writes, computed before anything is written."""

    predictions: dict[str, str]
    probabilities: dict[str, dict[str, float]]
    samples: list[dict[str, Any]]
    confusion: list[dict[str, str]]
    metrics: dict[str, Any]
    """The headline figures with their intervals: `metrics/eval_<model>.json`."""
    details: dict[str, Any]
    """Per-class scores, the confusion matrix, timings: `eval/<model>/details.json`."""


# ---- Inputs ----


def read_test(path: Path) -> list[TestExample]:
    """The prepared test questions, checked row by row."""
    table = read_prepared(path, COLUMNS)
    examples = [TestExample(**row) for row in table.to_pylist()]
    seen: set[str] = set()
    for i, ex in enumerate(examples):
        where = f"{path}: row {i} (pmid {ex.pmid})"
        if ex.pmid in seen:
            raise StageError(f"{where}: the PMID appears twice")
        seen.add(ex.pmid)
        if ex.decision not in LABELS:
            raise StageError(f"{where}: decision {ex.decision!r} is not one of {list(LABELS)}")
        if not ex.prompt_ids:
            raise StageError(f"{where}: prompt_ids is empty")
    return examples


def load_evaluated(which: str, params: ModelParams, dtype: torch.dtype | None = None):
    """(model, tokenizer): `base` is built exactly as train builds it; `finetuned` is loaded."""
    if which == "base":
        return build_model(params, dtype=dtype), load_tokenizer(params)
    if not FINETUNED.is_dir():
        raise StageError(f"{FINETUNED}: not found; run the train stage first (dvc repro train)")
    model = load_model(FINETUNED, dtype=dtype, what=str(FINETUNED))
    return model, load_tokenizer(ModelParams(name=str(FINETUNED)))


def check_fits(examples: Sequence[TestExample], limit: int) -> None:
    """Prompt + gold completion must fit the model's positions (perplexity reads both)."""
    for ex in examples:
        length = len(ex.prompt_ids) + len(ex.completion_ids)
        if length > limit:
            raise StageError(
                f"{TEST_FILE}: pmid {ex.pmid}: {length} tokens, over the model's {limit} "
                "positions; lower prepare.max_length"
            )


# ---- The model's answers (also the CLI's path) ----


def decision_ids(tokenizer) -> dict[str, list[int]]:
    """The tokens of each label's `decision_text` (" yes." and so on): what follows the prompt."""
    return {
        label: tokenizer(decision_text(label), add_special_tokens=False)["input_ids"]
        for label in LABELS
    }


def decide(
    model, tokenizer, prompts: Sequence[Sequence[int]], batch_size: int, progress: str | None
) -> tuple[list[str], list[dict[str, float]]]:
    """Each prompt's predicted label and the probabilities of the three labels."""
    probabilities = score_decisions(
        model,
        prompts,
        label_token_ids(tokenizer),
        batch_size=batch_size,
        pad_id=tokenizer.pad_token_id,
        progress=progress,
    )
    labels = [LABELS[i] for i in probabilities.argmax(dim=1).tolist()]
    return labels, [dict(zip(LABELS, row, strict=True)) for row in probabilities.tolist()]


def generate_answers(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    decisions: Sequence[str],
    settings: EvaluateParams,
    progress: str | None,
) -> list[str]:
    """The greedy long answer after each prompt and its decision's text, as the template goes."""
    follow = decision_ids(tokenizer)
    tokens = generate_greedy(
        model,
        [list(p) + follow[d] for p, d in zip(prompts, decisions, strict=True)],
        max_new_tokens=settings.max_new_tokens,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        batch_size=settings.generation_batch_size,
        repetition_penalty=settings.repetition_penalty,
        no_repeat_ngram_size=settings.no_repeat_ngram_size,
        progress=progress,
    )
    return [
        tokenizer.decode(t, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()
        for t in tokens
    ]


def reference_nll(
    model, tokenizer, examples: Sequence[TestExample], batch_size: int, progress: str | None
) -> tuple[list[float], list[int]]:
    """Per example, the summed NLL (nats) of the reference long answer and its end-of-text
    token given the prompt and the gold decision's text (the tokens that follow the decision
    in training), and how many tokens that is."""
    follow = decision_ids(tokenizer)
    prompts, answers = [], []
    for ex in examples:
        head = follow[ex.decision]
        if ex.completion_ids[: len(head)] != head:
            raise StageError(
                f"{TEST_FILE}: pmid {ex.pmid}: completion_ids do not start with the tokens of "
                f"{decision_text(ex.decision)!r}"
            )
        prompts.append(ex.prompt_ids + head)
        answers.append(ex.completion_ids[len(head) :])
    nll = continuation_nll(
        model,
        prompts,
        answers,
        batch_size=batch_size,
        pad_id=tokenizer.pad_token_id,
        progress=progress,
    )
    return nll.tolist(), [len(a) for a in answers]


def perplexity(nll: Sequence[float], tokens: Sequence[int]) -> float:
    """exp(mean NLL per token) over all the tokens of all the examples."""
    return math.exp(sum(nll) / sum(tokens))


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
    from stages.metrics import ROUGE_TYPES, corpus_bleu, decision_metrics, generation_scores

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
    start = time.perf_counter()
    generated = generate_answers(
        model, tokenizer, prompts[:n_generated], pred[:n_generated], settings, progress("generate")
    )
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
        scores, meteor_key, details["meteor_wordnet"] = generation_scores(references, generated)
        for sample, score in zip(samples, scores, strict=False):
            sample.update(score)
        metrics.update(
            {key: sum(s[key] for s in scores) / n_generated for key in (*ROUGE_TYPES, meteor_key)}
        )
        metrics["bleu"] = corpus_bleu(references, generated)
    metrics.update(intervals(samples, settings))
    details["perf"] = {
        "scoring_examples_per_s": round(len(examples) / scoring_s, 3),
        "perplexity_examples_per_s": round(len(examples) / perplexity_s, 3),
        "scoring_s": round(scoring_s, 3),
        "perplexity_s": round(perplexity_s, 3),
        "generation_s": round(generation_s, 3),
    }
    if n_generated:
        details["perf"]["generation_examples_per_s"] = round(n_generated / generation_s, 3)
    return Evaluation(
        predictions={ex.pmid: p for ex, p in zip(examples, pred, strict=True)},
        probabilities={ex.pmid: p for ex, p in zip(examples, probabilities, strict=True)},
        samples=samples,
        confusion=confusion_rows(gold, pred),
        metrics=metrics,
        details=details,
    )


def intervals(samples: Sequence[dict[str, Any]], settings: EvaluateParams) -> dict[str, Any]:
    """95% bootstrap intervals of the headline figures, from the per-question samples alone."""
    from stages import statistics

    n, seed = settings.bootstrap_samples, settings.bootstrap_seed
    gold = [s["gold_decision"] for s in samples]
    pred = [s["predicted_decision"] for s in samples]
    ci = {
        "accuracy": statistics.mean_interval([s["correct"] for s in samples], n, seed),
        "macro_f1": statistics.macro_f1_interval(gold, pred, n, seed),
    }
    generated = [s for s in samples if s["generated_answer"] is not None]
    for key in statistics.ANSWER_SCORES:
        if generated and key in generated[0]:
            ci[key] = statistics.mean_interval([s[key] for s in generated], n, seed)
    return {
        "ci95": ci,
        "ci_method": statistics.describe_method(n, seed, len(samples)),
    }


# ---- Outputs ----


def write_outputs(which: str, evaluation: Evaluation) -> None:
    """Every output of one model, each file written whole or not at all."""
    folder = EVAL_DIR / which
    write_json(folder / "predictions.json", evaluation.predictions)
    write_json(folder / "probabilities.json", evaluation.probabilities)
    write_json(folder / "confusion.json", evaluation.confusion)
    write_json(folder / "details.json", evaluation.details)
    with atomic_file(folder / "samples.jsonl") as f:
        for sample in evaluation.samples:
            f.write(json.dumps(sample, ensure_ascii=False) + "\n")
    write_json(METRICS_DIR / f"eval_{which}.json", evaluation.metrics)


def parse_which(argv: Sequence[str]) -> str:
    if len(argv) != 1 or argv[0] not in MODELS:
        raise StageError(f"usage: python -m stages.evaluate {'|'.join(MODELS)}")
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
    check_fits(examples, model.config.n_positions)
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
