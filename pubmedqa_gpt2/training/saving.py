"""What a finished phase writes: its metrics, and the model with tokenizer, params and card."""

from __future__ import annotations

import yaml

from pubmedqa_gpt2.core.config import Params
from pubmedqa_gpt2.core.io import atomic_dir, write_json
from pubmedqa_gpt2.training.phase import Phase


def training_metrics(state, counts: dict) -> dict:
    """metrics/train.json: the saved checkpoint's dev metrics and how the run went.

    The same for the same params and data on CPU; timings and memory, which differ from run
    to run, go to perf/train.json instead.
    """
    evals = {e["step"]: e for e in state.log_history if "eval_loss" in e}
    losses = [e["loss"] for e in state.log_history if "loss" in e]
    best = evals[state.best_global_step]
    return {
        "dev_loss": best["eval_loss"],
        "dev_accuracy": best["eval_accuracy"],
        "best_step": state.best_global_step,
        "best_epoch": best["epoch"],
        "final_train_loss": losses[-1] if losses else None,
        "steps": state.global_step,
        "epochs": state.epoch,
        **counts,
    }


def model_card(params: Params, metrics: dict, phase: Phase) -> str:
    """README.md of the saved model: what it is, how it was trained, how it did on dev."""
    source = "random initialisation" if params.model.init == "random" else "pretrained weights"
    if phase.start_from is not None:
        source += f", then phase 1 on PQA-A: started from `{phase.start_from}`"
    settings = yaml.safe_dump(
        {"model": params.model.model_dump(), "train": params.train.model_dump()}, sort_keys=False
    )
    dev = f"dev loss {metrics['dev_loss']:.4f}, dev accuracy {metrics['dev_accuracy']:.4f}"
    return (
        f"# {params.model.name} fine-tuned on PubMedQA ({phase.data})\n\n"
        f"Base: `{params.model.name}` ({source}). Reasoning-required setting: the model reads "
        "the question and the abstract's contexts and writes the decision (yes/no/maybe) and "
        "a long answer; see `pubmedqa_gpt2/prompt.py` for the exact template.\n\n"
        f"Saved checkpoint: step {metrics['best_step']} (epoch {metrics['best_epoch']:g}), "
        f"best by {params.train.best_metric}: {dev}.\n\n"
        f"Trained on {metrics['train_examples']} examples for {metrics['steps']} optimizer "
        f"steps with these params:\n\n```yaml\n{settings}```\n\n"
        "Weights are safetensors; load with `AutoModelForCausalLM.from_pretrained(dir)` "
        "(no remote code).\n"
    )


def save_model(model, tokenizer, params: Params, metrics: dict, phase: Phase) -> None:
    """Write the model, tokenizer, params and model card to `phase.output`, all or nothing."""
    with atomic_dir(phase.output) as out:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        settings = {"model": params.model.model_dump(), "train": params.train.model_dump()}
        write_json(out / "params.json", settings)
        (out / "README.md").write_text(model_card(params, metrics, phase), encoding="utf-8")
