"""Does a model's confidence mean anything? Calibration of the yes/no/maybe decision.

A question's confidence is the probability the model gives the label it predicts (of the three
labels' probabilities, `eval/<model>/probabilities.json`). The questions are put in 10 bins of
equal width by confidence, bin k holding (k/10, (k+1)/10] (the first also 0). A calibrated
model is right on a share of each bin's questions equal to their mean confidence; the
reliability diagram draws one point per non-empty bin (mean confidence, accuracy, count) against
that diagonal. The expected calibration error (Guo et al., 2017, "On calibration of modern
neural networks") weighs each bin's gap by its share of the questions:

    ECE = sum over bins b of n_b / N * |accuracy_b - confidence_b|
        = (1 / N) * sum over b of |sum over questions i in b of (correct_i - confidence_i)|

0 is perfect; with three labels confidence is at least 1/3, so bins 0 to 2 stay empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

N_BINS = 10
EDGES = np.linspace(0.0, 1.0, N_BINS + 1)


def confidences(samples: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct as 0/1) of each sample of `eval/<model>/samples.jsonl`."""
    confidence = [s["probabilities"][s["predicted_decision"]] for s in samples]
    correct = [float(bool(s["correct"])) for s in samples]
    return np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)


def bin_of(confidence: np.ndarray) -> np.ndarray:
    """The bin of each confidence: k for (k/10, (k+1)/10], 0 for 0."""
    return np.clip(np.searchsorted(EDGES, confidence, side="left") - 1, 0, N_BINS - 1)


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, axis: int = -1
) -> np.ndarray:
    """ECE along `axis` (vectorized for the bootstrap, which resamples questions)."""
    bins = bin_of(confidence)
    gap = correct - confidence
    total = 0.0
    for k in range(N_BINS):
        total = total + np.abs(np.sum(np.where(bins == k, gap, 0.0), axis=axis))
    return total / gap.shape[axis]


def reliability_rows(confidence: np.ndarray, correct: np.ndarray) -> list[dict[str, Any]]:
    """One row per non-empty bin, what the reliability diagram draws: `eval/<model>/
    calibration.json`."""
    bins = bin_of(confidence)
    rows = []
    for k in range(N_BINS):
        members = bins == k
        count = int(members.sum())
        if count:
            rows.append(
                {
                    "bin": f"{EDGES[k]:.1f}-{EDGES[k + 1]:.1f}",
                    "confidence": round(float(confidence[members].mean()), 6),
                    "accuracy": round(float(correct[members].mean()), 6),
                    "count": count,
                }
            )
    return rows
