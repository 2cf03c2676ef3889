"""What ran: the project's commit (and whether the tree was dirty), the kit's hash, and, from
the `imports` step (`environment.py`), the interpreter, the packages and the GPU."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KIT_STAMP = "kit.json"  # written by `make gpu-kit`: the commit the kit was built from


def git_state(root: Path = ROOT) -> dict | None:
    """{"commit", "dirty"} from git, or None where there is no repository (a copied tree)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def project_state(kit: Path, root: Path = ROOT) -> dict:
    """The project's commit: from git where the tree is a repository, else as `make gpu-kit`
    stamped it into the kit (the device receives a copy of the working tree, not its .git)."""
    state = git_state(root)
    if state is not None:
        return {**state, "source": "git"}
    stamp = kit / KIT_STAMP
    if stamp.is_file():
        built = json.loads(stamp.read_text())
        return {"commit": built.get("commit"), "dirty": built.get("dirty"), "source": "kit"}
    return {"commit": None, "dirty": None, "source": None}


def kit_hash(kit: Path) -> str | None:
    """sha256 over the kit's files (relative path and contents, in path order); None without a
    kit. Two runs with the same hash installed the same wheels and read the same data."""
    if not kit.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in kit.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(kit)).encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
