"""A phase's checkpoints: which are kept, and the fingerprint that says which run they belong
to (`pubmedqa_gpt2/training/checkpoints.py`)."""

from __future__ import annotations

import json
import shutil
import typing

import pyarrow.parquet as pq
import pytest
import torch
from pydantic import BaseModel
from safetensors.torch import load_file

from pubmedqa_gpt2.core import paths
from pubmedqa_gpt2.core.config import Params
from pubmedqa_gpt2.training.checkpoints import STATE_FILE, reconcile_checkpoints, run_fingerprint
from pubmedqa_gpt2.training.phase import pretrain_params, pretrain_phase, train_phase
from stages import train as stage

from .committed import committed_params
from .training_helpers import curve_steps, curve_text, read_metrics, read_perf, set_params


def test_checkpoints_of_another_run_are_dropped(tmp_path):
    folder = tmp_path / "checkpoints"
    (folder / "checkpoint-4").mkdir(parents=True)
    (folder / "checkpoint-4" / STATE_FILE).write_text("{}")
    (folder / "checkpoint-6").mkdir()  # killed while saving: no trainer state
    reconcile_checkpoints(folder, "run-a")
    assert sorted(p.name for p in folder.glob("checkpoint-*")) == []  # no record: not ours

    (folder / "checkpoint-4").mkdir()
    (folder / "checkpoint-4" / STATE_FILE).write_text("{}")
    (folder / "checkpoint-6").mkdir()
    reconcile_checkpoints(folder, "run-a")
    assert sorted(p.name for p in folder.glob("checkpoint-*")) == ["checkpoint-4"]

    reconcile_checkpoints(folder, "run-b")
    assert list(folder.glob("checkpoint-*")) == []


