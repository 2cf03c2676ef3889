"""PubMedQA PQA-L (and PQA-A when asked) from its source, in one record schema.

Reads `params.data`. The default source is the benchmark's official `ori_pqal.json`, which
the `download` stage fetched and checked against its pinned md5. With `data.artificial`,
PQA-A comes from the hub or from `data.artificial_parquet`, validated the same way.
"""

from __future__ import annotations

from pathlib import Path

from pubmedqa_gpt2.core.config import DataParams
from pubmedqa_gpt2.core.paths import OFFICIAL_FILE
from pubmedqa_gpt2.data.records import Record, read_hub, read_hub_parquet, read_official_json


def load_labeled(params: DataParams) -> list[Record]:
    """PQA-L's 1,000 expert-labelled records from the configured source."""
    if params.source == "official":
        return read_official_json(OFFICIAL_FILE)
    if params.source == "parquet":
        return read_hub_parquet(Path(params.parquet_path))
    return read_hub(params.hub_id, "pqa_labeled", params.hub_revision)


def load_artificial(params: DataParams) -> list[Record]:
    """PQA-A's records (the first `max_artificial`), from a local parquet file or the hub."""
    if not params.artificial:
        return []
    if params.artificial_parquet:
        return read_hub_parquet(Path(params.artificial_parquet), params.max_artificial)
    return read_hub(params.hub_id, "pqa_artificial", params.hub_revision, params.max_artificial)
