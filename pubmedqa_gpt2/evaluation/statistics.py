"""Uncertainty of the test-set figures: bootstrap intervals over questions, and McNemar's test.

Every figure the evaluate and compare stages report is a statistic of per-question scores
(`eval/<model>/samples.jsonl`): accuracy is the mean of 0/1 correctness, macro-F1 is computed
from the (gold, predicted) pairs as a whole, ROUGE and METEOR are means of per-answer scores.
Resampling the 500 questions with replacement (`scipy.stats.bootstrap`, percentile method)
gives each figure's 95% interval; resampling the same questions for both models gives the
interval of their difference (a paired bootstrap). Correctness of two models on the same
questions is compared with the exact McNemar test: a two-sided binomial test on the questions
where exactly one of them is right.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats

from pubmedqa_gpt2.evaluation.calibration import confidences, expected_calibration_error
from pubmedqa_gpt2.prompt import LABELS

CONFIDENCE = 0.95
METHOD = "percentile"
# The per-answer scores given an interval, besides the decisions' accuracy and macro-F1.
ANSWER_SCORES = ("rouge1", "rougeL", "meteor", "meteor_no_synonyms")


def describe_method(n_resamples: int, seed: int, n: int) -> str:
    """The method, written beside the numbers it produced."""
    return (
        f"{CONFIDENCE:.0%} {METHOD} bootstrap (scipy.stats.bootstrap) over the {n} test "
        f"questions, {n_resamples} resamples, seed {seed}"
    )


def macro_f1(gold: np.ndarray, pred: np.ndarray, axis: int = -1) -> np.ndarray:
    """Macro-F1 over the three labels of integer-coded gold and predicted labels, along `axis`
    (vectorized for the bootstrap). A label with no gold and no predicted instance scores 0,
    as scikit-learn's `f1_score(labels=LABELS, average="macro", zero_division=0)` does."""
    scores = []
    for label in range(len(LABELS)):
        is_gold, is_pred = gold == label, pred == label
        tp = np.sum(is_gold & is_pred, axis=axis)
        wrong = np.sum(is_gold != is_pred, axis=axis)  # false positives + false negatives
        denominator = 2 * tp + wrong
        scores.append(np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0))
    return np.mean(scores, axis=0)


def encode_labels(labels: Sequence[str]) -> np.ndarray:
    """Labels as integers in LABELS order."""
    return np.array([LABELS.index(label) for label in labels])


def _interval(
    data: tuple[np.ndarray, ...], statistic: Callable, n_resamples: int, seed: int
) -> dict[str, float]:
    if len(data[0]) < 2 or all(np.all(d == d.flat[0]) for d in data):
        value = round(float(statistic(*data, axis=-1)), 6)
        return {"low": value, "high": value}  # nothing varies: the interval is the point
    result = stats.bootstrap(
        data,
        statistic,
        paired=True,
        vectorized=True,
        n_resamples=n_resamples,
        confidence_level=CONFIDENCE,
        method=METHOD,
        rng=np.random.default_rng(seed),
    )
    return {
        "low": float(result.confidence_interval.low),
        "high": float(result.confidence_interval.high),
    }


def mean_interval(values: Sequence[float], n_resamples: int, seed: int) -> dict[str, float]:
    """95% interval of the mean of per-question values."""
    return _interval((np.asarray(values, dtype=float),), np.mean, n_resamples, seed)


def macro_f1_interval(
    gold: Sequence[str], pred: Sequence[str], n_resamples: int, seed: int
) -> dict[str, float]:
    """95% interval of macro-F1, recomputed as a whole on each resample of the questions."""
    return _interval((encode_labels(gold), encode_labels(pred)), macro_f1, n_resamples, seed)


def calibration_error_interval(
    samples: Sequence[dict[str, Any]], n_resamples: int, seed: int
) -> dict[str, float]:
    """95% interval of the expected calibration error, recomputed (bins and all) on each
    resample of the questions (`calibration.py`)."""
    return _interval(confidences(samples), expected_calibration_error, n_resamples, seed)


def figure_intervals(
    samples: Sequence[dict[str, Any]], n_resamples: int, seed: int
) -> dict[str, dict[str, float]]:
    """95% intervals of one model's headline figures, from its per-question samples alone
    (`eval/<model>/samples.jsonl`): `metrics/eval_<model>.json`'s "ci95"."""
    gold = [s["gold_decision"] for s in samples]
    pred = [s["predicted_decision"] for s in samples]
    ci = {
        "accuracy": mean_interval([s["correct"] for s in samples], n_resamples, seed),
        "macro_f1": macro_f1_interval(gold, pred, n_resamples, seed),
    }
    generated = [s for s in samples if s["generated_answer"] is not None]
    for key in ANSWER_SCORES:
        if generated and key in generated[0]:
            ci[key] = mean_interval([s[key] for s in generated], n_resamples, seed)
    if all("probabilities" in s for s in samples):
        ci["ece"] = calibration_error_interval(samples, n_resamples, seed)
    return ci


def paired_difference_interval(
    base: Sequence[float], tuned: Sequence[float], n_resamples: int, seed: int
) -> dict[str, float]:
    """95% interval of mean(tuned) - mean(base), both resampled on the same questions."""

    def difference(b: np.ndarray, t: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(t, axis=axis) - np.mean(b, axis=axis)

    data = (np.asarray(base, dtype=float), np.asarray(tuned, dtype=float))
    return _interval(data, difference, n_resamples, seed)


def paired_macro_f1_interval(
    gold: Sequence[str],
    base: Sequence[str],
    tuned: Sequence[str],
    n_resamples: int,
    seed: int,
) -> dict[str, float]:
    """95% interval of macro-F1(tuned) - macro-F1(base) over the same resampled questions."""

    def difference(g: np.ndarray, b: np.ndarray, t: np.ndarray, axis: int = -1) -> np.ndarray:
        return macro_f1(g, t, axis=axis) - macro_f1(g, b, axis=axis)

    data = (encode_labels(gold), encode_labels(base), encode_labels(tuned))
    return _interval(data, difference, n_resamples, seed)


def mcnemar_exact(base_correct: Sequence[bool], tuned_correct: Sequence[bool]) -> dict:
    """Exact McNemar test: `fixed` questions only the tuned model gets right, `broken` ones
    only the base model gets right; the two-sided p-value of a binomial test of `fixed` out of
    `fixed + broken` at one half, `p` (1.0 when no question changed)."""
    if len(base_correct) != len(tuned_correct):
        raise ValueError(f"{len(base_correct)} base but {len(tuned_correct)} tuned answers")
    fixed = sum(1 for b, t in zip(base_correct, tuned_correct, strict=True) if t and not b)
    broken = sum(1 for b, t in zip(base_correct, tuned_correct, strict=True) if b and not t)
    p = stats.binomtest(fixed, fixed + broken, 0.5).pvalue if fixed + broken else 1.0
    return {"fixed": fixed, "broken": broken, "p": float(p)}
