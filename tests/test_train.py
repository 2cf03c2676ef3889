"""The train stage: loss masking, input checks, resume, and whole runs on a tiny random GPT-2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from pubmedqa_gpt2 import paths
from pubmedqa_gpt2.config import load_params
from pubmedqa_gpt2.data.prepare import write_split
from pubmedqa_gpt2.data.records import Record
from pubmedqa_gpt2.errors import StageError, run_stage
from pubmedqa_gpt2.model.loading import load_model
from pubmedqa_gpt2.prompt import LABELS, Encoded
from pubmedqa_gpt2.training import recipe
from pubmedqa_gpt2.training import trainer as trainer_module
from pubmedqa_gpt2.training.callbacks import curve_name, curve_wanted
from pubmedqa_gpt2.training.checkpoints import STATE_FILE
from pubmedqa_gpt2.training.collator import Collator
from pubmedqa_gpt2.training.examples import IGNORE_INDEX, read_split, to_features
from pubmedqa_gpt2.training.phase import PHASE2
from pubmedqa_gpt2.training.settings import resolve_precision
from stages import train as stage

from .committed import committed_params, write_params
from .conftest import ROOT, model_deciding_by_length

LABEL_IDS = [3763, 645, 3863]  # " yes", " no", " maybe" in GPT-2's vocabulary


def records(n: int, offset: int = 0) -> list[Record]:
    """Synthetic PQA-L records, labels cycling through yes/no/maybe."""
    return [
        Record(
            pmid=str(1000 + i),
            question=f"Does treatment {i} reduce mortality?",
            contexts=[f"We studied {i} patients.", "Outcomes were recorded."],
            labels=["BACKGROUND", "METHODS"],
            meshes=[],
            long_answer=f"Treatment {i} had an effect.",
            final_decision=LABELS[i % 3],
        )
        for i in range(offset, offset + n)
    ]


@pytest.fixture
def workdir(tmp_path, monkeypatch, tokenizer):
    """A stage working directory with prepared splits of 12 (train) and 6 (dev) examples."""
    prepared = tmp_path / paths.TRAIN_FILE.parent
    prepared.mkdir(parents=True)
    write_split(tmp_path / paths.TRAIN_FILE, records(12), tokenizer, max_length=128)
    write_split(tmp_path / paths.DEV_FILE, records(6, offset=100), tokenizer, max_length=128)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def tiny(tiny_model_params):
    """Params of a 2-layer random GPT-2 that trains in seconds on a CPU; **train overrides."""
    model = tiny_model_params.model_dump()

    def params(**train) -> dict:
        defaults = {
            "epochs": 2,
            "batch_size": 4,
            "eval_batch_size": 4,
            "logging_steps": 1,
            "learning_rate": 1e-3,
        }
        return {"model": model, "train": defaults | train}

    return params


def set_params(folder: Path, params: dict) -> None:
    """params.yaml: the committed one with `params` (sections of changes) merged in."""
    write_params(folder, params)


def read_metrics(folder: Path) -> dict:
    """metrics/train.json (timing and memory, which vary, are in perf/train.json)."""
    return json.loads((folder / paths.TRAIN_METRICS).read_text())


def read_perf(folder: Path) -> dict:
    return json.loads((folder / paths.TRAIN_PERF).read_text())


def curve_text(folder: Path, name: str) -> str:
    """A dvclive curve's whole file, e.g. name="train/loss"."""
    return (folder / paths.DVCLIVE / "plots" / "metrics" / f"{name}.tsv").read_text()


def curve(folder: Path, name: str) -> dict[int, float]:
    """A dvclive curve as {step: value} (a step logged twice keeps its value)."""
    rows = [line.split("\t") for line in curve_text(folder, name).splitlines()[1:]]
    return {int(step): float(value) for step, value in rows}


def curve_steps(folder: Path, name: str) -> list[str]:
    """The steps of a dvclive curve, e.g. name="eval/loss"."""
    tsv = folder / paths.DVCLIVE / "plots" / "metrics" / f"{name}.tsv"
    return [line.split("\t")[0] for line in tsv.read_text().splitlines()[1:]]


def run_module(folder: Path) -> subprocess.CompletedProcess:
    """`python -m stages.train` in `folder`, as DVC runs it."""
    return subprocess.run(
        [sys.executable, "-m", "stages.train"],
        cwd=folder,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=600,
    )


# ---- Pure pieces ----


