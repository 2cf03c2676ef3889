"""One task of a sweep, on a node, in its own clone of the submitted commit:

    python -m pubmedqa_gpt2.slurm.task SWEEP_JSON INDEX

The clone uses the shared DVC cache (group-shared), so the stages whose inputs did not change
are checked out from it, not rerun, and the experiment's outputs land in it for every other
clone to check out. It runs experiment INDEX with `dvc exp run --name NAME -S ...`, pushes it
to the sweep's git remote with `dvc exp push --no-cache` (its data is in the shared cache
already) and writes `results/INDEX.json` in the sweep's folder for `slurm status`. A failure
ends with one `error: NAME: ...` line (the stage's own error line when there is one) in the
task's log and in its result, and a non-zero exit; the other tasks go on. A requeued task
(same clone) resumes: training from its checkpoint, a finished experiment straight to its push.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

from pubmedqa_gpt2.training.stop import STOPPED_EXIT, stop_requested


def error_line(output: list[str], code: int) -> str:
    """The line that says why a command failed: a stage's `error:` line, else DVC's
    `ERROR:` line, else the exit status."""
    for prefix in ("error:", "ERROR:"):
        lines = [line.strip() for line in output if line.strip().startswith(prefix)]
        if lines:
            return lines[-1].split(":", 1)[1].strip()
    return f"exit status {code}"


def run(command: list[str]) -> tuple[int, list[str]]:
    """Run `command`, its output going to this task's log; (exit status, its last lines)."""
    print("$", " ".join(command), flush=True)
    tail: collections.deque[str] = collections.deque(maxlen=400)
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        tail.append(line)
    sys.stdout.flush()
    return proc.wait(), list(tail)


def write_result(folder: Path, index: int, result: dict) -> None:
    """results/INDEX.json, whole or not at all (a reader never sees half a file)."""
    path = folder / "results" / f"{index}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(partial, path)


def experiment_names(repo: Path | None = None) -> set[str]:
    """The names of the DVC experiments a repository holds (`refs/exps/.../NAME`)."""
    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps"],
        cwd=repo, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return {ref.rsplit("/", 1)[-1] for ref in refs}


def run_task(manifest: dict, index: int) -> int:
    """Experiment `index` of the sweep, in the current directory (its clone); exit status."""
    folder = Path(manifest["folder"])
    experiment = manifest["experiments"][index]
    name = experiment["name"]

    def fail(why: str) -> int:
        write_result(folder, index, {"experiment": name, "state": "failed", "error": why})
        print(f"error: {name}: {why}", file=sys.stderr, flush=True)
        return 1

    for setting in (["cache", "dir", "--local", manifest["cache"]], ["config", "--local",
                    "cache.shared", "group"]):  # fmt: skip
        code, output = run(["dvc", *setting])
        if code:
            return fail(error_line(output, code))
    run(["dvc", "checkout", "--quiet"])  # what the cache holds; the rest is computed
    if name not in experiment_names():  # a requeued task whose experiment ran: push it
        overrides = [arg for pair in experiment["set"] for arg in ("-S", pair)]
        code, output = run(["dvc", "exp", "run", "--name", name, *overrides])
        if code and stop_requested():
            print(f"{name}: stopped on request, to be requeued", flush=True)
            return STOPPED_EXIT
        if code:
            return fail(error_line(output, code))
    code, output = run(["dvc", "exp", "push", "--no-cache", "origin", name])
    if code:
        return fail(f"dvc exp push: {error_line(output, code)}")
    metrics = json.loads(Path("metrics/eval_finetuned.json").read_text())
    write_result(
        folder, index, {"experiment": name, "state": "done", "accuracy": metrics["accuracy"]}
    )
    print(f"{name}: done, accuracy {metrics['accuracy']:.4f}, pushed", flush=True)
    return 0


def main(argv: list[str]) -> None:
    manifest = json.loads(Path(argv[0]).read_text())
    sys.exit(run_task(manifest, int(argv[1])))


if __name__ == "__main__":
    main(sys.argv[1:])
