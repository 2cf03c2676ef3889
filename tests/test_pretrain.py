"""Phase 1 (stage `pretrain`): the base model trained on PQA-A, selected on PQA-L's dev fold,
and the model phase 2 (`train`) starts from when `pretrain.enabled`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pubmedqa_gpt2.core import paths
from pubmedqa_gpt2.core.config import load_params
from pubmedqa_gpt2.core.errors import StageError, run_stage
from pubmedqa_gpt2.data.prepare import write_split
from pubmedqa_gpt2.model.loading import build_model
from pubmedqa_gpt2.training.phase import PRETRAIN_PHASE, train_phase
from stages import pretrain, train

from .training_helpers import records, set_params


@pytest.fixture
def phase_workdir(tmp_path, monkeypatch, tokenizer):
    """Prepared splits: 8 PQA-L training and 6 dev examples, 20 PQA-A examples."""
    (tmp_path / paths.TRAIN_FILE.parent).mkdir(parents=True)
    write_split(tmp_path / paths.TRAIN_FILE, records(8), tokenizer, max_length=128)
    write_split(tmp_path / paths.DEV_FILE, records(6, offset=100), tokenizer, max_length=128)
    artificial = [r for r in records(20, offset=500)]
    write_split(tmp_path / PRETRAIN_PHASE.train_file, artificial, tokenizer, max_length=128)
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
    phase1 = weights(PRETRAIN_PHASE.output)
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
    metrics = json.loads(PRETRAIN_PHASE.metrics_file.read_text())
    assert metrics["train_examples"] == 12  # pretrain.max_samples of the 20
    assert metrics["dev_examples"] == 6  # PQA-L's dev fold
    assert metrics["steps"] == 2 * 3  # 2 epochs of 12 examples in batches of 4
    assert {"dev_loss", "dev_accuracy", "best_step"} <= metrics.keys()
    curve = phase_workdir / "dvclive-pretrain/plots/metrics/eval/loss.tsv"
    assert len(curve.read_text().splitlines()) == 1 + 2  # header, then one row an epoch
    assert not PRETRAIN_PHASE.checkpoints.exists()  # deleted after success, as train's
    saved = json.loads((PRETRAIN_PHASE.output / "params.json").read_text())
    assert saved["train"]["learning_rate"] == 1e-3 and saved["train"]["epochs"] == 2
    assert "PQA-A, phase 1" in (PRETRAIN_PHASE.output / "README.md").read_text()
    assert not paths.FINETUNED.exists() and not paths.TRAIN_METRICS.exists()


def test_phase_1_off_writes_outputs_that_say_so_and_train_starts_from_the_base(phase_workdir, tiny):
    set_params(phase_workdir, phase_params(tiny, False))
    pretrain.main()
    assert json.loads(PRETRAIN_PHASE.metrics_file.read_text()) == {"enabled": False}
    assert "off" in (PRETRAIN_PHASE.output / "README.md").read_text()
    assert train_phase(load_params()).start_from is None
    assert not (PRETRAIN_PHASE.output / "model.safetensors").exists()


def test_phase_1_needs_pqa_a(phase_workdir, tiny, capsys):
    params = phase_params(tiny, True)
    params["data"] = {"artificial": False}
    set_params(phase_workdir, params)
    with pytest.raises(SystemExit) as exit_info:
        run_stage(pretrain.main)
    assert exit_info.value.code == 1
    assert "set data.artificial: true" in capsys.readouterr().err
    assert not PRETRAIN_PHASE.output.exists()


def test_phase_1_s_messages_name_its_own_settings(phase_workdir, tiny, capsys):
    """What phase 1 tells the user to change is in `pretrain`, never `train` (whose settings
    phase 1 does not read): after a killed run, and for a precision this machine lacks."""
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid whose process has ended: the last run "was killed"
    PRETRAIN_PHASE.checkpoints.mkdir(parents=True)
    PRETRAIN_PHASE.running_file.write_text(json.dumps({"pid": gone.pid}))
    set_params(phase_workdir, phase_params(tiny, True))
    pretrain.main()
    out = capsys.readouterr().out
    assert f"the last training run here (pid {gone.pid}) did not finish" in out
    assert "to fit: lower pretrain.batch_size and raise pretrain.gradient_accumulation_" in out

    params = phase_params(tiny, True)
    params["pretrain"]["precision"] = "fp16"  # needs CUDA; train.precision stays fp32
    set_params(phase_workdir, params)
    with pytest.raises(SystemExit) as exit_info:
        run_stage(pretrain.main)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "error: pretrain.precision: fp16 needs a CUDA GPU" in err, err


def test_the_launcher_names_the_settings_of_the_phase_it_launches(monkeypatch):
    from pubmedqa_gpt2.training import launch

    monkeypatch.setattr(launch.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(launch.torch.cuda, "device_count", lambda: 1)
    with pytest.raises(StageError, match=r"^pretrain.num_processes: 2 processes but 1 GPU\(s\)"):
        launch.launch(2, "stages.pretrain", "pretrain")
    monkeypatch.setattr(launch.torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(launch.subprocess, "call", lambda command: -9)  # the OOM killer
    with pytest.raises(StageError, match="to fit: lower pretrain.batch_size and raise pretrain"):
        launch.launch(2, "stages.pretrain", "pretrain")
    with pytest.raises(StageError, match="to fit: lower train.batch_size and raise train"):
        launch.launch(2, "stages.train")


def test_phase_2_without_a_phase_1_model_says_what_to_run(phase_workdir, tiny):
    set_params(phase_workdir, phase_params(tiny, True))
    with pytest.raises(StageError, match="run the pretrain stage first"):
        train.main()


# Phase 1's own settings, every one unlike train's (and unlike params.yaml's) so that a setting
# read from the wrong section shows.
PHASE1_SETTINGS = {
    "epochs": 4,
    "learning_rate": 3e-4,
    "lr_scheduler": "cosine",
    "warmup_ratio": 0.2,
    "weight_decay": 0.01,
    "batch_size": 2,
    "gradient_accumulation_steps": 3,
    "max_grad_norm": 0.5,
    "seed": 7,
    "precision": "fp32",
    "gradient_checkpointing": True,
    "loss_on": "all",
    "best_metric": "dev_accuracy",
    "eval_batch_size": 5,
    "num_processes": 2,
    "save_steps": 9,
    "keep_checkpoints": True,
    "resumable_checkpoints": True,
    "logging_steps": 3,
    "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0},
}


def test_phase_1_trains_with_its_own_section_and_never_train_s():
    from pubmedqa_gpt2.training.phase import pretrain_params
    from tests.committed import committed_params

    pretrain_section = {"enabled": True, "max_samples": 12, **PHASE1_SETTINGS}
    params = committed_params({"data": {"artificial": True}, "pretrain": pretrain_section})
    other_train = committed_params(
        {"data": {"artificial": True}, "pretrain": pretrain_section,
         "train": {"epochs": 9, "learning_rate": 0.1, "num_processes": 3, "seed": 1}}
    )  # fmt: skip
    for p in (params, other_train):
        phase1 = pretrain_params(p)
        assert phase1.train.model_dump() == PHASE1_SETTINGS
        assert phase1.model == p.model and phase1.pretrain == p.pretrain
    assert params.train.model_dump() != PHASE1_SETTINGS  # the params themselves unchanged


def test_phase_1_runs_in_its_own_number_of_processes(tmp_path, monkeypatch):
    """pretrain.num_processes 2, train.num_processes 3: phase 1 claims 2 GPUs and launches
    2 processes of the pretrain stage."""
    from pubmedqa_gpt2.training import recipe

    set_params(
        tmp_path,
        {"data": {"artificial": True}, "train": {"num_processes": 3},
         "pretrain": {"enabled": True, "num_processes": 2}},
    )  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    calls = []
    monkeypatch.setattr(
        recipe, "claim_gpus", lambda n, setting: calls.append(("claim", n, setting))
    )
    monkeypatch.setattr(recipe, "launch", lambda *args: calls.append(("launch", *args)))
    monkeypatch.setattr(recipe, "train", lambda *a: calls.append(("train",)))
    pretrain.main()
    # Its messages (too few GPUs, a launcher of another size) name the setting to change.
    assert calls == [
        ("claim", 2, "pretrain.num_processes"),
        ("launch", 2, "stages.pretrain", "pretrain"),
    ]
    # Launched (WORLD_SIZE set by torch.distributed.run): each process trains, no claim.
    calls.clear()
    monkeypatch.setenv("WORLD_SIZE", "2")
    pretrain.main()
    assert calls == [("train",)]
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(
        StageError, match="^pretrain.num_processes: is 2 but the launcher started 3 processes"
    ):
        pretrain.main()


def test_phase_2_resumes_only_from_checkpoints_of_the_same_phase_1_model(tmp_path, monkeypatch):
    """The resume fingerprint covers the model phase 2 starts from: when phase 1 ran again
    (another model), phase 2's old checkpoints are another run's and are dropped."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from pubmedqa_gpt2.training import recipe
    from pubmedqa_gpt2.training.checkpoints import STATE_FILE
    from tests.committed import committed_params

    monkeypatch.chdir(tmp_path)
    params = committed_params(
        {"data": {"artificial": True}, "pretrain": {"enabled": True},
         "train": {"resumable_checkpoints": True}}
    )  # fmt: skip
    phase = train_phase(params)
    assert phase.start_from == PRETRAIN_PHASE.output
    for path in (phase.train_file, paths.DEV_FILE, PRETRAIN_PHASE.output / "model.safetensors"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"first")
    args = SimpleNamespace(process_index=0, main_process_first=lambda **kw: nullcontext())
    checkpoint = phase.checkpoints / "checkpoint-2"

    def resume_after_a_checkpoint(params=params):
        checkpoint.mkdir(parents=True, exist_ok=True)
        (checkpoint / STATE_FILE).write_text("{}")
        return recipe.checkpoint_to_resume(params, train_phase(params), args)

    assert recipe.checkpoint_to_resume(params, phase, args) is None  # records this run
    assert resume_after_a_checkpoint() == str(checkpoint)  # the same run: resumed
    (PRETRAIN_PHASE.output / "model.safetensors").write_bytes(b"phase 1 ran again")
    assert recipe.checkpoint_to_resume(params, phase, args) is None
    assert not checkpoint.exists()
    # Phase 1 off: phase 2 starts from the base model, and no phase-1 file counts.
    off = committed_params({"train": {"resumable_checkpoints": True}})
    assert train_phase(off).start_from is None
    assert recipe.checkpoint_to_resume(off, train_phase(off), args) is None
    assert resume_after_a_checkpoint(off) == str(checkpoint)
    (PRETRAIN_PHASE.output / "model.safetensors").write_bytes(b"changed, unused")
    assert recipe.checkpoint_to_resume(off, train_phase(off), args) == str(checkpoint)
