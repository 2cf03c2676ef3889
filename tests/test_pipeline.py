"""The pipeline through real git and real dvc, in temporary clones of this repository.

These tests run `dvc` as a user would, offline: the official data comes from PUBMEDQA_DIR,
and the model is the smoke configuration (a 2-layer random GPT-2 with the real tokenizer).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import PUBMEDQA_DIR, ROOT, TOKENIZER_DIR, needs_pubmedqa, needs_tokenizer

pytestmark = [needs_pubmedqa, needs_tokenizer]


# Absolute paths: commands run inside temporary clones.
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "PUBMEDQA_DIR": str(PUBMEDQA_DIR),
    "GPT2_TOKENIZER_DIR": str(TOKENIZER_DIR),
}


def sh(cmd: list[str] | str, cwd: Path, env: dict | None = None, check: bool = True) -> str:
    """Run a command (a list, or a shell string) and return stdout+stderr."""
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=os.environ | OFFLINE | (env or {}),
        shell=isinstance(cmd, str),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    output = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{output[-4000:]}")
    return output


def clone(dest: Path) -> Path:
    """A fresh clone of the committed HEAD with the official data copied in (offline)."""
    sh(["git", "clone", "--quiet", str(ROOT), str(dest)], cwd=dest.parent)
    sh(["make", "offline-data"], cwd=dest)
    return dest


def seed_hub_cache(hub: Path, tokenizer_dir: Path, model_id: str = "gpt2-large") -> dict:
    """A Hugging Face cache holding `model_id`'s tokenizer (GPT-2's, shared by every size).

    The committed params name the hub's gpt2-large; no hub is reachable here, so its cache
    entry is laid out from the real tokenizer files. Returns the env that points at it.
    """
    from transformers import GPT2Config

    snapshot = hub / f"models--{model_id}" / "snapshots" / "offline"
    snapshot.mkdir(parents=True)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, snapshot / f.name)
    GPT2Config(n_layer=36, n_embd=1280, n_head=20).save_pretrained(snapshot)
    (hub / f"models--{model_id}" / "refs").mkdir()
    (hub / f"models--{model_id}" / "refs" / "main").write_text("offline")
    return {"HF_HUB_CACHE": str(hub)}


def ran_stages(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def test_fresh_clone_reproduces_the_committed_lock(tmp_path, tokenizer_dir):
    """dvc.lock on main is what download/fetch/prepare really produce from the committed params."""
    repo = clone(tmp_path / "repo")
    env = seed_hub_cache(tmp_path / "hub", tokenizer_dir)
    first = sh(["dvc", "repro", "prepare"], cwd=repo, env=env)
    # download verifies the local copy (persisted, so not deleted) instead of downloading.
    assert ran_stages(first) == ["download", "fetch", "prepare"]
    assert "local copy, md5 05b2b70949907e260d2aa82bc5d20c6f verified" in first
    assert sh(["git", "status", "--porcelain"], cwd=repo) == "", "dvc.lock or metrics changed"
    assert "up to date" in sh(["dvc", "status", "prepare"], cwd=repo, env=env)
    assert ran_stages(sh(["dvc", "repro", "prepare"], cwd=repo, env=env)) == []


def test_a_changed_official_file_is_an_error(tmp_path):
    repo = clone(tmp_path / "repo")
    with (repo / "data/external/ori_pqal.json").open("a") as f:
        f.write(" ")
    out = sh(["dvc", "repro", "download"], cwd=repo, check=False)
    assert "not the official ori_pqal.json" in out
