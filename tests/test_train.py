"""The train stage end to end: a whole run on a tiny random GPT-2 in this process, and bad
input in `python -m stages.train`. The pieces a run is made of have test modules of their
own (tests/test_collator.py, test_loss.py, test_trainer.py, test_recipe.py, ...)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pubmedqa_gpt2.core import paths
from pubmedqa_gpt2.core.config import load_params
from pubmedqa_gpt2.model.loading import load_model
from pubmedqa_gpt2.training import recipe
from pubmedqa_gpt2.training.examples import read_split
from stages import train as stage

from .training_helpers import curve_steps, read_perf, run_module, set_params


def test_training_run_writes_model_metrics_and_curves(workdir, tiny, capsys, monkeypatch):
    asked = []  # the device figures are asked for this machine's kind: no GPU here
    real = recipe.device_figures
    monkeypatch.setattr(recipe, "device_figures", lambda cuda: asked.append(cuda) or real(cuda))
    set_params(workdir, tiny())
    stage.main()
    assert asked == [torch.cuda.is_available()] and asked[0] is False

    metrics = json.loads((workdir / paths.TRAIN_METRICS).read_text())
    perf = read_perf(workdir)
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"saved models/finetuned (step {metrics['best_step']}): dev_loss "
        f"{metrics['dev_loss']:.4f}, dev_accuracy {metrics['dev_accuracy']:.4f}, "
        f"{perf['train_tokens_per_second']} tokens/s"
    )
    assert (
        metrics["steps"] == 6 and metrics["train_examples"] == 12 and metrics["dev_examples"] == 6
    )
    assert metrics["trainable_parameters"] == metrics["total_parameters"] > 0
    assert "perf" not in metrics
    perf = read_perf(workdir)
    assert perf["runtime_seconds"] > 0 and perf["precision"] == "fp32" and perf["processes"] == 1
    # The training loop alone: less than the run, which also evaluates on dev and saves.
    assert 0 < perf["train_loop_seconds"] < perf["runtime_seconds"]
    assert perf["device"] == "cpu" and len(perf["ranks"]) == 1
    assert perf["ranks"][0]["peak_rss_bytes"] > 0
    # Tokens/s counts the real (non-padding) tokens of 2 epochs; runtime is rounded to 10 ms.
    real_tokens = sum(
        len(ex.prompt_ids) + len(ex.completion_ids)
        for ex in read_split(workdir / paths.TRAIN_FILE, [3763, 645, 3863])
    )
    seen = perf["train_tokens_per_second"] * perf["runtime_seconds"]
    assert seen == pytest.approx(2 * real_tokens, rel=0.01 / perf["runtime_seconds"] + 1e-3)

    saved = workdir / paths.FINETUNED
    names = {p.name for p in saved.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "params.json",
        "README.md",
    } <= names
    assert not any(n.endswith(".bin") for n in names)
    used = load_params(workdir / "params.yaml")
    assert json.loads((saved / "params.json").read_text()) == {
        "model": used.model.model_dump(), "train": used.train.model_dump()
    }  # fmt: skip
    assert not (workdir / "models" / "finetuned.partial").exists()
    model = load_model(saved)
    assert model.config.n_layer == 2

    assert curve_steps(workdir, "train/loss") == [str(step) for step in range(1, 7)]
    assert curve_steps(workdir, "eval/loss") == curve_steps(workdir, "eval/accuracy") == ["3", "6"]
    for curve in ("train/learning_rate", "train/grad_norm"):
        assert curve_steps(workdir, curve) == [str(step) for step in range(1, 7)]
    assert not (workdir / "dvc.yaml").exists()  # dvclive must not write its own dvc.yaml


@pytest.mark.child_process
def test_bad_input_fails_with_one_line_and_writes_nothing(workdir, tiny):
    set_params(workdir, tiny())
    bad = {"pmid": ["7"], "prompt_ids": [[1, 2]], "completion_ids": [[99]], "shortened": [False]}
    pq.write_table(pa.table(bad), paths.DEV_FILE)
    result = run_module(workdir)
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: data/prepared/dev.parquet: row 0 (pmid 7): completion_ids must start")
    )
    assert "Traceback" not in result.stderr
    assert not (workdir / "models" / "finetuned").exists()
    assert not (workdir / paths.TRAIN_METRICS).exists()