def test_weights_only_checkpoints_are_dropped_naming_the_phase_s_setting(tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    for section in ("train", "pretrain"):
        reconcile_checkpoints(folder, "run-a")
        (folder / "checkpoint-4").mkdir()
        (folder / "checkpoint-4" / STATE_FILE).write_text("{}")
        reconcile_checkpoints(folder, "run-a", resumable=False, section=section)
        assert list(folder.glob("checkpoint-*")) == []
        said = f"weights-only checkpoints ({section}.resumable_checkpoints: false); starting afresh"
        assert said in capsys.readouterr().out


# ---- The fingerprint: every input of the phase, and nothing else ----


def another_value(annotation, value):
    """A valid value of a params field other than `value`, from the field's type."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return next(choice for choice in args if choice != value)
    if value is None:  # int | None, str | None
        return 3 if int in args else "other"
    if value == "auto" and int in args:  # int | Literal["auto"]
        return 3
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value else 0.5
    if isinstance(value, str):  # its first character changed (a hex digest stays hex)
        return ("e" if value[0] == "f" else "f") + value[1:]
    if isinstance(value, dict):
        return {**value, "n_positions": 512}
    raise AssertionError(f"no other value for {value!r}")


def every_change(section: BaseModel, prefix: str) -> list[tuple[str, dict]]:
    """(dotted key, the change as nested mappings) for every leaf setting of `section`."""
    out = []
    for name, field in type(section).model_fields.items():
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            for key, change in every_change(value, f"{prefix}.{name}"):
                out.append((key, {name: change}))
        else:
            out.append((f"{prefix}.{name}", {name: another_value(field.annotation, value)}))
    return out


BASE = committed_params()
PHASE2_READS = ("model", "train")  # and phase 1 reads model and pretrain (all but `enabled`)
CHANGES = [
    (section, key, {section: change})
    for section in Params.model_fields
    for key, change in every_change(getattr(BASE, section), section)
]


@pytest.fixture
def data(tmp_path, monkeypatch):
    """The phases' input files, relative to a stage's working folder."""
    monkeypatch.chdir(tmp_path)
    paths.PREPARED_DIR.mkdir(parents=True)
    for path in (paths.TRAIN_FILE, paths.DEV_FILE, paths.TEST_FILE, paths.ARTIFICIAL_FILE):
        path.write_bytes(path.name.encode())
    paths.PHASE1_MODEL.mkdir(parents=True)
    (paths.PHASE1_MODEL / "model.safetensors").write_bytes(b"phase 1 weights")
    return tmp_path


def phase2_fingerprint(params: Params) -> str:
    return run_fingerprint(params, train_phase(params))


def phase1_fingerprint(params: Params) -> str:
    return run_fingerprint(pretrain_params(params), pretrain_phase(params))


@pytest.mark.parametrize(("section", "key", "change"), CHANGES, ids=[c[1] for c in CHANGES])
def test_the_train_fingerprint_changes_with_each_model_and_train_setting_only(
    data, section, key, change
):
    changed = committed_params(change)
    if section == "pretrain" and key == "pretrain.enabled":
        # Phase 1 on: train starts from its model, a new input (the weights, below).
        assert phase2_fingerprint(changed) != phase2_fingerprint(BASE)
        return
    moved = phase2_fingerprint(changed) != phase2_fingerprint(BASE)
    assert moved == (section in PHASE2_READS), key


@pytest.mark.parametrize(("section", "key", "change"), CHANGES, ids=[c[1] for c in CHANGES])
def test_the_pretrain_fingerprint_changes_with_each_model_and_pretrain_setting_only(
    data, section, key, change
):
    enabled = {"pretrain": {"enabled": True}}
    base = committed_params(enabled)
    changed = committed_params(change | enabled if section != "pretrain" else change)
    if key == "pretrain.enabled":
        changed = committed_params({"pretrain": {"enabled": False}})
    moved = phase1_fingerprint(changed) != phase1_fingerprint(base)
    # `enabled` says whether phase 1 runs, not how; every other pretrain setting shapes it
    # (max_samples: how many PQA-A examples it trains on).
    reads = section == "model" or (section == "pretrain" and key != "pretrain.enabled")
    assert moved == reads, key


@pytest.mark.parametrize(
    ("path", "phases"),
    [
        (paths.TRAIN_FILE, {"train"}),
        (paths.DEV_FILE, {"train", "pretrain"}),  # the dev split picks the checkpoint kept
        (paths.ARTIFICIAL_FILE, {"pretrain"}),
        (paths.PHASE1_MODEL / "model.safetensors", {"train"}),  # train's starting weights
        (paths.TEST_FILE, set()),
    ],
)
def test_the_fingerprint_changes_with_each_file_the_phase_reads_only(data, path, phases):
    params = committed_params({"pretrain": {"enabled": True}})
    before = {"train": phase2_fingerprint(params), "pretrain": phase1_fingerprint(params)}
    path.write_bytes(b"other bytes")
    after = {"train": phase2_fingerprint(params), "pretrain": phase1_fingerprint(params)}
    assert {name for name in before if before[name] != after[name]} == phases


def test_the_fingerprint_is_the_same_for_the_same_inputs(data):
    assert phase2_fingerprint(committed_params()) == phase2_fingerprint(BASE)
    assert phase1_fingerprint(committed_params()) == phase1_fingerprint(BASE)


def test_the_same_config_overrides_in_another_order_are_the_same_run(data):
    """model.overrides {n_layer: 2, n_embd: 128} and {n_embd: 128, n_layer: 2} (as params.yaml
    may list them) build the same model: the same fingerprint, for both phases; another
    value (n_layer 3) is another run."""
    enabled = {"pretrain": {"enabled": True}}
    one = committed_params({"model": {"overrides": {"n_layer": 2, "n_embd": 128}}} | enabled)
    other = committed_params({"model": {"overrides": {"n_embd": 128, "n_layer": 2}}} | enabled)
    assert list(one.model.overrides) != list(other.model.overrides)  # the orders differ
    assert phase2_fingerprint(one) == phase2_fingerprint(other)
    assert phase1_fingerprint(one) == phase1_fingerprint(other)
    three = committed_params({"model": {"overrides": {"n_layer": 3, "n_embd": 128}}} | enabled)
    assert phase2_fingerprint(three) != phase2_fingerprint(one)


# ---- Whole runs: resume, start afresh, what checkpoints hold and when they go ----


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


def test_tokens_seen_reads_the_checkpoint_s_trainer_state(tmp_path):
    """The count the Trainer saved; 0 without a checkpoint, or when its state has no count
    (a state saved without counting input tokens)."""
    from pubmedqa_gpt2.training.checkpoints import tokens_seen

    counted, uncounted = tmp_path / "checkpoint-4", tmp_path / "checkpoint-2"
    for folder, state in [(counted, {"num_input_tokens_seen": 120}), (uncounted, {})]:
        folder.mkdir()
        (folder / STATE_FILE).write_text(json.dumps({"global_step": 2, **state}))
    assert (tokens_seen(str(counted)), tokens_seen(str(uncounted)), tokens_seen(None)) == (
        120, 0, 0,
    )  # fmt: skip


def test_reconciling_says_why_each_checkpoint_goes(tmp_path, capsys):
    """Direct calls, the section left to its default (`train`): checkpoints recorded for run
    "a" are another run's for run "b", weights-only ones for "a" itself when not resumable;
    a checkpoint without its trainer state is partial."""
    folder = tmp_path / "checkpoints"

    def checkpoints_of_run_a(*steps_with_state: int, partial: int | None = None) -> None:
        folder.mkdir()
        (folder / "run.json").write_text(json.dumps({"fingerprint": "a"}))
        for step in steps_with_state:
            (folder / f"checkpoint-{step}").mkdir()
            (folder / f"checkpoint-{step}" / STATE_FILE).write_text("{}")
        if partial is not None:
            (folder / f"checkpoint-{partial}").mkdir()

    checkpoints_of_run_a(2)
    reconcile_checkpoints(folder, "b")
    assert capsys.readouterr().out == (
        f"{folder}: checkpoints of another run (params or data changed); starting afresh\n"
    )
    assert not any(folder.glob("checkpoint-*"))
    shutil.rmtree(folder)
    checkpoints_of_run_a(2)
    reconcile_checkpoints(folder, "a", resumable=False)
    assert capsys.readouterr().out == (
        f"{folder}: weights-only checkpoints (train.resumable_checkpoints: false); "
        "starting afresh\n"
    )
    shutil.rmtree(folder)
    checkpoints_of_run_a(2, partial=4)
    reconcile_checkpoints(folder, "a")
    assert capsys.readouterr().out == f"{folder / 'checkpoint-4'}: incomplete checkpoint, removed\n"
    assert [p.name for p in folder.glob("checkpoint-*")] == ["checkpoint-2"]
