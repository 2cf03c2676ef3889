"""The Trainer of both phases (`pubmedqa_gpt2/training/trainer.py`): dev accuracy, under the
training's autocast, the tied-head warning silenced, and the checkpoint chosen on dev."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from pubmedqa_gpt2.core import paths
from pubmedqa_gpt2.data.prepare import write_split
from pubmedqa_gpt2.data.records import Record
from pubmedqa_gpt2.model.loading import load_model
from pubmedqa_gpt2.prompt import LABELS, Encoded
from pubmedqa_gpt2.training import trainer as trainer_module
from stages import train as stage

from .conftest import model_deciding_by_length
from .training_helpers import LABEL_IDS, curve, read_metrics, set_params


def test_dev_accuracy_scores_predictions_against_each_example_s_gold(tiny_model_params):
    """A model whose decision follows the prompt's length (see conftest): predictions vary,
    so accuracy depends on pairing each prediction with its own example's gold label."""
    model = model_deciding_by_length(tiny_model_params, LABEL_IDS)
    # Prompt lengths 5..10 give yes/no/maybe index (length - 1) % 3: no maybe yes no maybe yes.
    gold = ["no", "maybe", "yes", "no", "yes", "no"]
    examples = [
        Encoded(list(range(11, 11 + n)), [LABEL_IDS[LABELS.index(g)], 50256], False)
        for n, g in zip(range(5, 11), gold, strict=True)
    ]
    accuracy = trainer_module.decision_accuracy(
        model, examples, LABEL_IDS, batch_size=4, pad_id=50256
    )
    assert accuracy == pytest.approx(4 / 6)


def test_dev_accuracy_runs_under_the_training_autocast(workdir, tiny, monkeypatch):
    """With bf16 training (autocast, here on the CPU), dev accuracy is computed under the
    same autocast as the dev loss, so the checkpoint is chosen on bf16 numbers."""
    states = []
    real = trainer_module.score_decisions

    def spy(*args, **kwargs):
        states.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "score_decisions", spy)
    set_params(workdir, tiny(epochs=1, precision="bf16"))
    stage.main()
    assert states == [(True, torch.bfloat16)]


def test_only_the_tied_head_message_is_silenced(caplog):
    """The filter drops the Trainer's warning about lm_head.weight alone, nothing else."""
    import logging

    logger = logging.getLogger("transformers.trainer.test")  # a child: the filter is on a copy
    logger.addFilter(trainer_module.TIED_HEAD_FILTER)
    with caplog.at_level(logging.WARNING):
        logger.warning(trainer_module.TIED_HEAD_MISSING)
        logger.warning("There were missing keys in the checkpoint model loaded: ['wte.weight'].")
        logger.warning("There were unexpected keys in the checkpoint model loaded: ['x'].")
    assert [r.getMessage() for r in caplog.records] == [
        "There were missing keys in the checkpoint model loaded: ['wte.weight'].",
        "There were unexpected keys in the checkpoint model loaded: ['x'].",
    ]
    # The message silenced is the one transformers writes, word for word.
    import inspect

    from transformers import Trainer

    source = inspect.getsource(Trainer._issue_warnings_after_load)
    assert TIED_PREFIX in source and TIED_PREFIX in trainer_module.TIED_HEAD_MISSING


TIED_PREFIX = "There were missing keys in the checkpoint model loaded: "


# ---- Model selection on the dev split ----

WORD = {"yes": "helps", "no": "harms", "maybe": "unclear"}


def cohort(n: int, offset: int, answer: str) -> list[Record]:
    """Records whose decision is named in the question; their long answers follow `answer`."""
    labels = ["yes", "no", "yes", "maybe"]
    out = []
    for i in range(offset, offset + n):
        decision = labels[i % 4]
        out.append(
            Record(
                pmid=str(1000 + i),
                question=f"Treatment {i} {WORD[decision]}?",
                contexts=[f"Study {i}."],
                labels=["RESULTS"],
                meshes=[],
                long_answer=answer.format(i=i, word=WORD[decision]),
                final_decision=decision,
            )
        )
    return out


@pytest.fixture
def selection_workdir(tmp_path, monkeypatch, tokenizer):
    """16 training and 8 dev examples whose long answers differ: with a high constant learning
    rate the dev loss first falls, then rises as the model overfits the training answers, and
    dev accuracy moves from step to step, so choosing a checkpoint matters."""
    prepared = tmp_path / paths.TRAIN_FILE.parent
    prepared.mkdir(parents=True)
    write_split(tmp_path / paths.TRAIN_FILE, cohort(16, 0, "It {word}."), tokenizer, 128)
    dev = cohort(8, 100, "Patients in cohort {i} were followed for years.")
    write_split(tmp_path / paths.DEV_FILE, dev, tokenizer, 128)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def dev_figures_by_hand(model_dir: Path) -> tuple[float, float]:
    """(accuracy, loss) of a saved model on dev.parquet, from full logits: the decision is the
    most likely of " yes"/" no"/" maybe" after the prompt, scored against the `decision`
    column; the loss is the mean NLL of every completion token."""
    model = load_model(model_dir).eval()
    correct, nll, count = 0, 0.0, 0
    rows = pq.read_table(paths.DEV_FILE).to_pylist()
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["prompt_ids"] + row["completion_ids"]])
            logits = model(ids).logits[0].float()
            start = len(row["prompt_ids"])
            predicted = LABELS[int(logits[start - 1, LABEL_IDS].argmax())]
            correct += predicted == row["decision"]
            nll += torch.nn.functional.cross_entropy(
                logits[start - 1 : -1], ids[0, start:], reduction="sum"
            ).item()
            count += len(row["completion_ids"])
    return correct / len(rows), nll / count


@pytest.mark.parametrize("best_metric", ["dev_loss", "dev_accuracy"])
def test_the_saved_model_is_the_best_dev_checkpoint(selection_workdir, tiny, best_metric):
    set_params(
        selection_workdir,
        tiny(
            epochs=4, learning_rate=1e-2, lr_scheduler="constant", warmup_ratio=0.0,
            save_steps=1, eval_batch_size=8, best_metric=best_metric, keep_checkpoints=True,
        ),
    )  # fmt: skip
    stage.main()
    metrics = read_metrics(selection_workdir)
    logged = curve(selection_workdir, "eval/loss" if best_metric == "dev_loss" else "eval/accuracy")
    steps = sorted(logged)
    assert steps == list(range(1, 17))
    # The curve must make the choice matter: not flat, and its best is not the last step.
    assert len(set(logged.values())) > 1
    choose = min if best_metric == "dev_loss" else max
    best = next(step for step in steps if logged[step] == choose(logged.values()))
    assert best != steps[-1]
    assert metrics["best_step"] == best
    assert metrics[best_metric] == pytest.approx(logged[best])

    # models/finetuned holds exactly that checkpoint's weights, not the last step's.
    saved = load_file(selection_workdir / paths.FINETUNED / "model.safetensors")
    checkpoint = selection_workdir / paths.CHECKPOINTS / f"checkpoint-{best}"
    chosen = load_file(checkpoint / "model.safetensors")
    assert saved.keys() == chosen.keys()
    assert all(torch.equal(saved[k], chosen[k]) for k in saved)

    # The dev figures recompute from dev.parquet and the saved model alone.
    accuracy, loss = dev_figures_by_hand(selection_workdir / paths.FINETUNED)
    assert metrics["dev_accuracy"] == pytest.approx(accuracy)
    assert metrics["dev_loss"] == pytest.approx(loss, rel=1e-4)
