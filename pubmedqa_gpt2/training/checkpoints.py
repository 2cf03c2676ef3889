"""A phase's checkpoints: kept and resumed from only for the same params, data and starting
model (the run's fingerprint), partial ones dropped."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from pubmedqa_gpt2.core.config import Params
from pubmedqa_gpt2.core.io import md5_of, write_json
from pubmedqa_gpt2.core.paths import DEV_FILE
from pubmedqa_gpt2.training.phase import Phase

RUN_FILE = "run.json"  # in the checkpoints folder: the fingerprint of the run they belong to
STATE_FILE = "trainer_state.json"  # the Trainer writes it last: a checkpoint without it is partial


def run_fingerprint(params: Params, phase: Phase) -> str:
    """What decides the phase's training trajectory: the model and training params, which
    examples it trains on (its file, and how many of them), the dev split (it picks the
    checkpoint kept) and the weights it starts from. `params.train` holds the phase's own
    section (`pretrain_params` for phase 1)."""
    digest = hashlib.sha256()
    settings = {
        "model": params.model.model_dump(),
        "train": params.train.model_dump(),
        "max_examples": phase.max_examples,
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for path in [phase.train_file, DEV_FILE, *phase_inputs(phase)]:
        digest.update(md5_of(path).encode())
    return digest.hexdigest()


def reconcile_checkpoints(
    folder: Path, fingerprint: str, resumable: bool = True, section: str = "train"
) -> None:
    """Keep the checkpoints in `folder` only when they belong to this run; drop partial ones.

    A checkpoint without its trainer state was cut off while being written and cannot be
    resumed from. Checkpoints of other params or data are removed: resuming from them would
    silently train a different experiment. Weights-only checkpoints (`resumable` False) hold
    no optimizer state to resume from: they are removed too. `section`: the params section
    that set `resumable`, named when it removes them.
    """
    run_file = folder / RUN_FILE
    recorded = json.loads(run_file.read_text()).get("fingerprint") if run_file.is_file() else None
    if folder.exists() and (recorded != fingerprint or not resumable):
        if any(folder.glob("checkpoint-*")):
            why = (
                f"weights-only checkpoints ({section}.resumable_checkpoints: false)"
                if recorded == fingerprint
                else "checkpoints of another run (params or data changed)"
            )
            print(f"{folder}: {why}; starting afresh")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for child in folder.glob("checkpoint-*"):
        if not (child / STATE_FILE).is_file():
            print(f"{child}: incomplete checkpoint, removed")
            shutil.rmtree(child)
    write_json(run_file, {"fingerprint": fingerprint})


def phase_inputs(phase: Phase) -> list[Path]:
    """Files besides the data whose change makes old checkpoints another run's."""
    return sorted(phase.start_from.glob("*.safetensors")) if phase.start_from is not None else []


def tokens_seen(checkpoint: str | None) -> int:
    """The input tokens the run had seen at `checkpoint` (0 without one)."""
    if not checkpoint:
        return 0
    return json.loads((Path(checkpoint) / STATE_FILE).read_text()).get("num_input_tokens_seen", 0)