def test_completion_loss_masks_the_prompt_and_padding():
    short = Encoded([1, 2, 3], [3763, 9, 50256], False)
    long = Encoded([1, 2, 3, 4], [645, 8, 50256], False)
    feats = [to_features(ex, "completion") for ex in (short, long)]
    batch = Collator(pad_id=50256)(feats)
    assert batch["input_ids"].tolist() == [
        [1, 2, 3, 3763, 9, 50256, 50256],
        [1, 2, 3, 4, 645, 8, 50256],
    ]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1, 0], [1] * 7]
    # Logits are kept from the position before the first label (index 2) on: 5 positions.
    assert batch["logits_to_keep"] == 5
    assert batch["labels"].tolist() == [
        [-100, 3763, 9, 50256, -100],  # the end-of-text IS learnt; the padding after it is not
        [-100, -100, 645, 8, 50256],
    ]


def test_all_tokens_loss_masks_only_padding():
    feats = [
        to_features(Encoded([1, 2], [3763], False), "all"),
        to_features(Encoded([1, 2, 3], [645], False), "all"),
    ]
    batch = Collator(pad_id=0)(feats)
    assert batch["logits_to_keep"] == 4
    assert batch["labels"].tolist() == [[1, 2, 3763, -100], [1, 2, 3, 645]]


@pytest.mark.parametrize("loss_on", ["completion", "all"])
def test_loss_equals_a_hand_computed_cross_entropy(tiny_model_params, loss_on):
    """The model's loss on a collated batch is the mean negative log-likelihood of exactly
    the completion tokens (end-of-text included), computed here by hand from full logits."""
    from pubmedqa_gpt2.model.loading import build_model

    model = build_model(tiny_model_params).eval()
    eos = 50256
    examples = [
        Encoded([11, 12, 13, 14, 15], [3763, 21, eos], False),
        Encoded([31, 32], [645, 41, 42, eos], False),
    ]
    batch = Collator(pad_id=eos)([to_features(ex, loss_on) for ex in examples])
    with torch.no_grad():
        loss = model(**batch).loss
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    terms = []
    for row, ex in enumerate(examples):
        tokens = ex.prompt_ids + ex.completion_ids
        first = len(ex.prompt_ids) if loss_on == "completion" else 1
        for pos in range(first, len(tokens)):  # token `pos` is predicted at position pos - 1
            terms.append(-log_probs[row, pos - 1, tokens[pos]])
    assert len(terms) == (3 + 4 if loss_on == "completion" else 7 + 5)
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)


@pytest.mark.parametrize("loss_on", ["completion", "all"])
@pytest.mark.parametrize("num_items", [None, 11])
def test_the_trainer_s_loss_and_gradients_are_the_model_s_own(
    tiny_model_params, tmp_path, loss_on, num_items
):
    """The Trainer's loss runs the LM head on the labelled positions only, yet gives the
    figure and the gradients of transformers' own causal-LM loss on full logits: the mean NLL
    of the labelled tokens, or their sum over the Trainer's `num_items_in_batch` (gradient
    accumulation's count). The head sees one row per labelled token, and only during the loss."""
    from transformers import TrainingArguments

    from pubmedqa_gpt2.model.loading import build_model

    model = build_model(tiny_model_params).eval()  # no dropout: both passes see one function
    with torch.no_grad():  # an untied head, so a row mix-up in it shows in the gradients
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.clone() + 0.1)
    eos = 50256
    examples = [
        Encoded([11, 12, 13, 14, 15], [3763, 21, eos], False),
        Encoded([31, 32], [645, 41, 42, eos], False),
        Encoded([51, 52, 53, 54, 55, 56, 57, 58], [3863, eos], False),
    ]
    batch = Collator(pad_id=eos)([to_features(ex, loss_on) for ex in examples])
    labelled = 3 + 4 + 2 if loss_on == "completion" else 7 + 5 + 9  # position 0 predicts none
    # transformers' own loss: full logits, labels shifted inside the model.
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["input_ids"].clone()
    targets[batch["attention_mask"] == 0] = IGNORE_INDEX
    if loss_on == "completion":
        for row, ex in enumerate(examples):
            targets[row, : len(ex.prompt_ids)] = IGNORE_INDEX
    nll = torch.nn.functional.cross_entropy(
        full[:, :-1].reshape(-1, full.shape[-1]).float(), targets[:, 1:].reshape(-1),
        reduction="sum",
    )  # fmt: skip
    expected = nll / (num_items if num_items is not None else labelled)
    expected.backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    rows_seen = []
    model.lm_head.register_forward_hook(lambda _m, _a, out: rows_seen.append(out.shape))
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = trainer_module.DecisionTrainer(
        model=model, args=args, dev_examples=[], label_ids=LABEL_IDS
    )
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
    loss.backward()
    assert rows_seen == [torch.Size([labelled, model.config.vocab_size])]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, expected_grads[name], rtol=1e-3, atol=1e-5)
    model(input_ids=batch["input_ids"])  # outside the loss, the head sees every position
    assert rows_seen[-1] == torch.Size([3, batch["input_ids"].shape[1], model.config.vocab_size])


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


