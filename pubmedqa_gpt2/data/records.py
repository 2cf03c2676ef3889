"""PubMedQA records: one schema whatever the source, validated field by field.

Sources: the benchmark's official JSON (`{pmid: {QUESTION, CONTEXTS, ...}}`) and rows in the
Hugging Face hub's schema (`pubid`, `question`, `context: {contexts, labels, meshes}`, ...),
read from the hub with `datasets` or from a parquet file. Every source normalizes to
`Record`, and records are written as sorted-key JSON lines, so the same records give a
byte-identical file whichever source they came from.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.prompt import LABELS


@dataclass(frozen=True)
class Record:
    pmid: str
    question: str
    contexts: list[str]
    labels: list[str]
    """The section label of each context (BACKGROUND, METHODS, ...)."""
    meshes: list[str]
    long_answer: str
    final_decision: str


# Where each Record field lives in a source's raw record (dotted paths into nested dicts).
OFFICIAL_FIELDS = {
    "question": "QUESTION",
    "contexts": "CONTEXTS",
    "labels": "LABELS",
    "meshes": "MESHES",
    "long_answer": "LONG_ANSWER",
    "final_decision": "final_decision",
}
HUB_FIELDS = {
    "question": "question",
    "contexts": "context.contexts",
    "labels": "context.labels",
    "meshes": "context.meshes",
    "long_answer": "long_answer",
    "final_decision": "final_decision",
}

_MISSING = object()


def _lookup(raw: Mapping[str, Any], path: str) -> Any:
    value: Any = raw
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def normalize(pmid: Any, raw: Any, fields: Mapping[str, str], origin: str) -> Record:
    """Check one raw record and return it as a Record; StageError names PMID and field."""

    def fail(field: str, problem: str) -> StageError:
        return StageError(f"{origin}: record {pmid}: field {field}: {problem}")

    if pmid is None or (isinstance(pmid, str) and not pmid.strip()):
        raise StageError(f"{origin}: a record has no PMID")
    if isinstance(pmid, bool) or not (
        isinstance(pmid, int) or (isinstance(pmid, str) and pmid.strip().isdigit())
    ):
        raise StageError(f"{origin}: record {pmid!r}: PMID is not an integer")
    pmid = str(int(pmid))
    if not isinstance(raw, Mapping):
        raise StageError(f"{origin}: record {pmid}: expected an object, got {type(raw).__name__}")

    def text(key: str) -> str:
        value = _lookup(raw, fields[key])
        if value is _MISSING:
            raise fail(fields[key], "missing")
        if not isinstance(value, str):
            raise fail(fields[key], f"expected a string, got {type(value).__name__}")
        if not value.strip():
            raise fail(fields[key], "empty")
        return value

    def strings(key: str, non_empty: bool) -> list[str]:
        value = _lookup(raw, fields[key])
        if value is _MISSING:
            raise fail(fields[key], "missing")
        if not isinstance(value, list | tuple):
            raise fail(fields[key], f"expected a list of strings, got {type(value).__name__}")
        if non_empty and not value:
            raise fail(fields[key], "empty list")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise fail(fields[key], f"item {i} is {type(item).__name__}, not a string")
            if non_empty and not item.strip():
                raise fail(fields[key], f"item {i} is empty")
        return list(value)

    decision = text("final_decision")
    if decision not in LABELS:
        raise fail(fields["final_decision"], f"{decision!r} is not one of {', '.join(LABELS)}")
    return Record(
        pmid=pmid,
        question=text("question"),
        contexts=strings("contexts", non_empty=True),
        labels=strings("labels", non_empty=False),
        meshes=strings("meshes", non_empty=False),
        long_answer=text("long_answer"),
        final_decision=decision,
    )


def unique(records: Iterable[Record], origin: str) -> list[Record]:
    """The records as a list, refusing a PMID that occurs twice."""
    seen: set[str] = set()
    out = []
    for record in records:
        if record.pmid in seen:
            raise StageError(f"{origin}: record {record.pmid}: PMID occurs more than once")
        seen.add(record.pmid)
        out.append(record)
    return out


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicate_keys(items: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads keeps the last of two equal keys; a duplicate PMID must be an error."""
    out: dict[str, Any] = {}
    for key, value in items:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def read_official_json(path: Path) -> list[Record]:
    """The benchmark's `ori_pqal.json`: a JSON object mapping PMID to record, in file order."""
    origin = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StageError(f"{origin}: file not found") from None
    except OSError as exc:
        raise StageError(f"{origin}: cannot read: {exc.strerror}") from None
    if not data.strip():
        raise StageError(f"{origin}: file is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StageError(f"{origin}: not UTF-8 (byte {exc.start})") from None
    try:
        top = json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
    except _DuplicateKey as exc:
        key = exc.args[0]
        what = f"record {key}: PMID" if key.isdigit() else f"key {key!r}"
        raise StageError(f"{origin}: {what} occurs more than once") from None
    except json.JSONDecodeError as exc:
        raise StageError(
            f"{origin}: not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"
        ) from None
    if not isinstance(top, dict):
        raise StageError(
            f"{origin}: expected a JSON object mapping PMID to record, got {type(top).__name__}"
        )
    if not top:
        raise StageError(f"{origin}: contains no records")
    records = (normalize(pmid, raw, OFFICIAL_FIELDS, origin) for pmid, raw in top.items())
    return unique(records, origin)


def from_hub_rows(rows: Iterable[Mapping[str, Any]], origin: str) -> list[Record]:
    """Rows in the hub's schema (from `datasets` or a parquet file) as Records."""
    return unique((normalize(row.get("pubid"), row, HUB_FIELDS, origin) for row in rows), origin)


def read_hub_parquet(path: Path, limit: int | None = None) -> list[Record]:
    """A parquet file in the hub's schema (`pqa_labeled` or `pqa_artificial`); its first
    `limit` rows when a limit is given."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    origin = str(path)
    if not path.is_file():
        raise StageError(f"{origin}: file not found")
    try:
        table = pq.read_table(path)
        rows = (table if limit is None else table.slice(0, limit)).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise StageError(f"{origin}: not a readable parquet file: {exc}") from None
    if not rows:
        raise StageError(f"{origin}: contains no records")
    return from_hub_rows(rows, origin)


def read_hub(hub_id: str, config: str, revision: str, limit: int | None = None) -> list[Record]:
    """A PubMedQA config (`pqa_labeled`, `pqa_artificial`) from the Hugging Face hub."""
    import datasets

    split = "train" if limit is None else f"train[:{limit}]"
    try:
        rows = datasets.load_dataset(hub_id, config, split=split, revision=revision)
    except Exception as exc:  # network, auth and schema errors all end the stage the same way
        raise StageError(f"data.hub_id: cannot load {hub_id} ({config}): {exc}") from None
    return from_hub_rows(rows, f"{hub_id}/{config}")


def write_jsonl(path: Path, records: Iterable[Record]) -> int:
    """Write records as sorted-key JSON lines (UTF-8); returns how many."""
    n = 0
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(asdict(record), ensure_ascii=False, sort_keys=True) + "\n")
            n += 1
    return n


def iter_jsonl(path: Path) -> Iterator[Record]:
    """Records back from `write_jsonl` output (ingest's output, already validated)."""
    with path.open(encoding="utf-8") as f:
        for line in f:
            yield Record(**json.loads(line))
