"""Several data-parallel processes: a stage relaunched under torch.distributed.run."""

from __future__ import annotations

import subprocess
import sys

import torch

from pubmedqa_gpt2.errors import StageError
from pubmedqa_gpt2.memory import killed_message, train_advice


def launch(num_processes: int, module: str, section: str = "train") -> None:
    """Run the stage `module` in `num_processes` data-parallel processes and wait for them.
    `section`: the params section that asked for them (`pretrain` for phase 1), whose
    settings the messages name."""
    if torch.cuda.is_available() and num_processes > torch.cuda.device_count():
        raise StageError(
            f"{section}.num_processes: {num_processes} processes but "
            f"{torch.cuda.device_count()} GPU(s) visible"
        )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={num_processes}",
        "-m",
        module,
    ]
    code = subprocess.call(command)
    if code == -9:
        raise StageError(f"training processes {killed_message(train_advice(section))}")
    if code != 0:
        raise StageError(f"training processes failed (exit status {code}); see their output above")
