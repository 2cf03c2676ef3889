"""Where the benchmarks and the GPU kit find the offline data and tokenizer: `PUBMEDQA_DIR` and
`GPT2_TOKENIZER_DIR`, else the copies in `../shared`. Plain Python, no torch and nothing of the
project's, so that `make gpu-kit` runs in any interpreter with `packaging`."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def shared_path(env: str, default: Path, probe: str) -> Path | None:
    """The offline data or tokenizer folder named by `env` (else `default`), if it holds `probe`."""
    path = Path(os.environ.get(env, default)).resolve()
    return path if (path / probe).is_file() else None


PUBMEDQA_DIR = shared_path("PUBMEDQA_DIR", SHARED / "pubmedqa", "ori_pqal.json")
TOKENIZER_DIR = shared_path("GPT2_TOKENIZER_DIR", SHARED / "gpt2-tokenizer", "tokenizer.json")


def require_shared() -> tuple[Path, Path]:
    """(PubMedQA folder, tokenizer folder); SystemExit saying which variable to set if absent."""
    if PUBMEDQA_DIR is None or TOKENIZER_DIR is None:
        raise SystemExit(
            "the offline data is missing: set PUBMEDQA_DIR (a folder with ori_pqal.json) and "
            "GPT2_TOKENIZER_DIR (one with tokenizer.json), e.g. ../shared/pubmedqa and "
            "../shared/gpt2-tokenizer"
        )
    return PUBMEDQA_DIR, TOKENIZER_DIR
