"""The stages that compute with tensors keep freed memory for reuse (pubmedqa_gpt2/malloc.py):
a tensor allocated again after one was freed is not page-faulted in afresh."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pubmedqa_gpt2 import malloc

from .conftest import ROOT

# In a process of its own (the setting is process-wide): 100 MB tensors allocated, written and
# freed; the page faults of the last five, after ten to warm up.
FAULTS = """
import resource, sys
import torch
from pubmedqa_gpt2.malloc import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty(25_000_000).fill_(1.0)
before = faults()
for _ in range(5):
    torch.empty(25_000_000).fill_(1.0)
print(kept, faults() - before)
"""


def page_faults(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS, mode], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_a_freed_tensor_s_memory_is_reused_not_mapped_again():
    kept, with_setting = page_faults("keep")
    _, without = page_faults("default")
    assert kept == "True"
    assert without >= 5 * 100_000_000 // 4096 // 2  # glibc's default: about a fault a page
    assert with_setting < without // 20, (with_setting, without)


def test_a_user_s_own_malloc_settings_win(monkeypatch):
    monkeypatch.setattr(malloc.ctypes, "CDLL", lambda name: pytest.fail("mallopt called"))
    assert malloc.keep_freed_memory({"MALLOC_TRIM_THRESHOLD_": "0"}) is False
    assert malloc.keep_freed_memory({"MALLOC_MMAP_THRESHOLD_": "131072"}) is False
    monkeypatch.setattr(malloc.sys, "platform", "darwin")
    assert malloc.keep_freed_memory({}) is False
