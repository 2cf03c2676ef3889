"""Stage `pretrain`: phase 1 of the benchmark's recipe, the base model trained on PQA-A.

PubMedQA's strongest models are fine-tuned in two phases: first on PQA-A (211k questions
labelled automatically from article titles: about 93% yes, no maybe), then on the 450
expert-labelled PQA-L questions. With `pretrain.enabled`, this stage trains the base model on
`data/prepared/artificial.parquet` with the same objective, template and Trainer as `train`
(stages/train.py), and keeps the epoch best on the same PQA-L dev fold; `train` then starts
from its model. Its own knobs are `pretrain.*`; everything else is TrainParams' default
(not params.yaml's `train`), so a phase-2 change never reruns phase 1.

Outputs: `models/phase1/` (the model, or a note that phase 1 is off), `metrics/pretrain.json`
(dev loss and accuracy on PQA-L's dev fold, or `enabled: false`), `perf/pretrain.json`, and
the loss curves in `dvclive-pretrain/`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from stages.config import Params, TrainParams, load_params
from stages.errors import StageError, run_stage
from stages.io import atomic_dir, write_json
from stages.prepare import ARTIFICIAL, PREPARED_DIR
from stages.train import PHASE1_MODEL, Phase, run_phase

PHASE1 = Phase(
    module="stages.pretrain",
    data="PQA-A, phase 1",
    train_file=PREPARED_DIR / f"{ARTIFICIAL}.parquet",
    output=PHASE1_MODEL,
    checkpoints=Path("models/checkpoints-phase1"),
    dvclive=Path("dvclive-pretrain"),
    metrics_file=Path("metrics/pretrain.json"),
    perf_file=Path("perf/pretrain.json"),
)


def phase1_params(params: Params) -> Params:
    """The params phase 1 trains with: `pretrain.*` over TrainParams' defaults."""
    p = params.pretrain
    train = TrainParams(
        epochs=p.epochs,
        learning_rate=p.learning_rate,
        batch_size=p.batch_size,
        num_processes=params.train.num_processes,
    )
    return params.model_copy(update={"train": train})


def write_disabled() -> None:
    """Phase 1 is off: outputs that say so (DVC needs them), and `train` starts from the base."""
    note = "Phase 1 is off (pretrain.enabled: false): train starts from the base model.\n"
    for folder in (PHASE1.output, PHASE1.dvclive):
        with atomic_dir(folder) as out:
            (out / "README.md").write_text(note, encoding="utf-8")
    write_json(PHASE1.metrics_file, {"enabled": False})
    write_json(PHASE1.perf_file, {"enabled": False})
    print(f"pretrain: off; wrote {PHASE1.output}/README.md")


def main() -> None:
    params = load_params()
    if not params.pretrain.enabled:
        write_disabled()
        return
    if not params.data.artificial:
        raise StageError("pretrain.enabled: phase 1 trains on PQA-A; set data.artificial: true")
    phase = replace(PHASE1, max_examples=params.pretrain.max_samples)
    run_phase(phase1_params(params), phase)


if __name__ == "__main__":
    run_stage(main)
