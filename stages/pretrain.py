"""Stage `pretrain`: phase 1 of the benchmark's recipe, the base model trained on PQA-A.

PubMedQA's strongest models are fine-tuned in two phases: first on PQA-A (211k questions
labelled automatically from article titles: about 93% yes, no maybe), then on the 450
expert-labelled PQA-L questions. With `pretrain.enabled`, this stage trains the base model on
`data/prepared/artificial.parquet` with train's objective, template and recipe
(`pubmedqa_gpt2/training/recipe.py`) and the settings of its own params section `pretrain`,
and keeps the epoch best on PQA-L's dev fold; `train` then starts from its model.

Outputs: `models/phase1/` (the model, or a note that phase 1 is off), `metrics/pretrain.json`
(dev loss and accuracy on PQA-L's dev fold, or `enabled: false`), `perf/pretrain.json`, and
the loss curves in `dvclive-pretrain/`.
"""

from __future__ import annotations

from pubmedqa_gpt2.core.config import load_params
from pubmedqa_gpt2.core.errors import StageError, run_stage
from pubmedqa_gpt2.core.io import atomic_dir, write_json
from pubmedqa_gpt2.training.phase import PRETRAIN_PHASE, pretrain_params, pretrain_phase


def write_disabled() -> None:
    """Phase 1 is off: outputs that say so (DVC needs them), and `train` starts from the base."""
    note = "Phase 1 is off (pretrain.enabled: false): train starts from the base model.\n"
    for folder in (PRETRAIN_PHASE.output, PRETRAIN_PHASE.dvclive):
        with atomic_dir(folder) as out:
            (out / "README.md").write_text(note, encoding="utf-8")
    write_json(PRETRAIN_PHASE.metrics_file, {"enabled": False})
    write_json(PRETRAIN_PHASE.perf_file, {"enabled": False})
    print(f"pretrain: off; wrote {PRETRAIN_PHASE.output}/README.md")


def main() -> None:
    params = load_params()
    if not params.pretrain.enabled:
        write_disabled()
        return
    if not params.data.artificial:
        raise StageError("pretrain.enabled: phase 1 trains on PQA-A; set data.artificial: true")
    # Imported here: torch and transformers take seconds to import, and phase 1 is mostly off.
    from pubmedqa_gpt2.training.recipe import run_phase

    run_phase(pretrain_params(params), pretrain_phase(params))


if __name__ == "__main__":
    run_stage(main)
