"""`make smoke-params`: smoke.yaml applied to params.yaml in place, or refused with the file as
it was (the edit `make smoke` makes is checked against it in tests/test_pipeline.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT


def make_smoke_params(folder: Path, tokenizer_dir: Path) -> subprocess.CompletedProcess:
    """`make smoke-params GPT2_TOKENIZER_DIR=...` in `folder`, with this checkout's code."""
    return subprocess.run(
        ["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), "smoke-params",
         f"PYTHON={sys.executable}", f"GPT2_TOKENIZER_DIR={tokenizer_dir}"],
        cwd=folder, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.child_process
def test_a_tokenizer_folder_that_does_not_exist_is_refused(tmp_path) -> None:
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    before = (tmp_path / "params.yaml").read_bytes()
    missing = tmp_path / "no" / "tokenizer"
    proc = make_smoke_params(tmp_path, missing)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: smoke.yaml: GPT2_TOKENIZER_DIR={missing}: no such directory"]
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "params.yaml").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no .tmp left


@pytest.mark.child_process
def test_an_existing_tokenizer_folder_is_written_as_an_absolute_path(tmp_path) -> None:
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "tok").mkdir()
    proc = make_smoke_params(tmp_path, Path("tok"))  # relative: resolved from where make runs
    assert proc.returncode == 0, proc.stdout + proc.stderr
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert params["model"]["tokenizer"] == str(tmp_path / "tok")
    assert params["model"]["init"] == "random"


def test_overrides_that_do_not_validate_leave_the_params_file_as_it_was(tmp_path) -> None:
    from pubmedqa_gpt2.errors import StageError
    from pubmedqa_gpt2.smoke_params import apply_overrides

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    before = (tmp_path / "params.yaml").read_bytes()
    with pytest.raises(StageError, match="train.epochs"):
        apply_overrides(tmp_path / "params.yaml", {"train": {"epochs": 0}})
    assert (tmp_path / "params.yaml").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no .tmp left
