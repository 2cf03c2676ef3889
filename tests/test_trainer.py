"""The Trainer of both phases (`pubmedqa_gpt2/training/trainer.py`): dev accuracy, under the
training's autocast, the tied-head warning silenced, and the checkpoint chosen on dev."""

from __future__ import annotations

import logging
import re
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


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


EOS = 50256
# The model deciding by prompt length (see conftest) labels a prompt (length - 1) % 3: prompts
# of 3, 2 and 4 tokens get maybe, no, yes; their gold is maybe, yes, yes: accuracy 2/3.
BY_LENGTH = [
    Encoded(list(range(11, 11 + n)), [LABEL_IDS[k], EOS], False)
    for n, k in zip((3, 2, 4), (2, 0, 0), strict=True)
]


@pytest.fixture
def decision_trainer(tokenizer, tiny_model_params, tmp_path):
    """A DecisionTrainer over the BY_LENGTH examples (dev batches of 2), of that model or,
    given a wrap, of the model it wraps it in."""
    from transformers import TrainingArguments

    from pubmedqa_gpt2.training.collator import Collator
    from pubmedqa_gpt2.training.examples import to_features

    def make(wrap=lambda model: model):
        args = TrainingArguments(
            output_dir=str(tmp_path), report_to=[], use_cpu=True, per_device_eval_batch_size=2
        )
        return trainer_module.DecisionTrainer(
            model=wrap(model_deciding_by_length(tiny_model_params, LABEL_IDS)),
            args=args,
            eval_dataset=[to_features(ex, "completion") for ex in BY_LENGTH],
            data_collator=Collator(pad_id=EOS),
            processing_class=tokenizer,
            dev_examples=BY_LENGTH,
            label_ids=LABEL_IDS,
        )

    return make


def test_the_evaluation_loop_passes_the_caller_s_arguments_on(decision_trainer, capsys):
    """The loop adds dev accuracy (2/3, see BY_LENGTH), under a bar "dev accuracy" of the 2
    dev batches, to Trainer's own loop, which still gets each argument: the run's
    description (logged), ignore_keys (the logits and cache ignored: no predictions), the
    prefix of the figures (predict's "test") and prediction_loss_only (True: none gathered,
    whatever the TrainingArguments' default)."""
    trainer = decision_trainer()
    logger = logging.getLogger("transformers.trainer")
    handler, level = _Messages(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        nothing = trainer.predict(trainer.eval_dataset, ignore_keys=["logits", "past_key_values"])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert isinstance(nothing.predictions, tuple) and not nothing.predictions
    assert nothing.metrics["test_accuracy"] == pytest.approx(2 / 3)
    assert "test_loss" in nothing.metrics and "eval_loss" not in nothing.metrics
    assert any("***** Running Prediction *****" in m for m in handler.messages), handler.messages
    err = capsys.readouterr().err
    assert re.search(r"(^|[\r\n])dev loss: +\d+%\|", err), err  # the Trainer's, named
    assert re.search(r"(^|[\r\n])dev accuracy: +100%\|[^\r\n]*\| 2/2 ", err), err
    assert not trainer.args.prediction_loss_only
    loop = trainer.evaluation_loop(
        trainer.get_eval_dataloader(), "Evaluation", prediction_loss_only=True
    )
    assert loop.predictions is None and loop.metrics["eval_accuracy"] == pytest.approx(2 / 3)


def test_processes_other_than_the_first_score_dev_without_a_bar(decision_trainer, capsys):
    trainer = decision_trainer()
    trainer.is_world_process_zero = lambda: False
    loop = trainer.evaluation_loop(trainer.get_eval_dataloader(), "Evaluation")
    assert loop.metrics["eval_accuracy"] == pytest.approx(2 / 3)
    assert "dev accuracy" not in capsys.readouterr().err


def test_a_lora_model_is_scored_through_the_model_it_wraps(decision_trainer):
    """LoRA's B matrices start at zero: the wrapped model decides as the one it wraps, 2/3."""
    from pubmedqa_gpt2.training.lora import apply_lora

    from .committed import committed_params

    train = committed_params({"train": {"lora": {"enabled": True}}}).train
    trainer = decision_trainer(lambda model: apply_lora(model, train))
    assert hasattr(trainer.model, "peft_config")
    loop = trainer.evaluation_loop(trainer.get_eval_dataloader(), "Evaluation")
    assert loop.metrics["eval_accuracy"] == pytest.approx(2 / 3)


def test_dev_accuracy_shows_its_bar_of_batches(tiny_model_params, capsys):
    """3 examples in batches of 2: a bar named as asked, of 2 batches; none when unnamed."""
    model = model_deciding_by_length(tiny_model_params, LABEL_IDS)
    for progress in ("dev accuracy", None):
        accuracy = trainer_module.decision_accuracy(
            model, BY_LENGTH, LABEL_IDS, batch_size=2, pad_id=EOS, progress=progress
        )
        assert accuracy == pytest.approx(2 / 3)
        err = capsys.readouterr().err
        if progress:
            assert re.search(r"(^|[\r\n])dev accuracy: +100%\|[^\r\n]*\| 2/2 ", err), err
        else:
            assert err == ""


def test_the_loss_is_divided_by_the_labelled_tokens_of_all_accumulated_batches(
    decision_trainer,
):
    """With gradient accumulation the Trainer passes num_items_in_batch, the labelled tokens
    of every micro-batch of the optimizer step (here 20): the loss is this batch's summed NLL
    over 20, not its mean over its own 6 (2 completion tokens per example). Reference: torch's
    cross-entropy from each example's full logits, scored alone."""
    from pubmedqa_gpt2.training.examples import to_features

    trainer = decision_trainer()
    model = trainer.model.eval()
    nll = 0.0
    with torch.no_grad():
        for ex in BY_LENGTH:
            logits = model(torch.tensor([ex.prompt_ids + ex.completion_ids])).logits[0]
            start = len(ex.prompt_ids)
            nll += torch.nn.functional.cross_entropy(
                logits[start - 1 : -1].float(), torch.tensor(ex.completion_ids), reduction="sum"
            ).item()
        batch = trainer.data_collator([to_features(ex, "completion") for ex in BY_LENGTH])
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=20)
    assert loss.item() == pytest.approx(nll / 20, rel=1e-5)


