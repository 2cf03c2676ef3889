"""The prepared splits' format (`data/prepared/*.parquet`): one row per example with pmid,
question, decision, long_answer, prompt_ids, completion_ids (encoded by `pubmedqa_gpt2.prompt`)
and shortened. Written by the prepare stage, read by pretrain, train and evaluate."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from pubmedqa_gpt2.core.errors import StageError

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


class TokenIds(Protocol):
    prompt_ids: list[int]
    completion_ids: list[int]


def check_fits(examples: Sequence[TokenIds], limit: int, path: Path) -> None:
    """Every prompt + completion of `path` must fit the model's `limit` positions (training
    reads both, and so does the reference answer's perplexity)."""
    for i, ex in enumerate(examples):
        length = len(ex.prompt_ids) + len(ex.completion_ids)
        if length > limit:
            raise StageError(
                f"{path}: row {i}: {length} tokens, over the model's {limit} positions; "
                "lower prepare.max_length"
            )
