"""Stage `fetch`: PubMedQA PQA-L (and PQA-A when asked) from its source -> `data/raw/` in one
record schema.

Reads `params.data`. The default source is the benchmark's official `ori_pqal.json`, which
the `download` stage fetched and checked against its pinned md5. With `data.artificial`,
PQA-A comes from the hub or from `data.artificial_parquet`, validated the same way.
"""

from __future__ import annotations

from pathlib import Path

from stages.config import DataParams, load_params
from stages.download import OFFICIAL_FILE
from stages.errors import run_stage
from stages.io import atomic_dir
from stages.records import Record, read_hub, read_hub_parquet, read_official_json, write_jsonl

RAW_DIR = Path("data/raw")
LABELED_FILE = "pqa_labeled.jsonl"
ARTIFICIAL_FILE = "pqa_artificial.jsonl"


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


def main() -> None:
    params = load_params().data
    labeled = load_labeled(params)
    artificial = load_artificial(params)
    with atomic_dir(RAW_DIR) as out:
        write_jsonl(out / LABELED_FILE, labeled)
        if artificial:
            write_jsonl(out / ARTIFICIAL_FILE, artificial)
    print(f"fetch: {len(labeled)} PQA-L records, {len(artificial)} artificial -> {RAW_DIR}/")


if __name__ == "__main__":
    run_stage(main)
