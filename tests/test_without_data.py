"""A fresh machine: no `../shared`, no data variables, no network. The README promises that
`python -m pytest` passes there: every test passes, or skips saying which data it needs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from . import slurm_cluster
from .conftest import NO_CHROMIUM, NO_PUBMEDQA, NO_TOKENIZER, ROOT

THIS_FILE = Path(__file__).relative_to(ROOT)


@pytest.mark.e2e
def test_the_suite_passes_without_the_data_the_tokenizer_or_a_network(tmp_path):
    for name in ("pubmedqa", "gpt2-tokenizer", "cache"):
        (tmp_path / name).mkdir()
    env = {
        **os.environ,
        "PUBMEDQA_DIR": str(tmp_path / "pubmedqa"),  # set, and empty: nothing is fetched
        "GPT2_TOKENIZER_DIR": str(tmp_path / "gpt2-tokenizer"),
        "CI": "",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),  # no earlier fetch, no hub cache
    }
    env.pop("HF_HOME", None)
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         "--ignore", str(THIS_FILE)],  # not itself, again and again
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    summary = out.strip().splitlines()[-1]
    print(summary)
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary)}
    assert proc.returncode == 0, out[-6000:]
    assert set(counts) <= {"passed", "skipped", "deselected", "warnings", "warning"}, summary
    assert counts["passed"] >= 100 and counts["skipped"] >= 50, summary
    # Each skip says which data it needs, in the conftest markers' words; nothing else skips
    # but the screenshot test, on a machine without a headless Chromium, and the cluster
    # tests, on one without Debian's SLURM packages or root (`.ci/run` installs both).
    skips = re.findall(r"^SKIPPED \[(\d+)\] [^:]+:\d+: (.*)$", out, flags=re.M)
    assert sum(int(n) for n, _ in skips) == counts["skipped"], out[-6000:]
    reasons = {r for _, r in skips if not r.startswith(slurm_cluster.NO_CLUSTER)}
    assert reasons <= {NO_PUBMEDQA, NO_TOKENIZER, NO_CHROMIUM}, skips
    assert list((tmp_path / "cache").iterdir()) == []  # nothing was fetched, nor cached
