"""Raw records -> the official split -> token ids under the budget, streamed to parquet.

PQA-L is split the benchmark's way (500 test questions, 10-fold CV of the other 500); PQA-A,
when fetched, becomes phase 1's training set, never part of PQA-L's splits: its records whose
PMID is also a PQA-L record's (test or not) are dropped and counted. Examples are encoded in
batches and streamed to parquet, so the 211k-record `pqa_artificial` set fits in little memory.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.core.paths import ARTIFICIAL
from pubmedqa_gpt2.data.records import Record
from pubmedqa_gpt2.data.split import official_split, overlapping_pmids
from pubmedqa_gpt2.data.token_files import SCHEMA
from pubmedqa_gpt2.prompt import LABELS, Encoded, TooLongError, encode_examples

BATCH = 1024


@dataclass
class SplitStats:
    """What `metrics/data.json` reports for one split."""

    pmids: list[str] = field(default_factory=list)
    labels: Counter = field(default_factory=Counter)
    lengths: list[int] = field(default_factory=list)
    shortened: int = 0

    def summary(self) -> dict:
        lengths = np.asarray(self.lengths)
        return {
            "examples": len(self.pmids),
            "labels": {label: self.labels[label] for label in LABELS},
            "tokens": {
                "mean": round(float(lengths.mean()), 1),
                "p50": float(np.percentile(lengths, 50)),
                "p95": float(np.percentile(lengths, 95)),
                "max": int(lengths.max()),
            },
            "shortened": self.shortened,
        }


def encode_records(tokenizer, records: Sequence[Record], max_length: int) -> list[Encoded]:
    """Records through the shared template; a question too long to fit is a StageError."""
    try:
        return encode_examples(
            tokenizer,
            [r.question for r in records],
            [r.contexts for r in records],
            [r.labels for r in records],
            [r.final_decision for r in records],
            [r.long_answer for r in records],
            max_length,
        )
    except TooLongError as exc:
        raise StageError(
            f"record {records[exc.index].pmid}: question and completion alone exceed "
            f"prepare.max_length={max_length} tokens; only the context can be shortened"
        ) from None


def encode_batch(tokenizer, records: list[Record], max_length: int) -> pa.Table:
    """One batch of records as a table of SCHEMA."""
    encoded = encode_records(tokenizer, records, max_length)
    return pa.table(
        {
            "pmid": [r.pmid for r in records],
            "question": [r.question for r in records],
            "decision": [r.final_decision for r in records],
            "long_answer": [r.long_answer for r in records],
            "prompt_ids": [e.prompt_ids for e in encoded],
            "completion_ids": [e.completion_ids for e in encoded],
            "shortened": [e.shortened for e in encoded],
        },
        schema=SCHEMA,
    )


def write_split(path: Path, records: Iterable[Record], tokenizer, max_length: int) -> SplitStats:
    """Encode records in batches and stream them to a parquet file."""
    stats = SplitStats()
    records = iter(records)
    with pq.ParquetWriter(path, SCHEMA) as writer:
        while batch := list(itertools.islice(records, BATCH)):
            table = encode_batch(tokenizer, batch, max_length)
            writer.write_table(table)
            stats.pmids.extend(r.pmid for r in batch)
            stats.labels.update(r.final_decision for r in batch)
            prompt_lens = pc.list_value_length(table["prompt_ids"]).to_numpy()
            completion_lens = pc.list_value_length(table["completion_ids"]).to_numpy()
            stats.lengths.extend((prompt_lens + completion_lens).tolist())
            stats.shortened += sum(table["shortened"].to_pylist())
    if not stats.pmids:
        raise StageError(f"{path.stem}: the split is empty")
    return stats


@dataclass
class Dropped:
    """How many PQA-A records `without_pmids` left out."""

    count: int = 0


def without_pmids(records: Iterable[Record], pmids: set[str], dropped: Dropped) -> Iterator[Record]:
    """The records whose PMID is not in `pmids`, counting the others in `dropped`."""
    for record in records:
        if record.pmid in pmids:
            dropped.count += 1
        else:
            yield record


def split_records(
    labeled: list[Record], seed: int, fold: int, max_train_samples: int | None
) -> dict[str, list[Record]]:
    """PQA-L split the official way; train optionally cut to a seeded sample."""
    try:
        split = official_split([(r.pmid, r.final_decision) for r in labeled], seed)
    except ValueError as exc:
        raise StageError(f"data/raw: {exc}") from None
    train, dev = split.train_dev(fold)
    by_pmid = {r.pmid: r for r in labeled}
    out = {
        name: [by_pmid[p] for p in pmids]
        for name, pmids in (("train", train), ("dev", dev), ("test", split.test))
    }
    if max_train_samples is not None and max_train_samples < len(out["train"]):
        out["train"] = stratified_sample(out["train"], max_train_samples, seed)
    return out


def stratified_sample(records: list[Record], n: int, seed: int) -> list[Record]:
    """`n` of `records`, drawn with `seed`, each decision keeping its share of them (rounded
    by largest remainder: a 40-question smoke run keeps its "maybe" questions); the order of
    `records` is kept."""
    groups = {label: [r for r in records if r.final_decision == label] for label in LABELS}
    quotas = {label: n * len(group) / len(records) for label, group in groups.items()}
    counts = {label: int(quota) for label, quota in quotas.items()}
    by_remainder = sorted(LABELS, key=lambda label: counts[label] - quotas[label])
    for label in by_remainder[: n - sum(counts.values())]:
        counts[label] += 1
    rng = random.Random(seed)
    chosen = {id(r) for label in LABELS for r in rng.sample(groups[label], counts[label])}
    return [r for r in records if id(r) in chosen]


def assemble_splits(
    labeled: list[Record],
    artificial: Iterable[Record] | None,
    seed: int,
    fold: int,
    max_train_samples: int | None,
) -> tuple[dict[str, Iterable[Record]], Dropped]:
    """PQA-L's train, dev and test splits, and PQA-A (when fetched) less the records that share
    a PMID with PQA-L; the Dropped count fills in as PQA-A is read."""
    splits: dict[str, Iterable[Record]] = dict(
        split_records(labeled, seed, fold, max_train_samples)
    )
    dropped = Dropped()
    if artificial is not None:
        splits[ARTIFICIAL] = without_pmids(artificial, {r.pmid for r in labeled}, dropped)
    return splits, dropped


def write_splits(
    folder: Path, splits: dict[str, Iterable[Record]], tokenizer, max_length: int
) -> dict[str, SplitStats]:
    """Each split encoded to `folder/<name>.parquet` (an empty artificial one when PQA-A was not
    fetched: the pretrain stage's input always exists); no PMID may be in two splits."""
    stats: dict[str, SplitStats] = {}
    for name in splits:
        stats[name] = write_split(folder / f"{name}.parquet", splits[name], tokenizer, max_length)
        print(f"prepare: {name}: {len(stats[name].pmids)} examples")
    if ARTIFICIAL not in splits:
        pq.write_table(SCHEMA.empty_table(), folder / f"{ARTIFICIAL}.parquet")
    clashes = overlapping_pmids({name: s.pmids for name, s in stats.items()})
    if clashes:
        pmid, first, second = clashes[0]
        raise StageError(
            f"record {pmid}: PMID is in both {first} and {second} "
            f"({len(clashes)} shared PMIDs); refusing to write overlapping splits"
        )
    return stats


def data_summary(stats: dict[str, SplitStats], dropped: Dropped, max_length: int) -> dict:
    """metrics/data.json: the token budget and each split's counts, labels and lengths."""
    summaries = {name: s.summary() for name, s in stats.items()}
    if ARTIFICIAL in summaries:
        summaries[ARTIFICIAL]["dropped_shared_pmid"] = dropped.count
        print(f"prepare: {ARTIFICIAL}: {dropped.count} records dropped (PMID also in PQA-L)")
    return {"max_length": max_length} | summaries
