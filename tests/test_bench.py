"""The benchmarks run end to end at tiny sizes and print every figure (no timing is asserted)."""

from __future__ import annotations

import json

import pytest
import torch

from bench import cpu, gpu
from stages.config import ModelParams
from stages.modeling import build_model
from stages.prompt import Encoded

from .conftest import needs_pubmedqa, needs_tokenizer

TINY = ModelParams(name="gpt2", init="random", overrides={"n_layer": 2, "n_embd": 32, "n_head": 2})


@pytest.mark.parametrize(
    ("device", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA GeForce RTX 4090", None),
        ("cpu", None),
    ],
)
def test_peak_flops_is_read_from_the_device_name(device, peak):
    assert gpu.peak_flops(device) == peak


def test_training_flops_are_6n_plus_attention_for_full_fine_tuning():
    model = build_model(TINY)
    config = model.config
    n = sum(p.numel() for p in model.parameters()) - config.n_positions * config.n_embd
    example = Encoded(list(range(30)), list(range(10)), shortened=False)
    expected = 40 * (6 * n + 12 * config.n_layer * config.n_embd * 40)
    assert gpu.training_flops([example], model) == expected


def test_lora_flops_leave_out_the_frozen_weight_gradients():
    from stages.config import LoraParams, TrainParams
    from stages.train import apply_lora

    model = apply_lora(build_model(TINY), TrainParams(lora=LoraParams(enabled=True)))
    n_all, n_trained = gpu.flop_parameters(model)
    assert 0 < n_trained < n_all
    example = Encoded([1], [2], shortened=False)
    attention = 12 * model.config.n_layer * model.config.n_embd * 2
    assert gpu.training_flops([example], model) == 2 * (4 * n_all + 2 * n_trained + attention)


def test_clipped_keeps_the_first_tokens_and_a_completion():
    example = Encoded([1, 2, 3, 4], [5, 6], shortened=False)
    assert gpu.clipped(example, 6) is example
    cut = gpu.clipped(example, 3)
    assert (cut.prompt_ids, cut.completion_ids, cut.shortened) == ([1, 2], [3], True)


def test_synthetic_examples_have_the_asked_shape():
    examples = gpu.synthetic_examples(3, 10, 4, vocab=50, seed=0)
    assert [(len(e.prompt_ids), len(e.completion_ids)) for e in examples] == [(6, 4)] * 3
    assert all(0 <= t < 50 for e in examples for t in e.prompt_ids + e.completion_ids)


def test_gpu_script_runs_tiny_on_cpu_and_writes_every_figure(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    result = gpu.main(["--tiny", "--steps", "1", "--fused-adamw", "--out", str(out)])
    printed = capsys.readouterr().out
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    runs = result["training"]
    assert [(r["mode"], r["lengths"]) for r in runs] == [
        (mode, lengths) for mode in gpu.MODES for lengths in ("pubmedqa", "64")
    ]
    for run in runs:
        assert run["tokens_per_s"] > 0 and 0 < run["useful_share"] <= 1
        assert run["model_flops_per_s"] > 0
        if not torch.cuda.is_available():
            assert run["mfu"] is None and run["peak_memory_gib"] is None
    assert set(result["evaluation_examples_per_s"]) == {"scoring", "perplexity", "generation"}
    assert result["pipeline_estimate"]["total_s"] > 0
    for field in (
        "useful tokens/s",
        "MFU",
        "peak memory",
        "attention implementation",
        "examples/s",
        "Default dvc repro",
    ):
        assert field in printed


@needs_pubmedqa
@needs_tokenizer
def test_cpu_training_benchmark_prints_the_ratio(capsys):
    result = cpu.main(["--quick", "--only", "training"])["training"]
    printed = capsys.readouterr().out
    assert result["ratio"] > 0 and result["project_tokens_per_s"] > 0
    assert "notebook: pad to 1024" in printed and "ratio project/notebook" in printed


@needs_pubmedqa
@needs_tokenizer
def test_cpu_prepare_benchmark_runs_the_stage_on_every_record(capsys):
    result = cpu.main(["--quick", "--only", "prepare"])["prepare"]
    printed = capsys.readouterr().out
    assert [r["artificial"] for r in result["runs"]] == list(cpu.QUICK.prepare_records)
    for run in result["runs"]:
        assert run["examples"] == run["records"] == 1000 + run["artificial"]
        # The stage's own peak: far below the test process that launched it.
        assert 0 < run["peak_bytes"] < 2 * 2**30
    assert "records/s" in printed and "peak RSS" in printed and "growth" in printed


@needs_pubmedqa
@needs_tokenizer
def test_cpu_evaluation_benchmark_compares_batched_and_single(capsys):
    result = cpu.main(["--quick", "--only", "evaluation"])["evaluation"]
    printed = capsys.readouterr().out
    for what in ("scoring", "generation"):
        assert result[f"{what}_batched_per_s"] > 0 and result[f"{what}_single_per_s"] > 0
        assert f"{what}: batch 16" in printed
    assert "same decisions" in printed


@needs_pubmedqa
@needs_tokenizer
def test_cpu_pipeline_benchmark_times_a_noop_repro_and_imports(capsys):
    result = cpu.main(["--quick", "--only", "pipeline"])["pipeline"]
    printed = capsys.readouterr().out
    assert result["noop_skipped"]
    assert "dvc status" in printed and "nothing changed" in printed
    imports = result["imports"]
    assert {"stages.download", "stages.fetch", "stages.prepare", "stages.train"} <= set(imports)
    # The data stages never need torch or transformers at import.
    for module in ("stages.download", "stages.fetch", "stages.prepare"):
        assert not imports[module]["torch"] and not imports[module]["transformers"]
