"""Records in-process: the bad records and files of test_ingest.py read by the library itself
(test_ingest.py runs the ingest stage as a command, which `make mutate` cannot follow), the hub
schema, and the JSON-lines round trip."""

from __future__ import annotations

import json

import pytest

from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.data.records import (
    Record,
    from_hub_rows,
    iter_jsonl,
    read_hub_parquet,
    read_official_json,
    write_jsonl,
)

from .test_ingest import BAD_FILES, BAD_RECORDS, GOOD, write_official

OFFICIAL = "data/external/ori_pqal.json"
EXPECTED = Record(
    pmid="123",
    question="Does it work?",
    contexts=["Some background.", "Some results."],
    labels=["BACKGROUND", "RESULTS"],
    meshes=["Humans"],
    long_answer="It works.",
    final_decision="yes",
)


@pytest.mark.parametrize("content, needles", BAD_RECORDS + BAD_FILES)
def test_a_bad_record_or_file_is_one_error_naming_it(tmp_path, content, needles):
    if content is not None:
        write_official(tmp_path, content)
    with pytest.raises(StageError) as error:
        read_official_json(tmp_path / OFFICIAL)
    message = str(error.value)
    assert message.startswith(f"{tmp_path / OFFICIAL}: ")
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({**GOOD, "QUESTION": 3}, "record 123: field QUESTION: expected a string, got int"),
        ({**GOOD, "QUESTION": "  "}, "record 123: field QUESTION: empty"),
        ({**GOOD, "CONTEXTS": "text"}, "record 123: field CONTEXTS: expected a list of strings, "
         "got str"),
        ({**GOOD, "CONTEXTS": []}, "record 123: field CONTEXTS: empty list"),
        ({**GOOD, "CONTEXTS": ["a", " "]}, "record 123: field CONTEXTS: item 1 is empty"),
        ({**GOOD, "CONTEXTS": ["a", 3]}, "record 123: field CONTEXTS: item 1 is int, not a "
         "string"),
        ({k: v for k, v in GOOD.items() if k != "MESHES"}, "record 123: field MESHES: missing"),
        ({**GOOD, "final_decision": "Yes"}, "record 123: field final_decision: 'Yes' is not one "
         "of yes, no, maybe"),
    ],
)  # fmt: skip
def test_each_field_problem_is_worded(tmp_path, record, message):
    write_official(tmp_path, {"123": record})
    with pytest.raises(StageError, match=f"^{tmp_path / OFFICIAL}: {message}$"):
        read_official_json(tmp_path / OFFICIAL)


def test_empty_labels_and_meshes_are_allowed_but_not_empty_contexts(tmp_path):
    write_official(tmp_path, {"00123": {**GOOD, "LABELS": [], "MESHES": [""]}})
    (record,) = read_official_json(tmp_path / OFFICIAL)
    assert (record.pmid, record.labels, record.meshes) == ("123", [], [""])


@pytest.mark.parametrize(
    ("pmid", "message"),
    [
        ("  ", "a record has no PMID"),
        ("12a", "record '12a': PMID is not an integer"),
        ("-5", "record '-5': PMID is not an integer"),
    ],
)
def test_pmids_are_integers(tmp_path, pmid, message):
    write_official(tmp_path, {pmid: GOOD})
    with pytest.raises(StageError, match=f"^{tmp_path / OFFICIAL}: {message}$"):
        read_official_json(tmp_path / OFFICIAL)


def test_file_level_messages_in_full(tmp_path):
    path = tmp_path / OFFICIAL
    cases = [
        (b"  \n", "file is empty"),
        (b"[1]", "expected a JSON object mapping PMID to record, got list"),
        (b"{}", "contains no records"),
        (b'{"1": {"a": 1}, "1": {}}', "record 1: PMID occurs more than once"),
        (b'{"x": {}, "x": {}}', "key 'x' occurs more than once"),
        (b'{"1": \n  x}', "not valid JSON (line 2, column 3): Expecting value"),
        (b'{"1": "caf\xe9"}', "not UTF-8 (byte 10)"),
    ]
    for content, message in cases:
        write_official(tmp_path, content)
        with pytest.raises(StageError) as error:
            read_official_json(path)
        assert str(error.value) == f"{path}: {message}"
    path.unlink()
    with pytest.raises(StageError, match=f"^{path}: file not found$"):
        read_official_json(path)
    path.mkdir()
    with pytest.raises(StageError, match=f"^{path}: cannot read: Is a directory$"):
        read_official_json(path)


def test_official_records_normalize_in_file_order(tmp_path):
    write_official(tmp_path, {"00123": GOOD, "7": {**GOOD, "final_decision": "maybe"}})
    records = read_official_json(tmp_path / OFFICIAL)
    assert records[0] == EXPECTED
    assert [(r.pmid, r.final_decision) for r in records] == [("123", "yes"), ("7", "maybe")]


def hub_row(pubid, **changes) -> dict:
    context = {"contexts": GOOD["CONTEXTS"], "labels": GOOD["LABELS"], "meshes": GOOD["MESHES"]}
    row = {"pubid": pubid, "question": GOOD["QUESTION"], "context": context}
    return row | {"long_answer": GOOD["LONG_ANSWER"], "final_decision": "yes"} | changes


