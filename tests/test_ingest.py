"""ingest and download: one schema from every source, and bad input refused cleanly."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pubmedqa_gpt2.core import errors
from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.core.io import md5_of
from pubmedqa_gpt2.data.download import ensure_official_file
from pubmedqa_gpt2.data.records import read_official_json

from .committed import write_params
from .conftest import ROOT, needs_pubmedqa

GOOD = {
    "QUESTION": "Does it work?",
    "CONTEXTS": ["Some background.", "Some results."],
    "LABELS": ["BACKGROUND", "RESULTS"],
    "MESHES": ["Humans"],
    "YEAR": "2001",
    "reasoning_required_pred": "yes",
    "reasoning_free_pred": "yes",
    "final_decision": "yes",
    "LONG_ANSWER": "It works.",
}


def run_stage(workdir: Path, module: str, params: dict | None = None, child: bool = False):
    """Run stage `module` in `workdir` with these params: in this process (its output
    captured), or with `child` as DVC runs it, `python -m stages.<module>`; the finished
    process (exit status, stdout, stderr) either way."""
    write_params(workdir, params)
    if child:
        env = os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        return subprocess.run(
            [sys.executable, "-m", f"stages.{module}"],
            cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    stage = importlib.import_module(f"stages.{module}")
    out, err, code, here = io.StringIO(), io.StringIO(), 0, os.getcwd()
    try:
        os.chdir(workdir)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            errors.run_stage(stage.main)
    except SystemExit as exc:
        code = exc.code
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess([module], code, out.getvalue(), err.getvalue())


def write_official(workdir: Path, content: bytes | str | object) -> None:
    path = workdir / "data/external/ori_pqal.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(json.dumps(content))


def assert_clean_failure(proc, *needles: str) -> None:
    """Exit 1, one line on stderr naming what is wrong, no traceback."""
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def with_field(**changes) -> dict:
    record = dict(GOOD)
    for key, value in changes.items():
        if value is KeyError:
            del record[key]
        else:
            record[key] = value
    return record


BAD_RECORDS = [
    pytest.param(
        {"12345": with_field(QUESTION="  ")}, ["12345", "QUESTION", "empty"], id="empty question"
    ),
    pytest.param(
        {"12345": with_field(QUESTION=KeyError)}, ["12345", "QUESTION", "missing"], id="no question"
    ),
    pytest.param(
        {"12345": with_field(CONTEXTS=[])}, ["12345", "CONTEXTS", "empty list"], id="no contexts"
    ),
    pytest.param(
        {"12345": with_field(CONTEXTS="text")},
        ["12345", "CONTEXTS", "list"],
        id="contexts not list",
    ),
    pytest.param(
        {"12345": with_field(CONTEXTS=["a", ""])},
        ["12345", "CONTEXTS", "item 1"],
        id="empty context",
    ),
    pytest.param(
        {"12345": with_field(CONTEXTS=["a", 3])},
        ["12345", "CONTEXTS", "item 1"],
        id="context not str",
    ),
    pytest.param(
        {"12345": with_field(LONG_ANSWER="")}, ["12345", "LONG_ANSWER", "empty"], id="empty answer"
    ),
    pytest.param(
        {"12345": with_field(final_decision="Yes")},
        ["12345", "final_decision", "'Yes'"],
        id="bad decision",
    ),
    pytest.param(
        {"12345": with_field(final_decision=KeyError)},
        ["12345", "final_decision", "missing"],
        id="no decision",
    ),
    pytest.param({"12a45": GOOD}, ["12a45", "PMID", "integer"], id="pmid not integer"),
    pytest.param({"": GOOD}, ["no PMID"], id="pmid empty"),
    pytest.param({"12345": "not a record"}, ["12345", "object"], id="record not object"),
]


@pytest.mark.parametrize("content, needles", BAD_RECORDS)
def test_bad_record_stops_ingest_naming_pmid_and_field(tmp_path, content, needles):
    write_official(tmp_path, content)
    proc = run_stage(tmp_path, "ingest")
    assert_clean_failure(proc, *needles)
    assert not (tmp_path / "data/raw").exists()


def test_duplicate_pmid_is_refused(tmp_path):
    one = json.dumps(GOOD)
    write_official(tmp_path, f'{{"123": {one}, "456": {one}, "123": {one}}}')
    assert_clean_failure(run_stage(tmp_path, "ingest"), "123", "more than once")


BAD_FILES = [
    pytest.param(None, ["not found"], id="missing file"),
    pytest.param(b"", ["empty"], id="empty file"),
    pytest.param(b'{"123": {"QUESTION": "x",', ["not valid JSON", "line 1"], id="truncated"),
    pytest.param(b"not json at all", ["not valid JSON"], id="not json"),
    pytest.param(b'[{"QUESTION": "x"}]', ["JSON object", "list"], id="wrong top-level type"),
    pytest.param(b"{}", ["no records"], id="no records"),
    pytest.param(b'{"1": {"QUESTION": "caf\xe9"}}', ["not UTF-8"], id="not utf-8"),
]


@pytest.mark.parametrize("content, needles", BAD_FILES)
def test_bad_file_stops_ingest_with_one_line(tmp_path, content, needles):
    if content is not None:
        write_official(tmp_path, content)
    proc = run_stage(tmp_path, "ingest")
    assert_clean_failure(proc, "data/external/ori_pqal.json", *needles)
    assert not (tmp_path / "data/raw").exists()


@pytest.mark.child_process
def test_unknown_param_is_refused_before_any_work(tmp_path):
    write_official(tmp_path, {"12345": GOOD})
    proc = run_stage(tmp_path, "ingest", {"data": {"sorce": "hub"}}, child=True)
    assert_clean_failure(proc, "data.sorce", "unknown key", "allowed: source")


def test_good_record_normalizes_to_one_schema(tmp_path):
    write_official(tmp_path, {"00123": GOOD})
    proc = run_stage(tmp_path, "ingest")
    assert proc.returncode == 0, proc.stderr
    (line,) = (tmp_path / "data/raw/pqa_labeled.jsonl").read_text().splitlines()
    assert json.loads(line) == {
        "pmid": "123",
        "question": "Does it work?",
        "contexts": ["Some background.", "Some results."],
        "labels": ["BACKGROUND", "RESULTS"],
        "meshes": ["Humans"],
        "long_answer": "It works.",
        "final_decision": "yes",
    }


def hub_rows_from_official(official: dict) -> list[dict]:
    """The official JSON in the hub's `pqa_labeled` schema, annotator fields as characters."""
    return [
        {
            "pubid": int(pmid),
            "question": r["QUESTION"],
            "context": {
                "contexts": r["CONTEXTS"],
                "labels": r["LABELS"],
                "meshes": r["MESHES"],
                "reasoning_required_pred": list(r["reasoning_required_pred"]),
                "reasoning_free_pred": list(r["reasoning_free_pred"]),
            },
            "long_answer": r["LONG_ANSWER"],
            "final_decision": r["final_decision"],
        }
        for pmid, r in official.items()
    ]


