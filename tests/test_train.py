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
import yaml

from stages import train as stage
from stages.config import TrainParams, parse_params
from stages.errors import StageError
from stages.modeling import load_model
from stages.prepare import write_split
from stages.prompt import LABELS, Encoded
from stages.records import Record

from .conftest import ROOT

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
    prepared = tmp_path / stage.TRAIN_FILE.parent
    prepared.mkdir(parents=True)
    write_split(tmp_path / stage.TRAIN_FILE, records(12), tokenizer, max_length=128)
    write_split(tmp_path / stage.DEV_FILE, records(6, offset=100), tokenizer, max_length=128)
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
    (folder / "params.yaml").write_text(yaml.safe_dump(params))


def read_metrics(folder: Path) -> dict:
    """metrics/train.json less its `perf` part (timing and memory vary from run to run)."""
    metrics = json.loads((folder / stage.METRICS_FILE).read_text())
    del metrics["perf"]
    return metrics


def curve_steps(folder: Path, name: str) -> list[str]:
    """The steps of a dvclive curve, e.g. name="eval/loss"."""
    tsv = folder / stage.DVCLIVE / "plots" / "metrics" / f"{name}.tsv"
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
    feats = [stage.to_features(ex, "completion") for ex in (short, long)]
    batch = stage.Collator(pad_id=50256)(feats)
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
        stage.to_features(Encoded([1, 2], [3763], False), "all"),
        stage.to_features(Encoded([1, 2, 3], [645], False), "all"),
    ]
    batch = stage.Collator(pad_id=0)(feats)
    assert batch["logits_to_keep"] == 4
    assert batch["labels"].tolist() == [[1, 2, 3763, -100], [1, 2, 3, 645]]


@pytest.mark.parametrize("loss_on", ["completion", "all"])
def test_loss_equals_a_hand_computed_cross_entropy(tiny_model_params, loss_on):
    """The model's loss on a collated batch is the mean negative log-likelihood of exactly
    the completion tokens (end-of-text included), computed here by hand from full logits."""
    from stages.modeling import build_model

    model = build_model(tiny_model_params).eval()
    eos = 50256
    examples = [
        Encoded([11, 12, 13, 14, 15], [3763, 21, eos], False),
        Encoded([31, 32], [645, 41, 42, eos], False),
    ]
    batch = stage.Collator(pad_id=eos)([stage.to_features(ex, loss_on) for ex in examples])
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


@pytest.mark.parametrize(
    ("n", "batch", "accum", "world", "epochs", "steps"),
    [(450, 8, 1, 1, 3, 171), (450, 8, 4, 1, 1, 15), (450, 8, 1, 2, 1, 29), (3, 8, 4, 1, 2, 2)],
)
def test_optimizer_steps(n, batch, accum, world, epochs, steps):
    train = TrainParams(batch_size=batch, gradient_accumulation_steps=accum, epochs=epochs)
    assert stage.optimizer_steps(n, train, world) == steps


def test_precision_resolution():
    assert stage.resolve_precision("auto", cuda=True, bf16_supported=True) == "bf16"
    assert stage.resolve_precision("auto", cuda=True, bf16_supported=False) == "fp16"
    assert stage.resolve_precision("auto", cuda=False, bf16_supported=False) == "fp32"
    with pytest.raises(StageError, match="fp16 needs a CUDA GPU"):
        stage.resolve_precision("fp16", cuda=False, bf16_supported=False)


