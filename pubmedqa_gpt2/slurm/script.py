"""The `sbatch --array` script of a sweep: one task per experiment.

Each task clones the submitted commit into a workspace of its own (kept across requeues, so
a requeued task finds its checkpoints), then runs `pubmedqa_gpt2.slurm.task` from that clone.
The batch shell traps USR1 (SLURM's warning before the time limit, or `scancel -b
--signal=USR1`): it creates the stop file training looks for after each optimizer step
(`pubmedqa_gpt2/training/stop.py`); when the task then exits with STOPPED_EXIT, the shell
requeues it.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from pubmedqa_gpt2.slurm.settings import ClusterSettings
from pubmedqa_gpt2.training.stop import STOP_FILE_ENV, STOPPED_EXIT


def sbatch_lines(settings: ClusterSettings, sweep: str, folder: Path, tasks: int) -> list[str]:
    """The `#SBATCH` options of the array, from the site's settings."""
    throttle = f"%{settings.max_parallel}" if settings.max_parallel else ""
    options = [
        f"--job-name=pubmedqa-{sweep}",
        f"--array=0-{tasks - 1}{throttle}",
        f"--output={folder}/logs/%a.log",  # one log per task, appended to across requeues
        "--open-mode=append",
        f"--nodes={settings.nodes}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={settings.cpus_per_task}",
    ]
    if settings.gpus_per_task:
        options.append(f"--gres=gpu:{settings.gpus_per_task}")
    for key in ("partition", "account", "mem", "time"):
        if getattr(settings, key) is not None:
            options.append(f"--{key}={getattr(settings, key)}")
    if settings.requeue:
        options += ["--requeue", f"--signal=B:USR1@{settings.signal_seconds}"]
    else:
        options.append("--no-requeue")
    return [f"#SBATCH {option}" for option in options + settings.sbatch]


def batch_script(manifest: dict, settings: ClusterSettings) -> str:
    """The whole batch script of the sweep `manifest` describes."""
    folder = Path(manifest["folder"])
    q = shlex.quote
    header = sbatch_lines(settings, manifest["sweep"], folder, len(manifest["experiments"]))
    body = f"""
# Sweep {manifest["sweep"]}, written by `pubmedqa-gpt2 slurm submit`: task N runs
# experiment N of {folder}/sweep.json (commit
# {manifest["commit"][:12]}) in a clone of its own and pushes it to {manifest["git_remote_url"]}.
set -u
SWEEP={q(str(folder))}
TASK=$SLURM_ARRAY_TASK_ID
WORKSPACE=$SWEEP/tasks/$TASK
export {STOP_FILE_ENV}=$SWEEP/tasks/$TASK.stop
export PATH={q(manifest["bin"])}:$PATH
rm -f "${STOP_FILE_ENV}"
trap 'echo "USR1: training stops at its next optimizer step, then this task is requeued"; \\
      touch "${STOP_FILE_ENV}"' USR1
echo "task $TASK of sweep {manifest["sweep"]}: job ${{SLURM_ARRAY_JOB_ID}}_$TASK on $(hostname)," \\
     "restart ${{SLURM_RESTART_COUNT:-0}}, $(date -Is)"
if [ ! -d "$WORKSPACE/.git" ]; then
    rm -rf "$WORKSPACE.partial"
    git clone --quiet --no-checkout {q(manifest["git_remote_url"])} "$WORKSPACE.partial" \\
        && git -C "$WORKSPACE.partial" fetch --quiet origin {q(manifest["ref"])} \\
        && git -C "$WORKSPACE.partial" checkout --quiet --detach {manifest["commit"]} \\
        && mv "$WORKSPACE.partial" "$WORKSPACE" \\
        || {{ echo "error: task $TASK: cannot clone commit {manifest["commit"][:12]}" \\
                  "from {manifest["git_remote_url"]}"; exit 1; }}
fi
cd "$WORKSPACE" || exit 1
# In the background, so that the trap runs while the task works (bash runs traps between
# commands); `wait` returns early for each trapped signal, hence the loop.
{q(manifest["python"])} -m pubmedqa_gpt2.slurm.task "$SWEEP/sweep.json" "$TASK" &
child=$!
wait "$child"; status=$?
while kill -0 "$child" 2>/dev/null; do wait "$child"; status=$?; done
if [ "$status" = {STOPPED_EXIT} ] && [ -e "${STOP_FILE_ENV}" ]; then
    echo "requeueing task $TASK (job ${{SLURM_ARRAY_JOB_ID}}_$TASK): it resumes from its checkpoint"
    scontrol requeue "${{SLURM_ARRAY_JOB_ID}}_$TASK"
    sleep 300 & wait $!  # SLURM ends this run of the task (TERM) once it is requeued
fi
exit "$status"
"""
    return "#!/bin/bash\n" + "\n".join(header) + "\n" + body
