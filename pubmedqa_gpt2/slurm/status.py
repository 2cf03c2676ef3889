"""`pubmedqa-gpt2 slurm status`: each experiment of a submitted sweep as pending, running,
done (with its test accuracy) or failed (with its error line).

It reads SLURM's queue (`squeue`, which lists a job until it ends), the results the tasks
wrote in the sweep's folder, the experiments that reached the git remote and the tasks' logs:
no accounting (`sacct`) is needed, and it works after the jobs have left the queue. The
experiments that are done and not yet in this repository are brought in with `dvc exp pull
--no-cache` (their data is in the shared cache), so that `dvc exp show` lists them.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.slurm.settings import ClusterSettings
from pubmedqa_gpt2.slurm.submit import MANIFEST, workspaces_folder
from pubmedqa_gpt2.slurm.task import experiment_names

PENDING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "SUSPENDED"}


def find_sweep(repo: Path, settings: ClusterSettings, sweep: str | None) -> dict:
    """The manifest of `sweep`, or of this repository's last sweep."""
    folder = workspaces_folder(repo, settings)
    if sweep is not None:
        path = folder / sweep / MANIFEST
        if not path.is_file():
            raise StageError(f"--sweep {sweep}: no {MANIFEST} in {folder / sweep}")
        return json.loads(path.read_text())
    manifests = [json.loads(path.read_text()) for path in folder.glob(f"*/{MANIFEST}")]
    mine = [m for m in manifests if m["repository"] == str(repo.resolve())]
    if not mine:
        raise StageError(f"no sweep of this repository in {folder}")
    return max(mine, key=lambda m: m["sweep"])


def queued_tasks(job_id: str | None) -> dict[int, str]:
    """{array index: SLURM state} of the sweep's tasks still in the queue."""
    if not job_id:
        return {}
    try:
        got = subprocess.run(
            ["squeue", "-h", "-r", "-j", job_id, "-o", "%i %T"], capture_output=True, text=True
        )
    except FileNotFoundError:  # not on a SLURM login node: what the files say
        return {}
    states = {}
    for line in got.stdout.splitlines() if got.returncode == 0 else []:
        task, state = line.split()
        if "_" in task and task.split("_", 1)[1].isdigit():
            states[int(task.split("_", 1)[1])] = state
    return states


def landed(url: str) -> set[str]:
    """The names of the experiments on the git remote (`refs/exps/.../NAME`)."""
    try:
        got = subprocess.run(
            ["git", "ls-remote", url, "refs/exps/*"], capture_output=True, text=True, timeout=120
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return set()
    return {line.rsplit("/", 1)[-1] for line in got.stdout.splitlines()}


def last_error(log: Path) -> str | None:
    """The last `error:` line of a task's log."""
    if not log.is_file():
        return None
    lines = [line for line in log.read_text(errors="replace").splitlines() if "error:" in line]
    return lines[-1].split("error:", 1)[1].strip() if lines else None


def task_states(manifest: dict) -> list[dict]:
    """One row per experiment: name, overrides, state, accuracy or error."""
    folder = Path(manifest["folder"])
    queue = queued_tasks(manifest["job_id"])
    on_remote = landed(manifest["git_remote_url"])
    rows = []
    for index, experiment in enumerate(manifest["experiments"]):
        row = {"experiment": experiment["name"], "set": experiment["set"], "task": index}
        result_file = folder / "results" / f"{index}.json"
        result = json.loads(result_file.read_text()) if result_file.is_file() else None
        log = folder / "logs" / f"{index}.log"
        if index in queue and queue[index] not in ("COMPLETING",):
            row["state"] = "pending" if queue[index] in PENDING else "running"
        elif result is not None:
            row |= {k: v for k, v in result.items() if k in ("state", "accuracy", "error")}
        elif experiment["name"] in on_remote:
            row["state"] = "done"
        else:
            row["state"] = "failed"
            row["error"] = last_error(log) or f"the task ended without a result; see {log}"
        rows.append(row)
    return rows


def pull_done(repo: Path, manifest: dict, rows: list[dict]) -> None:
    """`dvc exp pull --no-cache` the experiments that are done and not in this repository."""
    here = experiment_names(repo)
    done = [row["experiment"] for row in rows if row["state"] == "done"]
    missing = [name for name in done if name not in here]
    if not missing:
        return
    got = subprocess.run(
        ["dvc", "exp", "pull", "--no-cache", manifest["git_remote_url"], *missing],
        cwd=repo, capture_output=True, text=True,
    )  # fmt: skip
    if got.returncode:
        why = (got.stderr.strip().splitlines() or ["failed"])[-1]
        raise StageError(f"dvc exp pull {manifest['git_remote']}: {why}")


def status_table(manifest: dict, rows: list[dict]) -> str:
    """The sweep as a Markdown table, and a count per state."""
    lines = [
        f"{manifest['sweep']}: job array {manifest['job_id']}, commit {manifest['commit'][:12]}",
        "",
        "| experiment | params | state | accuracy / error |",
        "|---|---|---|---|",
    ]
    for row in rows:
        detail = (
            f"{row['accuracy']:.4f}" if row.get("accuracy") is not None else row.get("error", "")
        )
        lines.append(
            f"| {row['experiment']} | {' '.join(row['set'])} | {row['state']} | {detail} |"
        )
    states = ("pending", "running", "done", "failed")
    counts = {state: sum(row["state"] == state for row in rows) for state in states}
    lines += ["", ", ".join(f"{n} {state}" for state, n in counts.items())]
    return "\n".join(lines)


def status(repo: Path, settings: ClusterSettings, sweep: str | None, as_json: bool) -> str:
    manifest = find_sweep(repo, settings, sweep)
    rows = task_states(manifest)
    pull_done(repo, manifest, rows)
    if as_json:
        return json.dumps({"sweep": manifest["sweep"], "job_id": manifest["job_id"], "tasks": rows})
    return status_table(manifest, rows)
