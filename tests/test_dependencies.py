"""Declared dependencies are the imported ones (deptry, configured in pyproject.toml): every
third-party package the code imports is declared, none arrives only as another's dependency,
every declared one is used (or listed with its reason), and dev-only packages are imported by
tooling alone."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

pytest.importorskip("deptry", reason="deptry is in the dev extra")


def deptry(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deptry", ".", "--no-ansi"],
        cwd=root, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.child_process
def test_every_import_is_declared_and_every_declaration_imported():
    proc = deptry(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture
def copy(tmp_path) -> Path:
    """The code and pyproject.toml, to break one thing in."""
    for folder in ("pubmedqa_gpt2", "stages", "bench", "tests"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__py*"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.child_process
@pytest.mark.parametrize(
    ("change", "rule"),
    [
        # requests is installed (datasets needs it) but not declared: a transitive import
        (
            ("pubmedqa_gpt2/core/io.py", "import json\n", "import json\n\nimport requests\n"),
            "DEP003",
        ),
        # a dev-only package imported by the library
        (
            ("pubmedqa_gpt2/core/io.py", "import json\n", "import json\n\nimport hypothesis\n"),
            "DEP004",
        ),
        # a declared dependency nothing imports
        (("pyproject.toml", '"numpy>=1.26",', '"numpy>=1.26", "colorama",'), "DEP002"),
        # numpy imported by the library but no longer declared
        (("pyproject.toml", '"numpy>=1.26",', ""), "DEP003"),
    ],
)
def test_the_check_fails_on_a_broken_copy(copy, change, rule):
    path, old, new = change
    text = (copy / path).read_text()
    assert text.count(old) == 1, old
    (copy / path).write_text(text.replace(old, new))
    proc = deptry(copy)
    assert proc.returncode == 1 and rule in proc.stdout + proc.stderr, proc.stdout + proc.stderr
