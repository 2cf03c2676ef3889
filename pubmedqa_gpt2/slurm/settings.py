"""A site's SLURM settings: not experiment params (they differ per cluster and never change a
result), so they live in an untracked file, `slurm.local.yaml` beside params.yaml (git-ignored),
and in the submit command's options, which win."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pubmedqa_gpt2.core.errors import StageError

SETTINGS_FILE = Path("slurm.local.yaml")


class ClusterSettings(BaseModel):
    """How a sweep's tasks are asked of SLURM and where they work."""

    model_config = ConfigDict(extra="forbid")

    workspaces: Path | None = None
    """A folder on the cluster's shared filesystem: each sweep gets one inside it (the tasks'
    clones, their logs and results). Required."""
    git_remote: str = "origin"
    """The git remote of this repository that the nodes reach (a bare repository on the shared
    filesystem, or a server): tasks clone the submitted commit from it and `dvc exp push` their
    experiments to it."""
    partition: str | None = None
    account: str | None = None
    gpus_per_task: int = Field(1, ge=0)
    """GPUs per task (`--gres=gpu:N`); 0 asks for none (a CPU run)."""
    cpus_per_task: int = Field(8, ge=1)
    mem: str | None = None
    """Memory per node, as sbatch takes it (`64G`); None: the partition's default."""
    time: str | None = "24:00:00"
    """Time limit per task, as sbatch takes it; None: the partition's default."""
    nodes: int = Field(1, ge=1)
    """Nodes per experiment, one task each: `train.num_processes` is spread over them."""
    max_parallel: int | None = Field(None, ge=1)
    """At most this many tasks of the array run at once (`--array=...%N`)."""
    requeue: bool = True
    """Requeue a task that is preempted or warned of its time limit."""
    signal_seconds: int = Field(300, ge=1)
    """The warning signal (USR1 to the batch shell) this many seconds before the time limit."""
    sbatch: list[str] = []
    """Extra `#SBATCH` lines, without the prefix (e.g. `--qos=long`)."""


def load_settings(path: Path, overrides: dict) -> ClusterSettings:
    """The settings of `path` (if it exists) with `overrides` (options given) on top."""
    stored = {}
    if path.is_file():
        try:
            stored = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise StageError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
        if not isinstance(stored, dict):
            raise StageError(f"{path}: expected a mapping of settings")
    try:
        return ClusterSettings.model_validate(stored | overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(part) for part in err["loc"])
        where = f"--{key.replace('_', '-')}" if key in overrides else f"{path}: {key}"
        raise StageError(f"{where}: {err['msg']}") from None
