"""What a finished phase writes (`pubmedqa_gpt2/training/saving.py`): metrics/train.json from
the Trainer's state, and the model card, checked line by line against the params and metrics
it reports."""

from __future__ import annotations

import types
from dataclasses import replace

import yaml

from pubmedqa_gpt2.training.phase import PRETRAIN_PHASE, TRAIN_PHASE
from pubmedqa_gpt2.training.saving import model_card, training_metrics

from .committed import committed_params

METRICS = {
    "dev_loss": 2.345678, "dev_accuracy": 0.6, "best_step": 6, "best_epoch": 2.0,
    "train_examples": 12, "steps": 9,
}  # fmt: skip


def test_the_metrics_are_the_best_checkpoint_s_and_the_last_logged_loss():
    """A log as the Trainer keeps it: losses at steps 1-3, dev figures at steps 3 and 6."""
    state = types.SimpleNamespace(
        log_history=[
            {"loss": 3.0, "step": 1}, {"loss": 2.5, "step": 2}, {"loss": 2.25, "step": 3},
            {"eval_loss": 2.4, "eval_accuracy": 0.5, "epoch": 1.0, "step": 3},
            {"loss": 2.0, "step": 4},
            {"eval_loss": 2.1, "eval_accuracy": 0.75, "epoch": 2.0, "step": 6},
            {"train_loss": 2.2, "step": 6},  # the Trainer's closing summary: not a logged loss
        ],
        best_global_step=3, global_step=6, epoch=2.0,
    )  # fmt: skip
    assert training_metrics(state, {"train_examples": 12}) == {
        "dev_loss": 2.4, "dev_accuracy": 0.5, "best_step": 3, "best_epoch": 1.0,
        "final_train_loss": 2.0, "steps": 6, "epochs": 2.0, "train_examples": 12,
    }  # fmt: skip
    state.log_history = [e for e in state.log_history if "loss" not in e]
    assert training_metrics(state, {})["final_train_loss"] is None  # no step logged a loss


def test_the_model_card_says_what_the_model_is_and_how_it_was_trained():
    params = committed_params({"model": {"name": "gpt2", "init": "random"}})
    card = model_card(params, METRICS, TRAIN_PHASE)
    lines = card.splitlines()
    assert lines[0] == "# gpt2 fine-tuned on PubMedQA (PQA-L)"
    assert lines[2].startswith("Base: `gpt2` (random initialisation). Reasoning-required setting:")
    assert lines[2].endswith(
        "the model reads the question and the abstract's contexts and writes the decision "
        "(yes/no/maybe) and a long answer; see `pubmedqa_gpt2/prompt.py` for the exact template."
    )
    assert lines[4] == (
        f"Saved checkpoint: step 6 (epoch 2), best by {params.train.best_metric}: "
        "dev loss 2.3457, dev accuracy 0.6000."
    )
    assert lines[6] == "Trained on 12 examples for 9 optimizer steps with these params:"
    settings = card.split("```yaml\n")[1].split("```")[0]
    assert yaml.safe_load(settings) == {
        "model": params.model.model_dump(), "train": params.train.model_dump()
    }  # fmt: skip
    assert settings.index("name:") < settings.index("init:")  # the params' own order
    assert lines[-1] == (
        "Weights are safetensors; load with `AutoModelForCausalLM.from_pretrained(dir)` "
        "(no remote code)."
    )
    assert card.endswith("(no remote code).\n")


def test_the_model_card_names_pretrained_weights_and_phase_1():
    params = committed_params()  # gpt2-large, pretrained
    card = model_card(params, METRICS, replace(TRAIN_PHASE, start_from=PRETRAIN_PHASE.output))
    assert "Base: `gpt2-large` (pretrained weights, then phase 1 on PQA-A: started from " in card
    assert f"started from `{PRETRAIN_PHASE.output}`)." in card
    assert model_card(params, METRICS, PRETRAIN_PHASE).startswith(
        "# gpt2-large fine-tuned on PubMedQA (PQA-A, phase 1)\n\nBase: `gpt2-large` (pretrained "
        "weights). "
    )
