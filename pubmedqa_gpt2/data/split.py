"""The benchmark's own split of PQA-L: 500 test, and 10 cross-validation folds of the rest.

A restatement of PubMedQA's `preprocess/split_dataset.py`, so that the test set here IS the
official one (tests check it against `test_ground_truth.json`). Python's `random` is seeded
once and both splits draw from the same stream, exactly as the original does.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from pubmedqa_gpt2.prompt import LABELS


def _split(items: Sequence[tuple[str, str]], k: int, rng: random.Random) -> list[dict[str, str]]:
    """Split (pmid, decision) pairs into k parts, stratified by decision (the official way)."""
    by_label: dict[str, list[str]] = {label: [] for label in LABELS}
    for pmid, decision in items:
        by_label[decision].append(pmid)
    chunks: dict[str, list[list[str]]] = {}
    for label in LABELS:
        pmids = by_label[label]
        rng.shuffle(pmids)
        size = math.ceil(len(pmids) / k)
        chunks[label] = [pmids[i * size : (i + 1) * size] for i in range(k - 1)]
        chunks[label].append(pmids[(k - 1) * size :])
    decision_of = dict(items)
    parts = [
        {pmid: decision_of[pmid] for label in LABELS for pmid in chunks[label][i]} for i in range(k)
    ]
    if not all(parts):
        raise ValueError(f"{len(items)} records are too few to split into {k} stratified parts")
    if len(parts[-1]) != len(parts[0]):
        # Rebalance: move one random PMID of each other part to the last part.
        for part in parts[:-1]:
            picked = rng.choice(list(part))
            parts[-1][picked] = part.pop(picked)
    return parts


@dataclass(frozen=True)
class OfficialSplit:
    test: list[str]
    folds: list[list[str]]
    """The 10 cross-validation folds of the non-test half."""

    def train_dev(self, fold: int) -> tuple[list[str], list[str]]:
        """Train PMIDs (the nine other folds, in fold order) and dev PMIDs (fold `fold`)."""
        train = [pmid for i, part in enumerate(self.folds) if i != fold for pmid in part]
        return train, list(self.folds[fold])


def official_split(items: Sequence[tuple[str, str]], seed: int = 0) -> OfficialSplit:
    """`cv, test = split(all, 2)`, then `folds = split(cv, 10)` with the same random state."""
    rng = random.Random(seed)
    cv, test = _split(items, 2, rng)
    folds = _split(list(cv.items()), 10, rng)
    return OfficialSplit(test=list(test), folds=[list(part) for part in folds])


def overlapping_pmids(splits: dict[str, Sequence[str]]) -> list[tuple[str, str, str]]:
    """(pmid, split_a, split_b) for every PMID found in two splits."""
    owner: dict[str, str] = {}
    clashes = []
    for name, pmids in splits.items():
        for pmid in pmids:
            if pmid in owner and owner[pmid] != name:
                clashes.append((pmid, owner[pmid], name))
            owner.setdefault(pmid, name)
    return clashes