def test_curve_names():
    assert [curve_name(k) for k in ("loss", "grad_norm", "eval_loss", "eval_accuracy")] == [
        "train/loss",
        "train/grad_norm",
        "eval/loss",
        "eval/accuracy",
    ]
    kept = [
        k
        for k in (
            "loss",
            "learning_rate",
            "eval_loss",
            "eval_runtime",
            "train_loss",
            "train_samples_per_second",
            "epoch",
            "total_flos",
        )
        if curve_wanted(k)
    ]
    assert kept == ["loss", "learning_rate", "eval_loss"]


def test_read_split_names_the_bad_row(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(
        pa.table(
            {
                "pmid": ["1", "2"],
                "prompt_ids": [[1, 2], [3]],
                "completion_ids": [[3763, 13], [11, 645]],
                "shortened": [False, False],
            }
        ),
        path,
    )
    with pytest.raises(StageError, match=r"row 1 \(pmid 2\): completion_ids must start"):
        read_split(path, LABEL_IDS)


def test_read_split_missing_file_and_column(tmp_path):
    with pytest.raises(StageError, match="file not found; run the prepare stage"):
        read_split(tmp_path / "nope.parquet", LABEL_IDS)
    path = tmp_path / "dev.parquet"
    pq.write_table(pa.table({"prompt_ids": [[1]]}), path)
    with pytest.raises(StageError, match="missing column.*completion_ids"):
        read_split(path, LABEL_IDS)


# ---- Whole runs ----


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


def test_same_params_same_metrics_and_resume_after_a_finished_run(workdir, tiny):
    set_params(
        workdir, tiny(best_metric="dev_accuracy", resumable_checkpoints=True, keep_checkpoints=True)
    )
    stage.main()
    first = read_metrics(workdir)
    first_curve = (workdir / "dvclive/plots/metrics/train/loss.tsv").read_text()
    weights = (workdir / paths.FINETUNED / "model.safetensors").read_bytes()

    # Checkpoints persist: the rerun resumes at the end and must give the same outputs.
    assert list((workdir / paths.CHECKPOINTS).glob("checkpoint-*"))
    stage.main()
    assert read_metrics(workdir) == first
    assert (workdir / "dvclive/plots/metrics/train/loss.tsv").read_text() == first_curve
    assert (workdir / paths.FINETUNED / "model.safetensors").read_bytes() == weights

    # A fresh run from nothing gives the same numbers too (CPU determinism).
    for folder in ("models", "dvclive"):
        shutil.rmtree(workdir / folder)
    stage.main()
    assert read_metrics(workdir) == first


def test_resume_from_an_interrupted_run_matches_an_uninterrupted_one(workdir, tiny):
    set_params(workdir, tiny(epochs=2, resumable_checkpoints=True, keep_checkpoints=True))
    stage.main()
    whole = read_metrics(workdir)
    whole_perf = read_perf(workdir)
    curves = {name: curve_text(workdir, name) for name in ("train/loss", "train/learning_rate")}
    checkpoints = workdir / paths.CHECKPOINTS
    last_weights = load_file(checkpoints / "checkpoint-6" / "model.safetensors")
    last_optimizer = torch.load(checkpoints / "checkpoint-6" / "optimizer.pt")

    # Simulate a run killed after the first epoch: only its first checkpoint survives.
    shutil.rmtree(checkpoints / "checkpoint-6")
    state = json.loads((checkpoints / "checkpoint-3" / STATE_FILE).read_text())
    assert state["global_step"] == 3
    shutil.rmtree(workdir / "models" / "finetuned")
    shutil.rmtree(workdir / "dvclive")
    stage.main()
    perf = read_perf(workdir)
    # Only the remaining steps were trained: a restart would run all 6.
    assert (perf["resumed_from_step"], perf["steps_this_run"]) == (3, 3)
    # Throughput counts the tokens of this run's steps only: epoch 2, each training example's
    # prompt and completion once (the whole run saw them twice).
    epoch = sum(len(row["prompt_ids"]) + len(row["completion_ids"])
                for row in pq.read_table(paths.TRAIN_FILE).to_pylist())  # fmt: skip
    assert whole_perf["train_tokens_this_run"] == 2 * epoch
    assert perf["train_tokens_this_run"] == epoch
    # tokens/s of the runtime before rounding: runtime_seconds is rounded to 0.01 s
    runtime, rate = perf["runtime_seconds"], perf["train_tokens_per_second"]
    assert epoch / (runtime + 0.005) - 0.05 <= rate <= epoch / (runtime - 0.005) + 0.05
    resumed = read_metrics(workdir)
    assert resumed["steps"] == 6
    assert resumed["dev_loss"] == pytest.approx(whole["dev_loss"], rel=1e-5)
    assert resumed["final_train_loss"] == pytest.approx(whole["final_train_loss"], rel=1e-5)
    # The curves are replayed from the checkpoint, then continued: each step once, and the
    # learning rate goes on down the schedule instead of starting it over.
    assert curve_steps(workdir, "train/loss") == [str(step) for step in range(1, 7)]
    for name, text in curves.items():
        assert curve_text(workdir, name) == text, name
    # Optimizer state continued: Adam's moments and the weights end where the whole run's did.
    weights = load_file(checkpoints / "checkpoint-6" / "model.safetensors")
    assert weights.keys() == last_weights.keys()
    for key, value in weights.items():
        torch.testing.assert_close(value, last_weights[key], rtol=1e-5, atol=1e-6, msg=key)
    optimizer = torch.load(checkpoints / "checkpoint-6" / "optimizer.pt")
    for index, moments in last_optimizer["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(optimizer["state"][index][key], moments[key], msg=key)


def test_changed_params_start_afresh(workdir, tiny, capsys):
    set_params(workdir, tiny(epochs=1, keep_checkpoints=True))
    stage.main()
    set_params(workdir, tiny(epochs=1, learning_rate=5e-4))
    stage.main()
    assert "starting afresh" in capsys.readouterr().out
    assert read_metrics(workdir)["steps"] == 3


def test_lora_run_saves_the_base_plus_the_trained_low_rank_update(
    workdir, tiny, tiny_model_params, capsys
):
    from safetensors import safe_open

    from pubmedqa_gpt2.model.loading import build_model

    params = tiny(epochs=1, save_steps=2, gradient_checkpointing=True, keep_checkpoints=True)
    r, alpha = 4, 8
    params["train"]["lora"] = {"enabled": True, "r": r, "alpha": alpha}
    set_params(workdir, params)
    stage.main()
    metrics = read_metrics(workdir)
    # By hand, width 64, r = 4: A and B of c_attn 4 x (64 + 192), attention c_proj 4 x (64 + 64),
    # c_fc 4 x (64 + 256), MLP c_proj 4 x (256 + 64): 4,096 a block, 8,192 in the 2 blocks. The
    # base has 3,382,080 (token embeddings 50,257 x 64, positions 1,024 x 64, 49,984 a block,
    # the final layer norm 128); the memory estimate counts the frozen ones as weights only.
    assert (metrics["trainable_parameters"], metrics["total_parameters"]) == (8_192, 3_390_272)
    assert "need 0.0 GB (3,390,272 parameters, 8,192 trained)" in capsys.readouterr().out
    with safe_open(workdir / paths.FINETUNED / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and not any("lora" in k for k in keys)
    # save_steps=2 evaluates at steps 2 and 3 (the epoch end).
    assert curve_steps(workdir, "eval/loss") == ["2", "3"]

    # The saved weights are W + (alpha / r) * (B A)^T (GPT-2's Conv1D stores W as in x out),
    # with A and B the adapters of the checkpoint selected on dev; everything else is the base.
    base = build_model(tiny_model_params).state_dict()
    saved = load_model(workdir / paths.FINETUNED).state_dict()
    best = workdir / paths.CHECKPOINTS / f"checkpoint-{metrics['best_step']}"
    adapters = load_file(best / "adapter_model.safetensors")
    updated = set()
    for name, weight in saved.items():
        a_key = f"base_model.model.{name.removesuffix('.weight')}.lora_A.weight"
        if a_key not in adapters:
            torch.testing.assert_close(weight, base[name], rtol=0, atol=0, msg=name)
            continue
        a, b = adapters[a_key], adapters[a_key.replace("lora_A", "lora_B")]
        delta = (alpha / r) * (b @ a).T
        assert delta.abs().max() > 1e-4, name  # training moved the adapter
        torch.testing.assert_close(weight, base[name] + delta, rtol=1e-5, atol=1e-6, msg=name)
        updated.add(name)
    # By hand: the tiny model's 2 blocks, each with its four Conv1D weights (GPT-2's c_proj
    # name is both the attention's and the MLP's output projection).
    assert updated == {
        f"transformer.h.{i}.{layer}.weight"
        for i in (0, 1)
        for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }


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


@pytest.mark.child_process
def test_the_console_shows_progress_bars_not_log_lines_nor_harmless_warnings(workdir, tiny):
    """A run's console: the training bar carries the logged figures in its postfix (no dict
    line such as {'loss': '10.81', ...} printed through it); the dev evaluation has bars of
    its own; the two known-harmless transformers warnings (GPT-2's tied lm_head reported
    missing when the best checkpoint is loaded; `loss_type=None` unrecognized) are gone."""
    set_params(workdir, tiny())
    result = run_module(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    print(console)  # quoted in the issue note (pytest -s)
    assert "{'" not in console, console  # no log dict, of training, dev or the run's end
    assert "train: " in console and "loss=" in console and "dev_loss=" in console
    assert "dev_acc=" in console
    assert "dev loss: " in console and "dev accuracy: " in console  # the dev evaluation's bars
    assert "lm_head.weight" not in console and "missing keys" not in console
    assert "loss_type" not in console
    assert "warn" not in console.lower(), console  # no other warning either, here


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


@pytest.mark.child_process
def test_two_cpu_processes(workdir, tiny):
    set_params(workdir, tiny(epochs=2, num_processes=2, warmup_ratio=0.5, lr_scheduler="linear"))
    result = run_module(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    # 12 examples over 2 processes of batch 4: 2 steps per epoch, 4 in all.
    assert read_metrics(workdir)["steps"] == 4
    # Warmup is half of the run's 4 optimizer steps: 2 (counted for one process of batch 4,
    # 6 steps, it would be 3). Linear schedule, peak 1e-3; step k runs at the schedule's value
    # after k - 1 steps: warmup 0/2, 1/2, then the peak, then (4 - 3) / (4 - 2) of it.
    lr = curve(workdir, "train/learning_rate")
    assert [lr[step] for step in (1, 2, 3, 4)] == pytest.approx([0.0, 5e-4, 1e-3, 5e-4])
    assert (workdir / paths.FINETUNED / "model.safetensors").is_file()
    # Memory is reported for every process, not only the first.
    ranks = read_perf(workdir)["ranks"]
    assert len(ranks) == 2 and all(r["device"] == "cpu" and r["peak_rss_bytes"] > 0 for r in ranks)


# ---- Model selection on the dev split, and the loss on every token ----

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


def test_loss_on_all_learns_the_prompt_tokens_too(workdir, tiny, monkeypatch):
    """With train.loss_on: all every real token is a label; with completion only the
    completion's are; and the run's losses differ accordingly."""
    seen: dict[str, list[tuple[int, int, int]]] = {}

    class Recording(Collator):
        def __call__(self, features):
            batch = super().__call__(features)
            labelled = int((batch["labels"] != IGNORE_INDEX).sum())
            real = int(batch["attention_mask"].sum())
            completion = sum(len(f["input_ids"]) - f["labels"].count(IGNORE_INDEX)
                             for f in features)  # fmt: skip
            seen[mode].append((labelled, real, completion))
            return batch

    monkeypatch.setattr(recipe, "Collator", Recording)
    examples = read_split(workdir / paths.TRAIN_FILE, LABEL_IDS)
    completion_tokens = sum(len(ex.completion_ids) for ex in examples)
    losses = {}
    for mode in ("completion", "all"):
        seen[mode] = []
        set_params(workdir, tiny(epochs=1, loss_on=mode))
        stage.main()
        losses[mode] = read_metrics(workdir)["dev_loss"]
        shutil.rmtree(workdir / "models")
        train_batches = seen[mode][:3]  # 12 examples, batch 4; then the dev batches
        assert sum(real for _, real, _ in train_batches) > 2 * completion_tokens
        if mode == "all":
            assert all(labelled == real for labelled, real, _ in seen[mode])
        else:
            assert sum(labelled for labelled, _, _ in train_batches) == completion_tokens
    assert losses["all"] != pytest.approx(losses["completion"], rel=1e-3)


# ---- GPU paths, simulated on the CPU ----


@pytest.mark.parametrize(
    ("visible", "expected"), [(None, "0"), ("3,5", "3"), ("GPU-a1, GPU-b2", "GPU-a1"), ("2", "2")]
)
def test_one_training_process_sees_one_gpu(workdir, tiny, monkeypatch, visible, expected):
    """With train.num_processes 1 on a machine of several GPUs, the Trainer would wrap the
    model in DataParallel (a larger batch, warmup for one device, no bf16 autocast): the
    stage restricts CUDA to one free device before anything starts it."""
    from pubmedqa_gpt2 import devices

    seen = {}
    monkeypatch.setattr(devices, "physical_gpus", lambda: ["0", "1"])
    monkeypatch.setenv(devices.LOCK_DIR_ENV, str(workdir / "locks"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible or "")  # restored after the test
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(recipe, "train", lambda params, phase: seen.update(os.environ))
    set_params(workdir, tiny())
    try:
        stage.main()
    finally:
        devices.release_gpus()
    assert seen["CUDA_VISIBLE_DEVICES"] == expected


def test_a_data_parallel_run_claims_a_gpu_per_process(workdir, tiny, monkeypatch):
    from pubmedqa_gpt2 import devices

    seen = {}
    monkeypatch.setattr(devices, "physical_gpus", lambda: ["0", "1", "2"])
    monkeypatch.setenv(devices.LOCK_DIR_ENV, str(workdir / "locks"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # restored after the test
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(recipe, "launch", lambda n, *_: seen.update(os.environ, n=n))
    set_params(workdir, tiny(num_processes=2))
    try:
        stage.main()
    finally:
        devices.release_gpus()
    assert (seen["n"], seen["CUDA_VISIBLE_DEVICES"]) == (2, "0,1")


def test_a_process_that_sees_several_gpus_is_refused(workdir, tiny, monkeypatch):
    """Should CUDA have started before the stage could restrict it, training refuses to run
    one process over several GPUs rather than silently changing the experiment."""
    from transformers import TrainingArguments

    monkeypatch.setattr(TrainingArguments, "n_gpu", property(lambda self: 2))
    set_params(workdir, tiny())
    with pytest.raises(StageError, match="sees 2 GPUs; set train.num_processes"):
        recipe.train(load_params(workdir / "params.yaml"), PHASE2)
    assert not (workdir / paths.FINETUNED).exists()


def test_activation_checkpointing_is_asked_for_by_the_name_transformers_knows(tmp_path):
    """On when train.gradient_checkpointing is, off otherwise, and without the deprecation
    warning recent transformers prints for the old argument name."""
    import warnings

    from pubmedqa_gpt2.training.settings import training_arguments

    for on in (True, False):
        train = committed_params({"train": {"gradient_checkpointing": on}}).train
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            args = training_arguments(train, "fp32", 0, cuda=False, output_dir=tmp_path)
        assert args.gradient_checkpointing is on  # transformers mirrors the two names
        assert not [w for w in caught if "checkpointing" in str(w.message)]
    train = committed_params({"train": {"gradient_checkpointing": True}}).train
    args = training_arguments(train, "fp32", 0, cuda=False, output_dir=tmp_path)
    assert args.gradient_checkpointing_kwargs == {"use_reentrant": False}


def test_train_and_evaluate_refuse_emulated_bf16(monkeypatch):
    """A V100 or T4 runs bf16 only by emulation, slower than fp16: train, evaluate and the
    CLI all pick fp16 there, through the same function."""
    from pubmedqa_gpt2.model.loading import gpu_has_bf16, inference_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # torch's own answer on such a card: yes with emulation, no without.
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation
    )
    assert not gpu_has_bf16()
    assert inference_dtype(torch.device("cuda")) == torch.float16
    assert resolve_precision("auto", True, gpu_has_bf16()) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert inference_dtype(torch.device("cuda")) == torch.bfloat16


def test_training_forward_passes_build_no_kv_cache(tiny_model_params, tokenizer):
    from pubmedqa_gpt2.model.loading import build_model

    model = build_model(tiny_model_params)
    recipe.prepare_for_training(model, tokenizer.pad_token_id)
    out = model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]]))
    assert out.past_key_values is None and out.loss is not None


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


@pytest.mark.parametrize("resumable", [False, True])
def test_checkpoints_hold_optimizer_state_only_when_resumable(workdir, tiny, resumable, capsys):
    set_params(workdir, tiny(epochs=1, resumable_checkpoints=resumable, keep_checkpoints=True))
    stage.main()
    (checkpoint,) = (workdir / paths.CHECKPOINTS).glob("checkpoint-*")
    names = {p.name for p in checkpoint.iterdir()}
    assert "model.safetensors" in names and STATE_FILE in names
    assert ("optimizer.pt" in names) == resumable
    assert ("scheduler.pt" in names) == resumable
    capsys.readouterr()
    # The same run again: resumable checkpoints are resumed from, weights-only ones are not.
    stage.main()
    out = capsys.readouterr().out
    assert ("resuming from" in out) == resumable
    assert ("weights-only checkpoints" in out) == (not resumable)


# ---- Memory and disk ----


def test_checkpoints_are_deleted_after_a_successful_run(workdir, tiny, capsys):
    set_params(workdir, tiny(epochs=1))
    stage.main()
    assert not (workdir / paths.CHECKPOINTS).exists()
    assert (workdir / paths.FINETUNED / "model.safetensors").is_file()
    out = capsys.readouterr().out
    # The memory the training state needs is said before training (fp32 weights, gradients
    # and AdamW moments: 16 bytes a trained parameter), against the machine's memory. By hand:
    # the tiny model's 3,382,080 parameters (see the LoRA test) x 16 = 54,113,280 bytes.
    assert read_metrics(workdir)["total_parameters"] == 3_382_080
    assert (
        "weights, gradients and AdamW state need 0.1 GB (3,382,080 parameters, 3,382,080 "
        "trained), before activations" in out
    )
    assert "available on this machine" in out


def test_a_gpu_too_small_for_the_training_state_is_refused_with_advice():
    from pubmedqa_gpt2.memory import memory_line

    gpt2_large = 774_030_080  # full fine-tuning: 16 x 774M = 12.4 GB
    with pytest.raises(StageError, match=r"more than the GPU's 8.6 GB: set train.lora.enabled"):
        memory_line(gpt2_large, gpt2_large, gpu_capacity=8_589_934_592)
    line = memory_line(gpt2_large, gpt2_large, gpu_capacity=85_899_345_920)
    assert line.startswith("weights, gradients and AdamW state need 12.4 GB")
    assert line.endswith("; the GPU has 85.9 GB")


OOM = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of "
    "which 1.06 GiB is free. Including non-PyTorch memory, this process has 78.12 GiB in use."
)


def test_cuda_out_of_memory_in_training_is_one_line_with_advice(workdir, tiny, monkeypatch, capsys):
    from transformers import Trainer

    def out_of_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError(OOM)

    monkeypatch.setattr(Trainer, "train", out_of_memory)
    set_params(workdir, tiny(epochs=1))
    with pytest.raises(SystemExit) as exit_info:
        run_stage(stage.main)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: CUDA out of memory, tried to allocate 2.00 GiB, 1.06 GiB free of 79.19 GiB; "
        "to fit: lower train.batch_size and raise train.gradient_accumulation_steps by the same "
        "factor, set train.gradient_checkpointing: true, set train.lora.enabled: true, or lower "
        "prepare.max_length"
    ]
    assert not (workdir / paths.FINETUNED).exists() and not PHASE2.running_file.exists()


def test_a_killed_run_is_reported_by_the_next_one(workdir, tiny, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process that existed and is gone, as a SIGKILLed run is
    paths.CHECKPOINTS.mkdir(parents=True)
    PHASE2.running_file.write_text(json.dumps({"pid": dead.pid}))
    set_params(workdir, tiny(epochs=1))
    stage.main()
    out = capsys.readouterr().out
    assert (
        f"the last training run here (pid {dead.pid}) did not finish; if it was killed by "
        "signal 9: probably out of memory" in out
    )
    stage.main()  # that run finished: nothing to report
    assert "did not finish" not in capsys.readouterr().out
