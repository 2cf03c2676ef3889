"""`pubmedqa-gpt2 slurm submit`: a sweep of experiments as one SLURM job array.

Everything is checked before anything is submitted, each refusal one `error:` line: a sweep
that expands to nothing, changes the tasks would not see (they clone the committed HEAD), a
git remote the nodes cannot reach, a DVC cache inside the repository (not shared), no folder
for the workspaces, no `sbatch`. Then HEAD is pushed to the remote under
`refs/pubmedqa-slurm/SWEEP` (so the tasks can fetch exactly it), the sweep's folder is written
(sweep.json, job.sbatch, logs/, results/) and the script is submitted. `--dry-run` prints the
script and submits nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.slurm.script import batch_script
from pubmedqa_gpt2.slurm.settings import ClusterSettings
from pubmedqa_gpt2.slurm.sweep import expand

MANIFEST = "sweep.json"
SCRIPT = "job.sbatch"
REF_PREFIX = "refs/pubmedqa-slurm/"


def git(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def committed_head(repo: Path) -> str:
    """HEAD's commit; refused when the working tree differs from it."""
    changed = git("status", "--porcelain", cwd=repo).stdout.splitlines()
    if changed:
        names = ", ".join(line[3:] for line in changed[:3])
        raise StageError(
            f"{len(changed)} uncommitted change(s) ({names}{', ...' if len(changed) > 3 else ''}):"
            " the tasks clone the last commit and would not see them; commit or stash them"
        )
    return git("rev-parse", "HEAD", cwd=repo).stdout.strip()


def remote_url(repo: Path, remote: str) -> str:
    """The URL of the git remote `remote`, checked reachable; a local path made absolute."""
    got = git("remote", "get-url", remote, cwd=repo)
    if got.returncode:
        raise StageError(
            f"git remote {remote!r}: not set in this repository; add one the nodes reach "
            f"(git remote add {remote} /shared/path/pubmedqa.git) or name it with --git-remote"
        )
    url = got.stdout.strip()
    # As git tells them: "scheme://..." and scp-like "host:path" have a ":" before the first
    # "/"; anything else is a path (even one holding "://" further on).
    if ":" not in url.split("/")[0]:
        url = str((repo / Path(url).expanduser()).resolve())  # git expands "~" too
    if git("ls-remote", "--heads", url, cwd=repo).returncode:
        raise StageError(f"git remote {remote!r} ({url}): not reachable (git ls-remote failed)")
    return url


def shared_cache(repo: Path) -> str:
    """`dvc cache dir`, refused when it lies in the repository (the nodes' clones need one
    cache on the shared filesystem)."""
    got = subprocess.run(["dvc", "cache", "dir"], cwd=repo, capture_output=True, text=True)
    cache = Path(got.stdout.strip()).resolve() if got.returncode == 0 else None
    if cache is None or cache.is_relative_to(repo.resolve()):
        raise StageError(
            f"the DVC cache is {cache or 'unknown'}, inside this repository: the tasks need one "
            "on the cluster's shared filesystem (dvc cache dir --local /shared/path/dvc-cache; "
            "docs/CLUSTER.md)"
        )
    return str(cache)


def workspaces_folder(repo: Path, settings: ClusterSettings) -> Path:
    if settings.workspaces is None:
        raise StageError(
            "no folder for the tasks' workspaces: give --workspaces DIR (on the shared "
            "filesystem) or set workspaces: in slurm.local.yaml"
        )
    folder = (repo / settings.workspaces).resolve()
    if folder.is_relative_to(repo.resolve()):
        raise StageError(f"--workspaces {folder}: inside this repository, which tasks never touch")
    return folder


def resumable(repo: Path, overrides: list[list[str]]) -> bool:
    """Whether every experiment keeps resumable checkpoints (train.resumable_checkpoints)."""
    import yaml

    committed = yaml.safe_load((repo / "params.yaml").read_text())["train"]
    default = str(committed.get("resumable_checkpoints")).lower() == "true"
    for pairs in overrides:
        values = [p.split("=", 1)[1] for p in pairs if p.startswith("train.resumable_checkpoints=")]
        if not (values[-1].lower() == "true" if values else default):
            return False
    return True


def prepare(repo: Path, settings: ClusterSettings, overrides: list[str]) -> dict:
    """Every check, then the sweep's manifest (nothing written yet)."""
    sets = expand(overrides)
    if not sets:
        raise StageError(f"the sweep {' '.join(overrides)} expands to no experiment")
    commit = committed_head(repo)
    url = remote_url(repo, settings.git_remote)
    cache = shared_cache(repo)
    workspaces = workspaces_folder(repo, settings)
    stamp = "sweep-" + time.strftime("%Y%m%d-%H%M%S")
    sweep, n = stamp, 1
    while (workspaces / sweep).exists():  # sweeps submitted in one second: folders of their own
        n += 1
        sweep = f"{stamp}_{n}"
    folder = workspaces / sweep
    if settings.requeue and not resumable(repo, sets):
        print(
            "warning: train.resumable_checkpoints is false: a preempted or time-limited task "
            "restarts its training from the beginning (-S train.resumable_checkpoints=true "
            "keeps optimizer state in checkpoints to resume from)",
            file=sys.stderr,
        )
    return {
        "sweep": sweep,
        "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "repository": str(repo.resolve()),
        "commit": commit,
        "ref": REF_PREFIX + sweep,
        "git_remote": settings.git_remote,
        "git_remote_url": url,
        "cache": cache,
        "folder": str(folder),
        "python": sys.executable,
        "bin": str(Path(sys.executable).parent),
        "job_id": None,
        "experiments": [{"name": f"{sweep}-{i}", "set": s} for i, s in enumerate(sets)],
    }


def submit(repo: Path, settings: ClusterSettings, overrides: list[str], dry_run: bool) -> str:
    """Check, write and submit the sweep; what to tell the user."""
    manifest = prepare(repo, settings, overrides)
    script = batch_script(manifest, settings)
    if dry_run:
        return script
    if shutil.which("sbatch") is None:
        raise StageError("sbatch not found: submit from a SLURM login node (or use --dry-run)")
    folder = Path(manifest["folder"])
    pushed = git("push", "--quiet", settings.git_remote, f"HEAD:{manifest['ref']}", cwd=repo)
    if pushed.returncode:
        why = (pushed.stderr.strip().splitlines() or ["failed"])[-1]
        raise StageError(f"git push {settings.git_remote} HEAD:{manifest['ref']}: {why}")
    for sub in ("logs", "results", "tasks"):
        (folder / sub).mkdir(parents=True)
    (folder / SCRIPT).write_text(script)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    got = subprocess.run(
        ["sbatch", "--parsable", str(folder / SCRIPT)], capture_output=True, text=True
    )
    if got.returncode:
        shutil.rmtree(folder)
        git("push", "--quiet", settings.git_remote, f":{manifest['ref']}", cwd=repo)
        why = (got.stderr.strip().splitlines() or [f"exit status {got.returncode}"])[-1]
        raise StageError(f"sbatch refused the sweep: {why.removeprefix('sbatch: error: ')}")
    manifest["job_id"] = got.stdout.strip().split(";")[0]
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    n = len(manifest["experiments"])
    return (
        f"submitted {manifest['sweep']}: {n} experiment(s) as job array {manifest['job_id']} "
        f"(folder {folder}); follow it with `pubmedqa-gpt2 slurm status`"
    )