def test_curve_names():
    assert [stage.curve_name(k) for k in ("loss", "grad_norm", "eval_loss", "eval_accuracy")] == [
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
        if stage.curve_wanted(k)
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
        stage.read_split(path, LABEL_IDS)


def test_read_split_missing_file_and_column(tmp_path):
    with pytest.raises(StageError, match="file not found; run the prepare stage"):
        stage.read_split(tmp_path / "nope.parquet", LABEL_IDS)
    path = tmp_path / "dev.parquet"
    pq.write_table(pa.table({"prompt_ids": [[1]]}), path)
    with pytest.raises(StageError, match="missing column.*completion_ids"):
        stage.read_split(path, LABEL_IDS)


def test_checkpoints_of_another_run_are_dropped(tmp_path):
    folder = tmp_path / "checkpoints"
    (folder / "checkpoint-4").mkdir(parents=True)
    (folder / "checkpoint-4" / stage.STATE_FILE).write_text("{}")
    (folder / "checkpoint-6").mkdir()  # killed while saving: no trainer state
    stage.reconcile_checkpoints(folder, "run-a")
    assert sorted(p.name for p in folder.glob("checkpoint-*")) == []  # no record: not ours

    (folder / "checkpoint-4").mkdir()
    (folder / "checkpoint-4" / stage.STATE_FILE).write_text("{}")
    (folder / "checkpoint-6").mkdir()
    stage.reconcile_checkpoints(folder, "run-a")
    assert sorted(p.name for p in folder.glob("checkpoint-*")) == ["checkpoint-4"]

    stage.reconcile_checkpoints(folder, "run-b")
    assert list(folder.glob("checkpoint-*")) == []


def test_fingerprint_follows_params_and_data(tmp_path):
    data = tmp_path / "train.parquet"
    data.write_bytes(b"a")
    base = parse_params({"train": {"epochs": 1}})
    same = stage.run_fingerprint(base, [data])
    assert stage.run_fingerprint(parse_params({"train": {"epochs": 1}}), [data]) == same
    assert stage.run_fingerprint(parse_params({"train": {"epochs": 2}}), [data]) != same
    data.write_bytes(b"b")
    assert stage.run_fingerprint(base, [data]) != same


# ---- Whole runs ----


def test_training_run_writes_model_metrics_and_curves(workdir, tiny):
    set_params(workdir, tiny())
    stage.main()

    metrics = json.loads((workdir / stage.METRICS_FILE).read_text())
    assert (
        metrics["steps"] == 6 and metrics["train_examples"] == 12 and metrics["dev_examples"] == 6
    )
    assert metrics["trainable_parameters"] == metrics["total_parameters"] > 0
    perf = metrics["perf"]
    assert perf["runtime_seconds"] > 0 and perf["peak_memory_bytes"] > 0
    assert perf["precision"] == "fp32" and perf["processes"] == 1
    # Tokens/s counts the real (non-padding) tokens of 2 epochs; runtime is rounded to 10 ms.
    real_tokens = sum(
        len(ex.prompt_ids) + len(ex.completion_ids)
        for ex in stage.read_split(workdir / stage.TRAIN_FILE, [3763, 645, 3863])
    )
    seen = perf["train_tokens_per_second"] * perf["runtime_seconds"]
    assert seen == pytest.approx(2 * real_tokens, rel=0.01 / perf["runtime_seconds"] + 1e-3)

    saved = workdir / stage.FINETUNED
    names = {p.name for p in saved.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "params.json",
        "README.md",
    } <= names
    assert not any(n.endswith(".bin") for n in names)
    assert not (workdir / "models" / "finetuned.partial").exists()
    model = load_model(saved)
    assert model.config.n_layer == 2

    assert curve_steps(workdir, "train/loss") == [str(step) for step in range(1, 7)]
    assert curve_steps(workdir, "eval/loss") == curve_steps(workdir, "eval/accuracy") == ["3", "6"]
    for curve in ("train/learning_rate", "train/grad_norm"):
        assert curve_steps(workdir, curve) == [str(step) for step in range(1, 7)]
    assert not (workdir / "dvc.yaml").exists()  # dvclive must not write its own dvc.yaml


def test_same_params_same_metrics_and_resume_after_a_finished_run(workdir, tiny):
    set_params(workdir, tiny(best_metric="dev_accuracy"))
    stage.main()
    first = read_metrics(workdir)
    first_curve = (workdir / "dvclive/plots/metrics/train/loss.tsv").read_text()
    weights = (workdir / stage.FINETUNED / "model.safetensors").read_bytes()

    # Checkpoints persist: the rerun resumes at the end and must give the same outputs.
    assert list((workdir / stage.CHECKPOINTS).glob("checkpoint-*"))
    stage.main()
    assert read_metrics(workdir) == first
    assert (workdir / "dvclive/plots/metrics/train/loss.tsv").read_text() == first_curve
    assert (workdir / stage.FINETUNED / "model.safetensors").read_bytes() == weights

    # A fresh run from nothing gives the same numbers too (CPU determinism).
    for folder in ("models", "dvclive"):
        shutil.rmtree(workdir / folder)
    stage.main()
    assert read_metrics(workdir) == first


def test_resume_from_an_interrupted_run_matches_an_uninterrupted_one(workdir, tiny):
    set_params(workdir, tiny(epochs=2))
    stage.main()
    whole = read_metrics(workdir)
    whole_curve = (workdir / "dvclive/plots/metrics/train/loss.tsv").read_text()

    # Simulate a run killed after the first epoch: only its first checkpoint survives.
    checkpoints = workdir / stage.CHECKPOINTS
    shutil.rmtree(checkpoints / "checkpoint-6")
    state = json.loads((checkpoints / "checkpoint-3" / stage.STATE_FILE).read_text())
    assert state["global_step"] == 3
    shutil.rmtree(workdir / "models" / "finetuned")
    shutil.rmtree(workdir / "dvclive")
    stage.main()
    resumed = read_metrics(workdir)
    assert resumed["steps"] == 6
    assert resumed["dev_loss"] == pytest.approx(whole["dev_loss"], rel=1e-5)
    assert resumed["final_train_loss"] == pytest.approx(whole["final_train_loss"], rel=1e-5)
    # The curve is replayed from the checkpoint, then continued: each step once.
    assert curve_steps(workdir, "train/loss") == [str(step) for step in range(1, 7)]
    assert (workdir / "dvclive/plots/metrics/train/loss.tsv").read_text() == whole_curve


def test_changed_params_start_afresh(workdir, tiny, capsys):
    set_params(workdir, tiny(epochs=1))
    stage.main()
    set_params(workdir, tiny(epochs=1, learning_rate=5e-4))
    stage.main()
    assert "starting afresh" in capsys.readouterr().out
    assert read_metrics(workdir)["steps"] == 3


def test_lora_run_saves_a_merged_model(workdir, tiny):
    from safetensors import safe_open

    params = tiny(epochs=1, save_steps=2, gradient_checkpointing=True)
    params["train"]["lora"] = {"enabled": True, "r": 4, "alpha": 8}
    set_params(workdir, params)
    stage.main()
    metrics = read_metrics(workdir)
    assert 0 < metrics["trainable_parameters"] < 100_000
    with safe_open(workdir / stage.FINETUNED / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and not any("lora" in k for k in keys)
    # save_steps=2 evaluates at steps 2 and 3 (the epoch end).
    assert curve_steps(workdir, "eval/loss") == ["2", "3"]


def test_bad_input_fails_with_one_line_and_writes_nothing(workdir, tiny):
    set_params(workdir, tiny())
    bad = {"pmid": ["7"], "prompt_ids": [[1, 2]], "completion_ids": [[99]], "shortened": [False]}
    pq.write_table(pa.table(bad), stage.DEV_FILE)
    result = run_module(workdir)
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: data/prepared/dev.parquet: row 0 (pmid 7): completion_ids must start")
    )
    assert "Traceback" not in result.stderr
    assert not (workdir / "models" / "finetuned").exists()
    assert not (workdir / stage.METRICS_FILE).exists()


def test_two_cpu_processes(workdir, tiny):
    set_params(workdir, tiny(epochs=1, num_processes=2))
    result = run_module(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    # 12 examples over 2 processes of batch 4: 2 steps per epoch.
    assert read_metrics(workdir)["steps"] == 2
    assert (workdir / stage.FINETUNED / "model.safetensors").is_file()
