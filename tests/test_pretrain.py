"""Phase 1 (stage `pretrain`): the base model trained on PQA-A, selected on PQA-L's dev fold,
and the model phase 2 (`train`) starts from when `pretrain.enabled`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pubmedqa_gpt2 import paths
from pubmedqa_gpt2.config import load_params
from pubmedqa_gpt2.data.prepare import write_split
from pubmedqa_gpt2.errors import StageError, run_stage
from pubmedqa_gpt2.model.loading import build_model
from pubmedqa_gpt2.training.phase import PHASE1, phase2
from stages import pretrain, train

from . import test_train
from .test_train import records, set_params

tiny = test_train.tiny  # the fixture: a 2-layer random GPT-2 and quick train params


@pytest.fixture
def phase_workdir(tmp_path, monkeypatch, tokenizer):
    """Prepared splits: 8 PQA-L training and 6 dev examples, 20 PQA-A examples."""
    (tmp_path / paths.TRAIN_FILE.parent).mkdir(parents=True)
    write_split(tmp_path / paths.TRAIN_FILE, records(8), tokenizer, max_length=128)
    write_split(tmp_path / paths.DEV_FILE, records(6, offset=100), tokenizer, max_length=128)
    artificial = [r for r in records(20, offset=500)]
    write_split(tmp_path / PHASE1.train_file, artificial, tokenizer, max_length=128)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def phase_params(tiny, enabled: bool, **train) -> dict:
    params = tiny(**train)
    params["data"] = {"artificial": enabled}
    params["pretrain"] = {
        "enabled": enabled,
        "epochs": 2,
        "learning_rate": 1e-3,
        "batch_size": 4,
        "max_samples": 12,
    }
    return params


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_phase_2_starts_from_phase_1_weights_not_the_base_model(phase_workdir, tiny):
    """Phase 2 at a learning rate of 1e-12 barely moves: its saved weights are phase 1's to
    within 1e-6, and far from the base model's."""
    set_params(phase_workdir, phase_params(tiny, True, learning_rate=1e-12, epochs=1))
    pretrain.main()
    phase1 = weights(PHASE1.output)
    base = build_model(load_params().model).state_dict()
    moved = [k for k in phase1 if not torch.allclose(phase1[k], base[k], atol=1e-3)]
    assert len(moved) > len(phase1) // 2  # phase 1 trained the base model

    train.main()
    finetuned = weights(paths.FINETUNED)
    assert finetuned.keys() == phase1.keys()
    for key in phase1:
        assert torch.allclose(finetuned[key], phase1[key], atol=1e-6), key
    card = (paths.FINETUNED / "README.md").read_text()
    assert "started from `models/phase1`" in card


def test_phase_1_trains_on_the_first_n_pqa_a_examples_and_reports_pqa_l_dev(phase_workdir, tiny):
    set_params(phase_workdir, phase_params(tiny, True))
    pretrain.main()
    metrics = json.loads(PHASE1.metrics_file.read_text())
    assert metrics["train_examples"] == 12  # pretrain.max_samples of the 20
    assert metrics["dev_examples"] == 6  # PQA-L's dev fold
    assert metrics["steps"] == 2 * 3  # 2 epochs of 12 examples in batches of 4
    assert {"dev_loss", "dev_accuracy", "best_step"} <= metrics.keys()
    curve = phase_workdir / "dvclive-pretrain/plots/metrics/eval/loss.tsv"
    assert len(curve.read_text().splitlines()) == 1 + 2  # header, then one row an epoch
    assert not PHASE1.checkpoints.exists()  # deleted after success, as train's
    saved = json.loads((PHASE1.output / "params.json").read_text())
    assert saved["train"]["learning_rate"] == 1e-3 and saved["train"]["epochs"] == 2
    assert "PQA-A, phase 1" in (PHASE1.output / "README.md").read_text()
    assert not paths.FINETUNED.exists() and not paths.TRAIN_METRICS.exists()


def test_phase_1_off_writes_outputs_that_say_so_and_train_starts_from_the_base(phase_workdir, tiny):
    set_params(phase_workdir, phase_params(tiny, False))
    pretrain.main()
    assert json.loads(PHASE1.metrics_file.read_text()) == {"enabled": False}
    assert "off" in (PHASE1.output / "README.md").read_text()
    assert phase2(load_params()).start_from is None
    assert not (PHASE1.output / "model.safetensors").exists()


def test_phase_1_needs_pqa_a(phase_workdir, tiny, capsys):
    params = phase_params(tiny, True)
    params["data"] = {"artificial": False}
    set_params(phase_workdir, params)
    with pytest.raises(SystemExit) as exit_info:
        run_stage(pretrain.main)
    assert exit_info.value.code == 1
    assert "set data.artificial: true" in capsys.readouterr().err
    assert not PHASE1.output.exists()


def test_phase_2_without_a_phase_1_model_says_what_to_run(phase_workdir, tiny):
    set_params(phase_workdir, phase_params(tiny, True))
    with pytest.raises(StageError, match="run the pretrain stage first"):
        train.main()
