"""Shared fixtures: where the offline data and tokenizer are, and small helpers.

`.ci/run` sets PUBMEDQA_DIR and GPT2_TOKENIZER_DIR to the copies in `../shared`; elsewhere
the tests that need them skip with the reason shown by `pytest -ra`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def _shared_path(env: str, default: Path, probe: str) -> Path | None:
    path = Path(os.environ.get(env, default)).resolve()
    return path if (path / probe).is_file() else None


PUBMEDQA_DIR = _shared_path("PUBMEDQA_DIR", SHARED / "pubmedqa", "ori_pqal.json")
TOKENIZER_DIR = _shared_path("GPT2_TOKENIZER_DIR", SHARED / "gpt2-tokenizer", "tokenizer.json")

needs_pubmedqa = pytest.mark.skipif(
    PUBMEDQA_DIR is None, reason="PubMedQA data not found: set PUBMEDQA_DIR to ../shared/pubmedqa"
)
needs_tokenizer = pytest.mark.skipif(
    TOKENIZER_DIR is None,
    reason="GPT-2 tokenizer not found: set GPT2_TOKENIZER_DIR to ../shared/gpt2-tokenizer",
)


@pytest.fixture(scope="session")
def pubmedqa_dir() -> Path:
    if PUBMEDQA_DIR is None:
        pytest.skip("PubMedQA data not found: set PUBMEDQA_DIR to ../shared/pubmedqa")
    return PUBMEDQA_DIR


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    if TOKENIZER_DIR is None:
        pytest.skip("GPT-2 tokenizer not found: set GPT2_TOKENIZER_DIR to ../shared/gpt2-tokenizer")
    return TOKENIZER_DIR


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from stages.config import ModelParams
    from stages.modeling import load_tokenizer

    return load_tokenizer(ModelParams(name="gpt2", tokenizer=str(tokenizer_dir)))


@pytest.fixture
def tiny_model_params(tokenizer_dir):
    """A 2-layer random GPT-2 with the real tokenizer: the offline stand-in for gpt2-large."""
    from stages.config import ModelParams

    return ModelParams(
        name="gpt2",
        init="random",
        tokenizer=str(tokenizer_dir),
        overrides={"n_layer": 2, "n_embd": 64, "n_head": 2},
        seed=0,
    )
