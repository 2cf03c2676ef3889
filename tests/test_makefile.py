"""`make help` (the default target) lists every target of the Makefile, one line each."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from .conftest import ROOT


@pytest.mark.child_process
@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_alone_lists_every_target_with_its_line():
    targets = re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M)
    assert {"help", "test", "lint", "smoke", "mutate"} <= set(targets)
    out = subprocess.run(["make", "-s", "-C", str(ROOT)], capture_output=True, text=True)
    lines = [line.split() for line in out.stdout.splitlines()]
    assert out.returncode == 0, out.stderr
    assert [words[1] for words in lines] == targets  # each once, in the Makefile's order
    assert all(words[0] == "make" and len(words) > 3 for words in lines), out.stdout
