"""Stage `download`: the official `ori_pqal.json`, pinned by `data.url` and `data.md5`
(`pubmedqa_gpt2/data/download.py`) -> `data/external/ori_pqal.json`."""

from __future__ import annotations

from pubmedqa_gpt2.core.config import load_params
from pubmedqa_gpt2.core.errors import run_stage
from pubmedqa_gpt2.data.download import ensure_official_file


def main() -> None:
    params = load_params().data
    print("download:", ensure_official_file(params.url, params.md5))


if __name__ == "__main__":
    run_stage(main)