@needs_pubmedqa
def test_official_json_and_hub_parquet_give_byte_identical_records(tmp_path, pubmedqa_dir):
    official = json.loads((pubmedqa_dir / "ori_pqal.json").read_text())
    a, b = tmp_path / "a", tmp_path / "b"
    write_official(a, (pubmedqa_dir / "ori_pqal.json").read_bytes())
    parquet = b / "data/external/pqa_labeled.parquet"
    parquet.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(hub_rows_from_official(official)), parquet)

    assert run_stage(a, "ingest").returncode == 0
    proc = run_stage(b, "ingest", {"data": {"source": "parquet"}})
    assert proc.returncode == 0, proc.stderr
    raw_a = (a / "data/raw/pqa_labeled.jsonl").read_bytes()
    assert raw_a == (b / "data/raw/pqa_labeled.jsonl").read_bytes()
    assert len(raw_a.splitlines()) == 1000


@needs_pubmedqa
def test_local_copy_of_official_file_is_verified(tmp_path, pubmedqa_dir):
    target = tmp_path / "ori_pqal.json"
    shutil.copy(pubmedqa_dir / "ori_pqal.json", target)
    md5 = md5_of(target)
    assert md5 == "05b2b70949907e260d2aa82bc5d20c6f"
    assert "verified" in ensure_official_file("http://127.0.0.1:9/unused", md5, target)
    with target.open("ab") as f:
        f.write(b"\n")
    with pytest.raises(StageError, match="not the official"):
        ensure_official_file("http://127.0.0.1:9/unused", md5, target)


def test_download_failure_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    target = tmp_path / "ori_pqal.json"
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    with pytest.raises(StageError, match="cannot download.*offline, run `make offline-data`"):
        ensure_official_file("http://127.0.0.1:9/ori_pqal.json", "0" * 32, target)
    assert list(tmp_path.iterdir()) == []


def test_offline_without_a_local_copy_fails_at_once_without_the_network(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE set and no local copy: one line naming `make offline-data` and
    HF_HUB_OFFLINE, and no request at all (a name that never resolves would hang)."""
    from pubmedqa_gpt2.data import download

    def no_network(*args, **kwargs):
        raise AssertionError("the network was tried")

    monkeypatch.setattr(download.urllib.request, "urlopen", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    target = tmp_path / "ori_pqal.json"
    with pytest.raises(StageError) as raised:
        ensure_official_file("https://example.org/ori_pqal.json", "0" * 32, target)
    message = str(raised.value)
    assert "\n" not in message and "make offline-data" in message and "HF_HUB_OFFLINE" in message
    assert list(tmp_path.iterdir()) == []


@needs_pubmedqa
def test_official_file_reads_in_file_order(pubmedqa_dir):
    records = read_official_json(pubmedqa_dir / "ori_pqal.json")
    official = json.loads((pubmedqa_dir / "ori_pqal.json").read_text())
    assert [r.pmid for r in records] == list(official)


def download_stage(workdir: Path, url: str, md5: str):
    """The `download` stage in `workdir` with data.url and data.md5 set."""
    return run_stage(workdir, "download", {"data": {"url": url, "md5": md5}})


def test_a_downloaded_file_with_the_wrong_md5_is_refused_and_not_kept(tmp_path):
    served = tmp_path / "served.json"
    served.write_text('{"1": {}}')  # not the official file
    workdir = tmp_path / "work"
    workdir.mkdir()
    proc = download_stage(workdir, served.as_uri(), "05b2b70949907e260d2aa82bc5d20c6f")
    assert_clean_failure(proc, served.as_uri(), f"md5 {md5_of(served)}", "data.md5 pins 05b2b709")
    external = workdir / "data/external"
    assert list(external.iterdir()) == []  # neither the file nor a temporary copy


@needs_pubmedqa
def test_a_downloaded_file_with_the_pinned_md5_is_kept(tmp_path, pubmedqa_dir):
    workdir = tmp_path / "work"
    workdir.mkdir()
    source = pubmedqa_dir / "ori_pqal.json"
    proc = download_stage(workdir, source.as_uri(), "05b2b70949907e260d2aa82bc5d20c6f")
    assert proc.returncode == 0, proc.stderr
    assert "downloaded from" in proc.stdout
    kept = workdir / "data/external/ori_pqal.json"
    assert kept.read_bytes() == source.read_bytes()
    assert [p.name for p in kept.parent.iterdir()] == ["ori_pqal.json"]
