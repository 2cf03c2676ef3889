"""PQA-A (pqa_artificial) as phase 1's data: fetched from a hub-schema parquet file, validated
like PQA-L, kept apart from PQA-L's splits, and never sharing a PMID with a PQA-L record."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from .conftest import needs_pubmedqa, needs_tokenizer, write_synthetic_pqa_a
from .test_ingest import run_stage, write_official

PARQUET = "data/external/pqa_artificial.parquet"


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


@needs_pubmedqa
def test_pqa_a_from_a_parquet_keeps_the_first_n_records_in_the_record_schema(
    tmp_path, pubmedqa_dir
):
    official = json.loads((pubmedqa_dir / "ori_pqal.json").read_text())
    write_official(tmp_path, (pubmedqa_dir / "ori_pqal.json").read_bytes())
    rows = write_synthetic_pqa_a(tmp_path / PARQUET, official, 30)
    data = {"artificial": True, "artificial_parquet": PARQUET, "max_artificial": 20}
    proc = run_stage(tmp_path, "ingest", {"data": data})
    assert proc.returncode == 0, proc.stderr
    assert "1000 PQA-L records, 20 artificial" in proc.stdout
    artificial = read_jsonl(tmp_path / "data/raw/pqa_artificial.jsonl")
    assert [r["pmid"] for r in artificial] == [str(row["pubid"]) for row in rows[:20]]
    labeled = read_jsonl(tmp_path / "data/raw/pqa_labeled.jsonl")
    assert set(artificial[0]) == set(labeled[0])  # one record schema for both
    first = artificial[0]
    assert first["question"] == rows[0]["question"]
    assert first["contexts"] == rows[0]["context"]["contexts"]
    assert first["final_decision"] == rows[0]["final_decision"]


@needs_pubmedqa
def test_a_bad_pqa_a_record_is_refused_by_record_and_field_and_nothing_is_written(
    tmp_path, pubmedqa_dir
):
    official = json.loads((pubmedqa_dir / "ori_pqal.json").read_text())
    write_official(tmp_path, (pubmedqa_dir / "ori_pqal.json").read_bytes())
    rows = write_synthetic_pqa_a(tmp_path / PARQUET, official, 5)
    rows[3]["final_decision"] = "perhaps"
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / PARQUET)
    proc = run_stage(
        tmp_path, "ingest", {"data": {"artificial": True, "artificial_parquet": PARQUET}}
    )
    assert proc.returncode == 1
    assert str(rows[3]["pubid"]) in proc.stderr and "final_decision" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data/raw").exists()


@needs_pubmedqa
@needs_tokenizer
def test_prepare_keeps_pqa_a_apart_and_drops_records_sharing_a_pmid_with_pqa_l(
    tmp_path, pubmedqa_dir, tokenizer_dir
):
    official = json.loads((pubmedqa_dir / "ori_pqal.json").read_text())
    test_pmids = set(json.loads((pubmedqa_dir / "test_ground_truth.json").read_text()))
    write_official(tmp_path, (pubmedqa_dir / "ori_pqal.json").read_bytes())
    # 7 of the 60 keep a PQA-L PMID; PQA-L's first records include test questions.
    rows = write_synthetic_pqa_a(tmp_path / PARQUET, official, 60, shared=7)
    shared = {str(r["pubid"]) for r in rows[:7]}
    assert shared & test_pmids
    data = {"artificial": True, "artificial_parquet": PARQUET}
    model = {"name": "gpt2", "tokenizer": str(tokenizer_dir)}
    assert run_stage(tmp_path, "ingest", {"data": data}).returncode == 0
    proc = run_stage(tmp_path, "prepare", {"data": data, "model": model})
    assert proc.returncode == 0, proc.stderr

    prepared = tmp_path / "data/prepared"
    artificial = pq.read_table(prepared / "artificial.parquet").column("pmid").to_pylist()
    assert artificial == [str(r["pubid"]) for r in rows[7:]]
    train = pq.read_table(prepared / "train.parquet").column("pmid").to_pylist()
    assert len(train) == 450 and not set(train) & set(artificial)
    stats = json.loads((tmp_path / "metrics/data.json").read_text())
    assert stats["artificial"]["dropped_shared_pmid"] == 7
    assert stats["artificial"]["examples"] == 53
    assert stats["artificial"]["labels"]["maybe"] == 0
    assert stats["train"]["examples"] == 450
