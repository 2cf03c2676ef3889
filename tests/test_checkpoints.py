"""A phase's checkpoints: which are kept, and the fingerprint that says which run they belong
to (`pubmedqa_gpt2/training/checkpoints.py`)."""

from __future__ import annotations

import typing

import pytest
from pydantic import BaseModel

from pubmedqa_gpt2 import paths
from pubmedqa_gpt2.config import Params
from pubmedqa_gpt2.training.checkpoints import STATE_FILE, reconcile_checkpoints, run_fingerprint
from pubmedqa_gpt2.training.phase import phase1, phase1_params, phase2

from .committed import committed_params


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
    return run_fingerprint(params, phase2(params))


def phase1_fingerprint(params: Params) -> str:
    return run_fingerprint(phase1_params(params), phase1(params))


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
