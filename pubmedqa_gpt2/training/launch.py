"""Several data-parallel processes: a stage relaunched under torch.distributed.run, on this
machine, or through `srun` on each node of a SLURM job of several tasks."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import MutableMapping

import torch

from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.gpu_claims import slurm_tasks
from pubmedqa_gpt2.out_of_memory import killed_message, train_advice
from pubmedqa_gpt2.training.stop import STOPPED_EXIT, stop_requested

# One node-agent per SLURM task: torch.distributed.run's static rendezvous, with this task's
# node rank taken from SLURM_PROCID (which srun sets for each task, so a shell reads it).
NODE_AGENT = 'exec "$0" -m torch.distributed.run --node_rank="$SLURM_PROCID" "$@"'


def first_node(environ: MutableMapping[str, str]) -> str:
    """The first host of the SLURM job (`scontrol show hostnames $SLURM_JOB_NODELIST`)."""
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST") or ""
    if nodelist and not any(c in nodelist for c in "[,"):
        return nodelist
    out = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True
    )
    if out.returncode or not out.stdout.split():
        why = out.stderr.strip() or "no host"
        raise StageError(f"scontrol show hostnames {nodelist}: {why}")
    return out.stdout.split()[0]


def launch_command(
    num_processes: int, module: str, section: str, environ: MutableMapping[str, str]
) -> list[str]:
    """The command that starts `num_processes` processes of `module`: torch.distributed.run
    here, or, in a SLURM job of several tasks, one torch.distributed.run per task (`srun`),
    `num_processes / SLURM_NTASKS` processes each, meeting at the job's first node."""
    tasks = slurm_tasks(environ)
    if tasks == 1:
        return [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={num_processes}", "-m", module,
        ]  # fmt: skip
    if num_processes % tasks:
        raise StageError(
            f"{section}.num_processes: {num_processes} processes do not divide among the "
            f"{tasks} tasks of SLURM job {environ['SLURM_JOB_ID']} (SLURM_NTASKS); "
            "make it a multiple"
        )
    # Jobs sharing a node get different ports unless their ids differ by a multiple of 20000.
    port = 20000 + int(environ["SLURM_JOB_ID"]) % 20000
    master = first_node(environ)
    print(
        f"{num_processes} processes through srun: {tasks} SLURM tasks x "
        f"{num_processes // tasks}, meeting at {master}:{port}",
        file=sys.stderr,
        flush=True,
    )
    return [
        "srun", f"--ntasks={tasks}", "--kill-on-bad-exit=1",
        "bash", "-c", NODE_AGENT, sys.executable,
        f"--nnodes={tasks}", f"--nproc_per_node={num_processes // tasks}",
        f"--master_addr={master}", f"--master_port={port}", "-m", module,
    ]  # fmt: skip


def launch(
    num_processes: int,
    module: str,
    section: str = "train",
    environ: MutableMapping[str, str] | None = None,
) -> None:
    """Run the stage `module` in `num_processes` data-parallel processes and wait for them.
    `section`: the params section that asked for them (`pretrain` for phase 1), whose
    settings the messages name."""
    environ = os.environ if environ is None else environ
    tasks = slurm_tasks(environ)
    per_node = num_processes // tasks
    if torch.cuda.is_available() and per_node > torch.cuda.device_count():
        where = f" on each of {tasks} nodes" if tasks > 1 else ""
        raise StageError(
            f"{section}.num_processes: {per_node} processes{where} but "
            f"{torch.cuda.device_count()} GPU(s) visible"
        )
    code = subprocess.call(launch_command(num_processes, module, section, environ))
    if code != 0 and stop_requested(environ):
        raise SystemExit(STOPPED_EXIT)  # the processes saved a checkpoint and stopped
    if code == -9:
        raise StageError(f"training processes {killed_message(train_advice(section))}")
    if code != 0:
        raise StageError(f"training processes failed (exit status {code}); see their output above")
