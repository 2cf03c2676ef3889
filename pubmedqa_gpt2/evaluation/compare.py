"""Did fine-tuning help? The fine-tuned model against the base model on the
same test questions, with the uncertainty of the difference.

Reads `eval/base/samples.jsonl` and `eval/finetuned/samples.jsonl` (one line per question,
written by the evaluate stage) and, for accuracy, macro-F1, ROUGE-1, ROUGE-L and METEOR,
reports the base value, the fine-tuned value (`tuned`), their difference (`diff`) and a paired
95% bootstrap interval of the difference (`low`, `high`: both models resampled on the
same questions; `pubmedqa_gpt2/evaluation/statistics.py`).
Decision correctness is also compared with the exact McNemar test (p to 2 significant
digits). The `compare` stage writes `metrics/compare.json` and `eval/compare.txt`, the
sentence it prints and the method of the intervals, e.g.

    fine-tuning changed accuracy by +3.2 points (95% CI -1.0 to +7.4; McNemar exact
    p = 0.14; 41 questions fixed, 25 broken)
    intervals: paired 95% percentile bootstrap (scipy.stats.bootstrap) over the 500 test ...

The metrics file's keys are in reading order (`dvc exp show` keeps it): accuracy first, then
McNemar's test, then the other figures; in each figure the fine-tuned value, the change, its
interval, then the base value. The method sentence is not a metric: as a metric it made every
row of `dvc metrics diff` 186 characters wide.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.core.paths import samples_file
from pubmedqa_gpt2.evaluation import statistics
from pubmedqa_gpt2.prompt import LABELS

REQUIRED = ("pmid", "gold_decision", "predicted_decision", "correct", "generated_answer")


def read_samples(path: Path) -> list[dict[str, Any]]:
    """The per-question lines of an evaluate stage's samples.jsonl, checked field by field."""
    if not path.is_file():
        raise StageError(f"{path}: file not found; run the evaluate stage first (dvc repro)")
    samples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            sample = json.loads(line)
        except json.JSONDecodeError as exc:
            raise StageError(f"{path}: line {number}: not JSON ({exc.msg})") from None
        where = f"{path}: line {number} (pmid {sample.get('pmid')})"
        for field in REQUIRED:
            if field not in sample:
                raise StageError(f"{where}: field {field!r} is missing")
        for field in ("gold_decision", "predicted_decision"):
            if sample[field] not in LABELS:
                raise StageError(f"{where}: {field} {sample[field]!r} is not one of {list(LABELS)}")
        samples.append(sample)
    if not samples:
        raise StageError(f"{path}: no questions")
    return samples