def test_the_console_bars_replace_the_trainer_s_own_unless_tqdm_is_off(tmp_path):
    """The Trainer's ProgressCallback gives way to PostfixProgress; with disable_tqdm the
    Trainer has no bars (it prints the logs), and none is added."""
    from transformers import PretrainedConfig, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from pubmedqa_gpt2.training.callbacks import PostfixProgress

    def progress_callbacks(**arguments) -> list[type]:
        args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, **arguments)
        trainer = trainer_module.DecisionTrainer(
            _ConfigOnly(), args, dev_examples=[], label_ids=LABEL_IDS
        )
        assert trainer.args is args
        return [
            type(c)
            for c in trainer.callback_handler.callbacks
            if isinstance(c, ProgressCallback | PrinterCallback)
        ]

    assert progress_callbacks() == [PostfixProgress]
    assert progress_callbacks(disable_tqdm=True) == [PrinterCallback]
    assert not hasattr(PretrainedConfig(), "tie_word_embeddings")


class _ConfigOnly(torch.nn.Module):
    """A model whose config (transformers' base one) does not say whether its head is tied."""

    def __init__(self):
        from transformers import PretrainedConfig

        super().__init__()
        self.config = PretrainedConfig()
        self.linear = torch.nn.Linear(1, 1)


def test_the_tied_head_message_is_silenced_for_a_model_that_ties_its_head(
    decision_trainer, tmp_path
):
    """GPT-2 ties its head (config.tie_word_embeddings): its Trainer silences the message on
    the Trainer's logger; a model whose config does not say so gets no filter."""
    from transformers import TrainingArguments

    logger = logging.getLogger("transformers.trainer")
    handler = _Messages()
    logger.removeFilter(trainer_module.TIED_HEAD_FILTER)
    logger.addHandler(handler)
    try:
        args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
        trainer_module.DecisionTrainer(_ConfigOnly(), args, dev_examples=[], label_ids=[])
        logger.warning(trainer_module.TIED_HEAD_MISSING)
        assert handler.messages == [trainer_module.TIED_HEAD_MISSING]
        decision_trainer()
        logger.warning(trainer_module.TIED_HEAD_MISSING)
        logger.warning("There were unexpected keys in the checkpoint model loaded: ['x'].")
    finally:
        logger.removeHandler(handler)
    assert handler.messages == [
        trainer_module.TIED_HEAD_MISSING,
        "There were unexpected keys in the checkpoint model loaded: ['x'].",
    ]
