"""The GPU check's pipeline (gpu_check/pipeline.py): dvc.yaml's stages in their order, run as
its commands, in a scratch copy with the check's params."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from gpu_check import pipeline
from pubmedqa_gpt2.core.config import load_params

from .committed import committed_params
from .conftest import needs_pubmedqa, needs_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DVC_ORDER = [
    "validate",
    "download",
    "ingest",
    "prepare",
    "pretrain",
    "train",
    "evaluate@base",
    "evaluate@finetuned",
    "compare",
    "report",
]


def test_the_check_runs_every_stage_of_dvc_yaml_in_its_order():
    stages = pipeline.pipeline_stages(ROOT / "dvc.yaml")
    assert [s.name for s in stages] == DVC_ORDER
    commands = {s.name: s.cmd for s in stages}
    assert commands["evaluate@finetuned"] == "python -m stages.evaluate finetuned"
    assert "models/finetuned" in next(s for s in stages if s.name == "evaluate@finetuned").deps
    assert pipeline.python_argv(commands["train"]) == [sys.executable, "-m", "stages.train"]


def test_a_dvc_yaml_whose_order_is_not_a_run_order_is_refused(tmp_path):
    stages = {
        "stages": {
            "train": {"cmd": "python -m stages.train", "deps": ["data/prepared"]},
            "prepare": {"cmd": "python -m stages.prepare", "outs": ["data/prepared"]},
        }
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    with pytest.raises(ValueError, match="train depends on data/prepared, an output of prepare"):
        pipeline.pipeline_stages(tmp_path / "dvc.yaml")


@needs_pubmedqa
@needs_tokenizer
def test_the_full_size_check_runs_the_committed_params_but_random_init_and_offline_tokenizer(
    tmp_path, pubmedqa_dir, tokenizer_dir
):
    pipeline.make_workdir(tmp_path / "work", pubmedqa_dir, tokenizer_dir, tiny=False)
    committed = load_params(ROOT / "params.yaml").model_dump()
    used = load_params(tmp_path / "work" / "params.yaml").model_dump()
    assert used["model"].pop("init") == "random"
    assert used["model"].pop("tokenizer") == str(tokenizer_dir)
    assert committed["model"]["name"] == used["model"]["name"] == "gpt2-large"
    for key in ("init", "tokenizer"):
        committed["model"].pop(key)
    assert used == committed
    copied = tmp_path / "work/data/external/ori_pqal.json"
    assert copied.read_bytes() == (pubmedqa_dir / "ori_pqal.json").read_bytes()


def test_random_weights_are_drawn_on_the_device_that_will_run_them(monkeypatch):
    """On a GPU machine the base model is drawn there (12 s of one CPU core for GPT-2 Large);
    here the device is replaced by `meta`, which shows that build_model draws on it."""
    import torch

    from pubmedqa_gpt2.model import loading as modeling

    monkeypatch.setattr(modeling, "init_device", lambda: torch.device("meta"))
    shape = {"n_layer": 1, "n_embd": 8, "n_head": 2}
    params = committed_params({"model": {"name": "gpt2", "init": "random", "overrides": shape}})
    params = params.model
    model = modeling.build_model(params)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    monkeypatch.undo()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert modeling.init_device() == torch.device("cuda", 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert modeling.init_device() == torch.device("cpu")