def pair_samples(
    base: list[dict[str, Any]], tuned: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The two models' samples aligned question by question (base order); both must cover
    exactly the same questions with the same gold labels."""
    by_pmid = {s["pmid"]: s for s in tuned}
    if len(by_pmid) != len(tuned) or {s["pmid"] for s in base} != set(by_pmid):
        raise StageError(
            f"{samples_file('base')} and {samples_file('finetuned')} do not hold the same "
            "questions; rerun both evaluations (dvc repro)"
        )
    aligned = [by_pmid[s["pmid"]] for s in base]
    for b, t in zip(base, aligned, strict=True):
        if b["gold_decision"] != t["gold_decision"]:
            raise StageError(f"pmid {b['pmid']}: gold_decision differs between the two samples")
    return base, aligned


def figure(base: float, tuned: float, interval: dict[str, float]) -> dict[str, float]:
    """One compared figure, keys in reading order. Short keys keep `dvc exp show` narrow:
    `tuned` is the fine-tuned model's value, `diff` is tuned - base, `low`..`high` the paired
    95% interval of diff."""
    return {
        "tuned": round(tuned, 6),
        "diff": round(tuned - base, 6),
        "low": round(interval["low"], 6),
        "high": round(interval["high"], 6),
        "base": round(base, 6),
    }


def two_significant_digits(p: float) -> float:
    """A p-value as it is read and quoted: 0.0013859 -> 0.0014."""
    return float(f"{p:.2g}")


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def compare(
    base: list[dict[str, Any]], tuned: list[dict[str, Any]], n_resamples: int, seed: int
) -> dict[str, Any]:
    """Every compared figure of two aligned sample lists, in reading order (see the module
    docstring)."""
    correct_b = [bool(s["correct"]) for s in base]
    correct_t = [bool(s["correct"]) for s in tuned]
    gold = [s["gold_decision"] for s in base]
    pred_b = [s["predicted_decision"] for s in base]
    pred_t = [s["predicted_decision"] for s in tuned]
    encoded = [statistics.encode_labels(labels) for labels in (gold, pred_b, pred_t)]
    test = statistics.mcnemar_exact(correct_b, correct_t)
    result: dict[str, Any] = {
        "accuracy": figure(
            mean(correct_b),
            mean(correct_t),
            statistics.paired_difference_interval(correct_b, correct_t, n_resamples, seed),
        ),
        "mcnemar": {
            "p": two_significant_digits(test["p"]),
            "fixed": test["fixed"],
            "broken": test["broken"],
        },
        "macro_f1": figure(
            float(statistics.macro_f1(encoded[0], encoded[1])),
            float(statistics.macro_f1(encoded[0], encoded[2])),
            statistics.paired_macro_f1_interval(gold, pred_b, pred_t, n_resamples, seed),
        ),
    }
    both = [
        (b, t)
        for b, t in zip(base, tuned, strict=True)
        if b["generated_answer"] is not None and t["generated_answer"] is not None
    ]
    for key in statistics.ANSWER_SCORES:
        if both and key in both[0][0] and key in both[0][1]:
            scores_b, scores_t = [b[key] for b, _ in both], [t[key] for _, t in both]
            interval = statistics.paired_difference_interval(scores_b, scores_t, n_resamples, seed)
            result[key] = figure(mean(scores_b), mean(scores_t), interval)
    result["n_test"] = len(base)
    result["n_generated"] = len(both)
    return result


# The figures the forest plot draws, in its order, with the words on its axis.
PLOTTED = {"accuracy": "accuracy", "macro_f1": "macro-F1", "rougeL": "ROUGE-L", "meteor": "METEOR"}


def interval_rows(
    base: list[dict[str, Any]],
    tuned: list[dict[str, Any]],
    result: dict[str, Any],
    n_resamples: int,
    seed: int,
) -> list[dict[str, Any]]:
    """The forest plot's rows (`eval/compare_intervals.json`): per plotted figure, the base and
    the fine-tuned value with its own 95% interval (as `metrics/eval_<model>.json` has it: the
    same function on the same samples) and their paired difference with its interval (as
    `metrics/compare.json` has it)."""
    own = {
        "base": statistics.figure_intervals(base, n_resamples, seed),
        "fine-tuned": statistics.figure_intervals(tuned, n_resamples, seed),
    }
    rows = []
    for key, words in PLOTTED.items():
        if key not in result:
            continue
        figure_ = result[key]
        values = {"base": figure_["base"], "fine-tuned": figure_["tuned"]}
        for series, value in values.items():
            interval = own[series][key]
            rows.append(
                {
                    "metric": words,
                    "series": series,
                    "value": value,
                    "low": round(interval["low"], 6),
                    "high": round(interval["high"], 6),
                }
            )
        rows.append(
            {
                "metric": words,
                "series": "difference",
                "value": figure_["diff"],
                "low": figure_["low"],
                "high": figure_["high"],
            }
        )
    return rows


def method(n_resamples: int, seed: int, n: int) -> str:
    """How the intervals were computed: `eval/compare.txt`'s second line."""
    return "intervals: paired " + statistics.describe_method(n_resamples, seed, n)


def sentence(result: dict[str, Any]) -> str:
    """The comparison of accuracy in one sentence a person can quote."""
    accuracy, test = result["accuracy"], result["mcnemar"]
    points = lambda x: f"{100 * x:+.1f}"  # noqa: E731
    return (
        f"fine-tuning changed accuracy by {points(accuracy['diff'])} points "
        f"(95% CI {points(accuracy['low'])} to {points(accuracy['high'])}; "
        f"McNemar exact p = {test['p']:.2g}; {test['fixed']} questions fixed, "
        f"{test['broken']} broken; {result['n_test']} test questions)"
    )
