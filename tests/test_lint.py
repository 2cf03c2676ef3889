"""`make lint` inside the suite: `ruff check` and `ruff format --check` (settings in
pyproject.toml) pass on the whole repository, so `.ci/run` (which runs the suite) lints."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

pytest.importorskip("ruff", reason="ruff is in the dev extra")


def ruff(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=root, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


@pytest.mark.child_process
@pytest.mark.parametrize("args", [("check", "."), ("format", "--check", ".")])
def test_the_repository_is_linted_and_formatted(args):
    proc = ruff(ROOT, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.child_process
@pytest.mark.parametrize(
    ("args", "new"),
    [
        (("check", "."), "import os\n"),  # F401: imported, never used
        (("format", "--check", "."), "X = {'a':1}\n"),  # quotes and spacing
    ],
)
def test_a_lint_or_format_error_fails(tmp_path, args, new):
    shutil.copytree(ROOT / "pubmedqa_gpt2", tmp_path / "pubmedqa_gpt2",
                    ignore=shutil.ignore_patterns("__py*"))  # fmt: skip
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    assert ruff(tmp_path, *args).returncode == 0
    io = tmp_path / "pubmedqa_gpt2/core/io.py"
    io.write_text(io.read_text() + new)
    assert ruff(tmp_path, *args).returncode == 1
