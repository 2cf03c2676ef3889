"""Stage `train`: phase 2, the model fine-tuned on PQA-L's training split, the best epoch kept.

Reads `data/prepared/{train,dev}.parquet`, `model.*`, `train.*`, and with `pretrain.enabled`
starts from phase 1's model (`models/phase1`). The recipe is `pubmedqa_gpt2/training/recipe.py`.
Checkpoints go to `models/checkpoints/` (not a DVC output, so DVC never deletes it): a killed
run resumes from the last complete one when params and data are unchanged.

Outputs: `models/finetuned/` (safetensors weights, tokenizer, params.json, a model card; LoRA
adapters are merged in), the curves in `dvclive/`, `metrics/train.json`, `perf/train.json`.
"""

from __future__ import annotations

from pubmedqa_gpt2.core.config import load_params
from pubmedqa_gpt2.core.errors import run_stage
from pubmedqa_gpt2.training.phase import train_phase
from pubmedqa_gpt2.training.recipe import run_phase


def main() -> None:
    params = load_params()
    run_phase(params, train_phase(params))


if __name__ == "__main__":
    run_stage(main)
