"""Where PubMedQA comes from (`pubmedqa_gpt2/data/sources.py`): with `data.source: hub` and
PQA-A from the hub, the dataset, configuration and revision the params name reach the hub
reader (stood in for: no hub is reachable here; the parquet and official paths run in
tests/test_ingest.py and tests/test_artificial.py)."""

from __future__ import annotations

from pubmedqa_gpt2.data import sources

from .committed import committed_params


def test_the_hub_is_read_with_the_params_dataset_configuration_and_revision(monkeypatch):
    calls = []
    monkeypatch.setattr(sources, "read_hub", lambda *args: calls.append(args) or ["record"])
    data = committed_params(
        {"data": {"source": "hub", "hub_id": "org/pubmed_qa", "hub_revision": "abc123",
                  "artificial": True, "artificial_parquet": None, "max_artificial": 7}}
    ).data  # fmt: skip
    assert sources.load_labeled(data) == ["record"]
    assert sources.load_artificial(data) == ["record"]
    assert calls == [
        ("org/pubmed_qa", "pqa_labeled", "abc123"),
        ("org/pubmed_qa", "pqa_artificial", "abc123", 7),
    ]
