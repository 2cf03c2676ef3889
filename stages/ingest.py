"""Stage `ingest`: PQA-L (and PQA-A with `data.artificial`) from `data.source`
(`pubmedqa_gpt2/data/sources.py`) -> `data/raw/`, one record schema whatever the source."""

from __future__ import annotations

from pubmedqa_gpt2.core.config import load_params
from pubmedqa_gpt2.core.errors import run_stage
from pubmedqa_gpt2.core.io import atomic_dir
from pubmedqa_gpt2.core.paths import RAW_ARTIFICIAL, RAW_DIR, RAW_LABELED
from pubmedqa_gpt2.data.records import write_jsonl
from pubmedqa_gpt2.data.sources import load_artificial, load_labeled


def main() -> None:
    params = load_params().data
    labeled = load_labeled(params)
    artificial = load_artificial(params)
    with atomic_dir(RAW_DIR) as out:
        write_jsonl(out / RAW_LABELED.name, labeled)
        if artificial:
            write_jsonl(out / RAW_ARTIFICIAL.name, artificial)
    print(f"ingest: {len(labeled)} PQA-L records, {len(artificial)} artificial -> {RAW_DIR}/")


if __name__ == "__main__":
    run_stage(main)