def test_hub_rows_give_the_same_records_as_the_official_file():
    assert from_hub_rows([hub_row(123)], "hub") == [EXPECTED]
    with pytest.raises(StageError, match="^hub: record 123: field context.labels: missing$"):
        from_hub_rows([hub_row(123, context={"contexts": ["a"], "meshes": []})], "hub")
    with pytest.raises(StageError, match="^hub: record 123: field context.contexts: missing$"):
        from_hub_rows([hub_row(123, context="flat text")], "hub")
    with pytest.raises(StageError, match="^hub: record 123: PMID occurs more than once$"):
        from_hub_rows([hub_row(123), hub_row("123")], "hub")
    with pytest.raises(StageError, match="^hub: record True: PMID is not an integer$"):
        from_hub_rows([hub_row(True)], "hub")
    with pytest.raises(StageError, match="^hub: a record has no PMID$"):
        from_hub_rows([hub_row(None)], "hub")


def test_hub_parquet_reads_its_first_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "pqa.parquet"
    with pytest.raises(StageError, match=f"^{path}: file not found$"):
        read_hub_parquet(path)
    pq.write_table(pa.Table.from_pylist([hub_row(123), hub_row(7), hub_row(9)]), path)
    assert [r.pmid for r in read_hub_parquet(path)] == ["123", "7", "9"]
    assert [r.pmid for r in read_hub_parquet(path, limit=2)] == ["123", "7"]
    assert read_hub_parquet(path, limit=1) == [EXPECTED]
    pq.write_table(pa.Table.from_pylist([hub_row(1)]).slice(0, 0), path)
    with pytest.raises(StageError, match=f"^{path}: contains no records$"):
        read_hub_parquet(path)
    path.write_bytes(b"not parquet")
    with pytest.raises(StageError, match=f"^{path}: not a readable parquet file: "):
        read_hub_parquet(path)


def test_jsonl_is_sorted_keys_utf8_and_reads_back(tmp_path):
    record = Record("5", "Café?", ["c"], [], [], "Sí.", "no")
    path = tmp_path / "records.jsonl"
    assert write_jsonl(path, [EXPECTED, record]) == 2
    lines = path.read_bytes().split(b"\n")
    assert lines[2] == b"" and len(lines) == 3
    assert (
        lines[1]
        == (
            '{"contexts": ["c"], "final_decision": "no", "labels": [], "long_answer": "Sí.", '
            '"meshes": [], "pmid": "5", "question": "Café?"}'
        ).encode()
    )
    assert list(iter_jsonl(path)) == [EXPECTED, record]
    assert json.loads(lines[0])["pmid"] == "123"


def test_messages_that_name_the_type_the_origin_and_a_pmid_written_twice(tmp_path):
    write_official(tmp_path, {"123": "text"})
    with pytest.raises(StageError) as error:
        read_official_json(tmp_path / OFFICIAL)
    assert str(error.value) == f"{tmp_path / OFFICIAL}: record 123: expected an object, got str"
    write_official(tmp_path, {"123": {k: v for k, v in GOOD.items() if k != "QUESTION"}})
    with pytest.raises(StageError) as error:
        read_official_json(tmp_path / OFFICIAL)
    assert str(error.value) == f"{tmp_path / OFFICIAL}: record 123: field QUESTION: missing"
    write_official(tmp_path, {"123": GOOD, "0123": GOOD})  # two keys, one PMID
    with pytest.raises(StageError) as error:
        read_official_json(tmp_path / OFFICIAL)
    assert str(error.value) == f"{tmp_path / OFFICIAL}: record 123: PMID occurs more than once"


def test_a_bad_parquet_row_is_named_by_the_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "pqa.parquet"
    pq.write_table(pa.Table.from_pylist([hub_row(123, final_decision="perhaps")]), path)
    with pytest.raises(StageError) as error:
        read_hub_parquet(path)
    assert str(error.value) == (
        f"{path}: record 123: field final_decision: 'perhaps' is not one of yes, no, maybe"
    )


def test_the_hub_is_read_through_datasets_with_the_pinned_revision(monkeypatch):
    import datasets

    from pubmedqa_gpt2.data.records import read_hub

    calls = []

    def load_dataset(hub_id, config, split, revision):
        calls.append((hub_id, config, split, revision))
        return [hub_row(123), hub_row(7)]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert [r.pmid for r in read_hub("org/pubmed_qa", "pqa_labeled", "abc")] == ["123", "7"]
    read_hub("org/pubmed_qa", "pqa_artificial", "abc", limit=5)
    assert calls == [
        ("org/pubmed_qa", "pqa_labeled", "train", "abc"),
        ("org/pubmed_qa", "pqa_artificial", "train[:5]", "abc"),
    ]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: [hub_row(1, question="")])
    with pytest.raises(StageError) as error:
        read_hub("org/pubmed_qa", "pqa_labeled", "abc")
    assert str(error.value) == "org/pubmed_qa/pqa_labeled: record 1: field question: empty"

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(StageError) as error:
        read_hub("org/pubmed_qa", "pqa_labeled", "abc")
    assert str(error.value) == "data.hub_id: cannot load org/pubmed_qa (pqa_labeled): no network"
