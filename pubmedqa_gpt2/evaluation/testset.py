"""The prepared test questions (`data/prepared/test.parquet`), checked row by row."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.data.token_files import read_prepared
from pubmedqa_gpt2.prompt import LABELS

COLUMNS = (
    "pmid",
    "question",
    "decision",
    "long_answer",
    "prompt_ids",
    "completion_ids",
    "shortened",
)


@dataclass(frozen=True)
class TestExample:
    """One prepared test question (see pubmedqa_gpt2/data/token_files.py for the columns)."""

    pmid: str
    question: str
    decision: str
    long_answer: str
    prompt_ids: list[int]
    completion_ids: list[int]
    """Gold decision + long answer + end-of-text, as `decision_text` and the template encode."""
    shortened: bool
    """The context was shortened to fit `prepare.max_length`."""


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
