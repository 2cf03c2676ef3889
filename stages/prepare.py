"""Stage `prepare`: raw records -> the official split -> token ids under the budget.

Reads `params.prepare` and the tokenizer of `params.model`. Writes
`data/prepared/{train,dev,test}.parquet` (one row per example: pmid, question, decision,
long_answer, prompt_ids, completion_ids, shortened) and `metrics/data.json` (counts, labels,
token lengths, shortened examples per split). When fetch brought PQA-A (`data.artificial`),
it becomes `data/prepared/artificial.parquet`, phase 1's training set, never part of PQA-L's
splits: its records whose PMID is also a PQA-L record's (test or not) are dropped, and
counted in `metrics/data.json` (`artificial.dropped_shared_pmid`). Examples are encoded in
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

from stages.config import load_params
from stages.errors import StageError, run_stage
from stages.fetch import ARTIFICIAL_FILE, LABELED_FILE, RAW_DIR
from stages.io import atomic_dir, write_json
from stages.modeling import load_tokenizer
from stages.prompt import LABELS, Encoded, TooLongError, encode_examples
from stages.records import Record, iter_jsonl
from stages.split import official_split, overlapping_pmids

PREPARED_DIR = Path("data/prepared")
DATA_METRICS = Path("metrics/data.json")
SPLITS = ("train", "dev", "test")
ARTIFICIAL = "artificial"  # PQA-A: phase 1's training set (the pretrain stage)
BATCH = 1024

SCHEMA = pa.schema(
    [
        ("pmid", pa.string()),
        ("question", pa.string()),
        ("decision", pa.string()),
        ("long_answer", pa.string()),
        ("prompt_ids", pa.list_(pa.int32())),
        ("completion_ids", pa.list_(pa.int32())),
        ("shortened", pa.bool_()),
    ]
)


def read_prepared(path: Path, columns: Sequence[str]) -> pa.Table:
    """The given columns of a prepared split, or a one-line StageError saying what is wrong."""
    if not path.is_file():
        raise StageError(f"{path}: file not found; run the prepare stage first (dvc repro prepare)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise StageError(f"{path}: not a readable parquet file: {exc}") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise StageError(
            f"{path}: missing column(s) {', '.join(missing)}; has {', '.join(table.column_names)}"
        )
    if table.num_rows == 0:
        raise StageError(f"{path}: no examples")
    return table.select(list(columns))


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
        out["train"] = random.Random(seed).sample(out["train"], max_train_samples)
    return out


def main() -> None:
    params = load_params()
    labeled = list(iter_jsonl(RAW_DIR / LABELED_FILE))
    splits: dict[str, Iterable[Record]] = dict(
        split_records(
            labeled, params.prepare.seed, params.prepare.fold, params.prepare.max_train_samples
        )
    )
    dropped = Dropped()
    if (RAW_DIR / ARTIFICIAL_FILE).is_file():
        labeled_pmids = {r.pmid for r in labeled}
        splits[ARTIFICIAL] = without_pmids(
            iter_jsonl(RAW_DIR / ARTIFICIAL_FILE), labeled_pmids, dropped
        )
    tokenizer = load_tokenizer(params.model)
    stats: dict[str, SplitStats] = {}
    with atomic_dir(PREPARED_DIR) as out:
        for name in splits:
            stats[name] = write_split(
                out / f"{name}.parquet", splits[name], tokenizer, params.prepare.max_length
            )
            print(f"prepare: {name}: {len(stats[name].pmids)} examples")
        if ARTIFICIAL not in splits:  # an empty file: the pretrain stage's input always exists
            pq.write_table(SCHEMA.empty_table(), out / f"{ARTIFICIAL}.parquet")
        clashes = overlapping_pmids({name: s.pmids for name, s in stats.items()})
        if clashes:
            pmid, first, second = clashes[0]
            raise StageError(
                f"record {pmid}: PMID is in both {first} and {second} "
                f"({len(clashes)} shared PMIDs); refusing to write overlapping splits"
            )
    summaries = {name: s.summary() for name, s in stats.items()}
    if ARTIFICIAL in summaries:
        summaries[ARTIFICIAL]["dropped_shared_pmid"] = dropped.count
        print(f"prepare: {ARTIFICIAL}: {dropped.count} records dropped (PMID also in PQA-L)")
    write_json(DATA_METRICS, {"max_length": params.prepare.max_length} | summaries)


if __name__ == "__main__":
    run_stage(main)
