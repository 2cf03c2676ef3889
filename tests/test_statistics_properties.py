"""Properties of the intervals and tests, on random per-question data (hypothesis).

Every expected value comes from outside the module under test: scipy.stats.bootstrap and
scipy.stats.binomtest called directly, scikit-learn's f1_score, or arithmetic on the inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.metrics import f1_score

from pubmedqa_gpt2.evaluation import statistics

LABELS = ["yes", "no", "maybe"]  # PubMedQA's, written out here rather than imported
RESAMPLES = st.sampled_from([50, 99, 200])
SEEDS = st.integers(0, 2**16)
QUICK = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def scores(min_size: int = 2, max_size: int = 40):
    """Per-question scores in [0, 1], e.g. ROUGE of each answer, or 0/1 correctness."""
    return st.lists(
        st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0, 1, allow_nan=False)),
        min_size=min_size,
        max_size=max_size,
    )


def labels(n: int):
    return st.lists(st.sampled_from(LABELS), min_size=n, max_size=n)


def scipy_interval(data, statistic, n_resamples, seed, vectorized=True):
    """95% percentile bootstrap, paired over questions, run directly."""
    result = stats.bootstrap(
        tuple(np.asarray(d) for d in data),
        statistic,
        paired=True,
        vectorized=vectorized,
        n_resamples=n_resamples,
        confidence_level=0.95,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return result.confidence_interval.low, result.confidence_interval.high


def varies(values) -> bool:
    return len(set(values)) > 1


@QUICK
@given(scores(), RESAMPLES, SEEDS)
def test_a_mean_interval_is_scipys_bootstrap_with_the_configured_resamples(values, n, seed):
    assume(varies(values))
    got = statistics.mean_interval(values, n, seed)
    low, high = scipy_interval((values,), np.mean, n, seed)
    assert (got["low"], got["high"]) == pytest.approx((low, high), abs=1e-12)


@QUICK
@given(scores(min_size=3), RESAMPLES, SEEDS)
def test_an_interval_contains_its_point_estimate_when_the_data_vary(values, n, seed):
    assume(varies(values))
    got = statistics.mean_interval(values, n, seed)
    assert got["low"] - 1e-12 <= sum(values) / len(values) <= got["high"] + 1e-12


@QUICK
@given(st.data(), RESAMPLES, SEEDS)
def test_a_paired_difference_is_scipys_and_changes_sign_when_the_models_swap(data, n, seed):
    size = data.draw(st.integers(2, 40))
    base = data.draw(scores(size, size))
    tuned = data.draw(scores(size, size))
    assume(varies(base) or varies(tuned))
    got = statistics.paired_difference_interval(base, tuned, n, seed)
    low, high = scipy_interval(
        (base, tuned), lambda b, t, axis=-1: t.mean(axis=axis) - b.mean(axis=axis), n, seed
    )
    assert (got["low"], got["high"]) == pytest.approx((low, high), abs=1e-12)
    swapped = statistics.paired_difference_interval(tuned, base, n, seed)
    assert (swapped["low"], swapped["high"]) == pytest.approx((-high, -low), abs=1e-12)
    point = sum(tuned) / size - sum(base) / size
    if varies([t - b for b, t in zip(base, tuned, strict=True)]):
        assert got["low"] - 1e-12 <= point <= got["high"] + 1e-12


@QUICK
@given(st.data(), st.sampled_from([0.0, 0.5, 1.0]), RESAMPLES, SEEDS)
def test_against_a_constant_model_the_difference_is_the_other_models_interval_shifted(
    data, constant, n, seed
):
    """One model scores the same on every question (a degenerate input)."""
    size = data.draw(st.integers(2, 40))
    tuned = data.draw(scores(size, size))
    assume(varies(tuned))
    got = statistics.paired_difference_interval([constant] * size, tuned, n, seed)
    low, high = scipy_interval((tuned,), np.mean, n, seed)
    assert (got["low"], got["high"]) == pytest.approx((low - constant, high - constant), abs=1e-12)


def sklearn_macro_f1(gold, pred, axis=-1):
    """Macro-F1 of integer-coded labels by scikit-learn, one resample at a time."""
    return f1_score(gold, pred, labels=[0, 1, 2], average="macro", zero_division=0)


@QUICK
@given(st.data())
def test_macro_f1_is_scikit_learns_on_label_vectors_that_use_all_three_labels(data):
    size = data.draw(st.integers(3, 60))
    gold = data.draw(labels(size))
    pred = data.draw(labels(size))
    assume(set(gold) | set(pred) == set(LABELS))
    codes = {label: i for i, label in enumerate(LABELS)}
    expected = f1_score(gold, pred, labels=LABELS, average="macro", zero_division=0)
    got = statistics.macro_f1(
        np.array([codes[g] for g in gold]), np.array([codes[p] for p in pred])
    )
    assert float(got) == pytest.approx(expected, abs=1e-12)


@settings(max_examples=10, deadline=None)
@given(st.data(), st.sampled_from([50, 99]), SEEDS)
def test_a_macro_f1_interval_is_scipys_bootstrap_of_scikit_learns_macro_f1(data, n, seed):
    size = data.draw(st.integers(6, 30))
    gold = data.draw(labels(size))
    pred = data.draw(labels(size))
    assume(set(pred) == set(LABELS) and set(gold) == set(LABELS))
    codes = {label: i for i, label in enumerate(LABELS)}
    g = [codes[x] for x in gold]
    p = [codes[x] for x in pred]
    got = statistics.macro_f1_interval(gold, pred, n, seed)
    low, high = scipy_interval((g, p), sklearn_macro_f1, n, seed, vectorized=False)
    assert (got["low"], got["high"]) == pytest.approx((low, high), abs=1e-12)


@QUICK
@given(st.data())
def test_mcnemar_is_scipys_binomial_test_on_the_discordant_questions(data):
    size = data.draw(st.integers(1, 80))
    base = data.draw(st.lists(st.booleans(), min_size=size, max_size=size))
    tuned = data.draw(st.lists(st.booleans(), min_size=size, max_size=size))
    fixed = sum(1 for b, t in zip(base, tuned, strict=True) if t and not b)
    broken = sum(1 for b, t in zip(base, tuned, strict=True) if b and not t)
    expected = stats.binomtest(fixed, fixed + broken, 0.5).pvalue if fixed + broken else 1.0
    assert statistics.mcnemar_exact(base, tuned) == {
        "fixed": fixed,
        "broken": broken,
        "p": pytest.approx(expected, abs=1e-15),
    }


@settings(max_examples=6, deadline=None)
@given(st.data(), st.sampled_from([50, 99]), SEEDS)
def test_a_paired_macro_f1_interval_is_scipys_bootstrap_of_the_difference(data, n, seed):
    """macro-F1(tuned) - macro-F1(base), both models resampled on the same questions: each
    resample scored by scikit-learn, the resamples drawn by scipy."""
    size = data.draw(st.integers(3, 27))
    # every label in each vector: the three first, then random ones, in a random order
    gold, base, tuned = (
        data.draw(st.permutations(LABELS + data.draw(labels(size)))) for _ in "gbt"
    )
    codes = {label: i for i, label in enumerate(LABELS)}
    g, b, t = ([codes[x] for x in labels_] for labels_ in (gold, base, tuned))
    assume(sklearn_macro_f1(g, b) != sklearn_macro_f1(g, t))

    def difference(g, b, t):
        return sklearn_macro_f1(g, t) - sklearn_macro_f1(g, b)

    got = statistics.paired_macro_f1_interval(gold, base, tuned, n, seed)
    low, high = scipy_interval((g, b, t), difference, n, seed, vectorized=False)
    assert (got["low"], got["high"]) == pytest.approx((low, high), abs=1e-12)
    swapped = statistics.paired_macro_f1_interval(gold, tuned, base, n, seed)
    assert (swapped["low"], swapped["high"]) == pytest.approx((-high, -low), abs=1e-12)
