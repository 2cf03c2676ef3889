"""Calibration of the decisions: confidence bins, the expected calibration error (ECE) and its
bootstrap interval, on hand-made probabilities whose figures are worked out here by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pubmedqa_gpt2.evaluation import calibration, statistics


def sample(confidence: float, correct: bool, label: str = "yes") -> dict:
    """A question the model answers `label` with probability `confidence` (the rest split
    evenly between the two other labels), right or wrong."""
    rest = (1 - confidence) / 2
    others = [x for x in ("yes", "no", "maybe") if x != label]
    gold = label if correct else others[0]
    return {
        "pmid": str(id(object())),
        "gold_decision": gold,
        "predicted_decision": label,
        "correct": correct,
        "probabilities": {label: confidence, others[0]: rest, others[1]: rest},
        "generated_answer": None,
    }


# 10 questions: 4 answered with confidence 0.45 of which 2 right (bin 0.4-0.5: accuracy 0.5,
# gap 0.05), 6 with confidence 0.85 of which 3 right (bin 0.8-0.9: accuracy 0.5, gap 0.35).
# ECE = 4/10 * 0.05 + 6/10 * 0.35 = 0.02 + 0.21 = 0.23.
HAND = [sample(0.45, i < 2, "no") for i in range(4)] + [sample(0.85, i < 3) for i in range(6)]


def test_the_ece_of_hand_made_probabilities():
    confidence, correct = calibration.confidences(HAND)
    assert confidence.tolist() == [0.45] * 4 + [0.85] * 6
    assert correct.tolist() == [1, 1, 0, 0, 1, 1, 1, 0, 0, 0]
    assert calibration.expected_calibration_error(confidence, correct) == pytest.approx(0.23)


def test_a_calibrated_model_scores_zero_and_an_overconfident_one_its_gap():
    # 10 answers at 0.6, 6 right: accuracy equals confidence in the only bin.
    calibrated = [sample(0.6, i < 6) for i in range(10)]
    assert calibration.expected_calibration_error(
        *calibration.confidences(calibrated)
    ) == pytest.approx(0.0, abs=1e-12)
    # Always 0.95 sure, right half the time: ECE = |0.5 - 0.95| = 0.45.
    overconfident = [sample(0.95, i % 2 == 0) for i in range(10)]
    assert calibration.expected_calibration_error(
        *calibration.confidences(overconfident)
    ) == pytest.approx(0.45)


def test_gaps_of_opposite_sign_in_one_bin_cancel_but_not_across_bins():
    # One bin (0.7-0.8) with 0.72 right and 0.78 wrong: accuracy 0.5, mean confidence 0.75,
    # ECE 0.25. Apart (0.65 right in 0.6-0.7, 0.78 wrong in 0.7-0.8): (0.35 + 0.78) / 2 = 0.565.
    together = [sample(0.72, True), sample(0.78, False)]
    apart = [sample(0.65, True), sample(0.78, False)]
    assert calibration.expected_calibration_error(
        *calibration.confidences(together)
    ) == pytest.approx(0.25)
    assert calibration.expected_calibration_error(*calibration.confidences(apart)) == pytest.approx(
        0.565
    )


def test_bins_hold_their_upper_edge_and_one_is_in_the_last():
    edges = np.array([0.0, 0.05, 0.1, 0.35, 0.4, 0.41, 0.99, 1.0])
    assert calibration.bin_of(edges).tolist() == [0, 0, 0, 3, 3, 4, 9, 9]


def test_a_probability_rounded_above_one_stays_in_the_last_bin():
    # float32 softmax then float64: a confidence may come out a hair above 1
    assert calibration.bin_of(np.array([1.0 + 1e-7, 1.5])).tolist() == [9, 9]


def test_rows_are_rounded_to_six_places():
    # one bin, 0.41, 0.42, 0.44 (mean 0.4233333...), one of three right (0.3333333...)
    three = [sample(0.41, True), sample(0.42, False), sample(0.44, False)]
    assert calibration.reliability_rows(*calibration.confidences(three)) == [
        {"bin": "0.4-0.5", "confidence": 0.423333, "accuracy": 0.333333, "count": 3}
    ]


def test_reliability_rows_are_the_non_empty_bins_with_their_counts():
    rows = calibration.reliability_rows(*calibration.confidences(HAND))
    assert rows == [
        {"bin": "0.4-0.5", "confidence": 0.45, "accuracy": 0.5, "count": 4},
        {"bin": "0.8-0.9", "confidence": 0.85, "accuracy": 0.5, "count": 6},
    ]
    # The ECE is the count-weighted gap of the rows: what the diagram shows.
    weighted = sum(r["count"] * abs(r["accuracy"] - r["confidence"]) for r in rows) / 10
    assert weighted == pytest.approx(0.23)


def test_the_ece_is_computed_along_the_bootstrap_s_axis():
    rng = np.random.default_rng(3)
    confidence = rng.uniform(1 / 3, 1, size=(5, 40))
    correct = (rng.uniform(size=(5, 40)) < confidence).astype(float)
    stacked = calibration.expected_calibration_error(confidence, correct, axis=-1)
    one_by_one = [
        calibration.expected_calibration_error(c, k)
        for c, k in zip(confidence, correct, strict=True)
    ]
    assert stacked.shape == (5,)
    assert stacked.tolist() == pytest.approx(one_by_one)


def test_the_interval_agrees_with_a_plain_resampling_bootstrap():
    """scipy's percentile bootstrap against a loop written here: 4,000 resamples of the
    questions, ECE on each, the 2.5th and 97.5th percentiles; equal within Monte Carlo error."""
    rng = np.random.default_rng(7)
    samples = []
    for _ in range(300):
        confidence = float(rng.uniform(0.34, 1.0))
        samples.append(sample(confidence, bool(rng.uniform() < confidence - 0.1)))
    interval = statistics.calibration_error_interval(samples, 4000, seed=0)
    confidence, correct = calibration.confidences(samples)
    draws = []
    for _ in range(4000):
        pick = rng.integers(0, len(samples), len(samples))
        bins = np.minimum((np.ceil(confidence[pick] * 10) - 1).astype(int), 9)
        gap = correct[pick] - confidence[pick]
        draws.append(sum(abs(gap[bins == k].sum()) for k in range(10)) / len(samples))
    low, high = np.percentile(draws, [2.5, 97.5])
    assert interval["low"] == pytest.approx(low, abs=0.01)
    assert interval["high"] == pytest.approx(high, abs=0.01)
    assert interval["low"] < interval["high"]


def test_a_model_s_intervals_include_the_ece_s():
    ci = statistics.figure_intervals(HAND, 200, seed=0)
    assert set(ci) == {"accuracy", "macro_f1", "ece"}
    assert 0 <= ci["ece"]["low"] <= ci["ece"]["high"] <= 1


def test_every_interval_of_a_model_is_drawn_from_the_seed_asked():
    """The same seed gives the same intervals (metrics/eval_*.json is reproducible) and another
    seed other resamples: 60 questions of mixed labels and confidences, so that the bootstrap's
    percentiles move with the resamples (HAND's 10 give too few distinct resample means)."""
    labels = ("yes", "no", "maybe")
    questions = [
        sample(0.4 + 0.01 * i, i % 3 != 0, labels[i % 3]) for i in range(60)
    ]  # fmt: skip
    first, again = (statistics.figure_intervals(questions, 200, seed=7) for _ in range(2))
    other = statistics.figure_intervals(questions, 200, seed=8)
    assert set(first) == {"accuracy", "macro_f1", "ece"}
    assert first == again
    for key in first:
        assert first[key] != other[key], key
