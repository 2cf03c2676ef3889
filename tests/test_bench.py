"""The benchmarks run end to end at tiny sizes and print every figure (no timing is asserted)."""

from __future__ import annotations

import json

import pytest
import torch

from bench import cpu, gpu
from pubmedqa_gpt2.model.loading import build_model
from pubmedqa_gpt2.prompt import Encoded

from .committed import committed_params
from .conftest import needs_pubmedqa, needs_tokenizer

TINY = committed_params(
    {
        "model": {
            "name": "gpt2",
            "init": "random",
            "overrides": {"n_layer": 2, "n_embd": 32, "n_head": 2},
        }
    }
).model


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


def test_gpt2_large_has_its_published_parameter_count():
    """774,030,080 parameters (the published figure); all but the 1024 x 1280 position
    embeddings take part in matmuls. Built on the meta device: no memory, no weights."""
    from transformers import AutoModelForCausalLM

    from pubmedqa_gpt2.model.loading import random_config

    config = random_config(
        committed_params({"model": {"name": "gpt2-large", "init": "random"}}).model
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == 774_030_080
    assert gpu.flop_parameters(model) == (774_030_080 - 1024 * 1280,) * 2


# TINY's parameters by hand (vocabulary 50,257, width 32, 2 layers, 4x MLP):
# token embeddings 50,257 x 32 = 1,608,224; per layer: 2 layer norms 2 x 64, c_attn 32 x 96 + 96,
# attention c_proj 32 x 32 + 32, c_fc 32 x 128 + 128, MLP c_proj 128 x 32 + 32 = 12,704;
# final layer norm 64. Without the position embeddings: 1,608,224 + 2 x 12,704 + 64 = 1,633,696.
TINY_MATMUL_PARAMETERS = 1_633_696


def test_training_flops_are_6n_plus_attention_for_full_fine_tuning():
    model = build_model(TINY)
    example = Encoded(list(range(30)), list(range(10)), shortened=False)
    # 40 tokens x (6 x 1,633,696 + 12 x 2 layers x 32 wide x 40 long) = 40 x 9,832,896
    assert gpu.flop_parameters(model) == (TINY_MATMUL_PARAMETERS, TINY_MATMUL_PARAMETERS)
    assert gpu.training_flops([example], model) == 393_315_840


def test_lora_flops_leave_out_the_frozen_weight_gradients():
    from pubmedqa_gpt2.training.lora import apply_lora

    train = committed_params({"train": {"lora": {"enabled": True}}}).train
    model = apply_lora(build_model(TINY), train)
    # r = 16 on c_attn (32 -> 96), c_proj (32 -> 32), c_fc (32 -> 128), MLP c_proj (128 -> 32):
    # 16 x (128 + 64 + 160 + 160) = 8,192 a layer, 16,384 in all.
    trained = 16_384
    assert gpu.flop_parameters(model) == (TINY_MATMUL_PARAMETERS + trained, trained)
    example = Encoded([1], [2], shortened=False)
    # 2 tokens x (4 x 1,650,080 + 2 x 16,384 + 12 x 2 x 32 x 2) = 2 x 6,634,624
    assert gpu.training_flops([example], model) == 13_269_248


def test_checkpoint_bytes_of_gpt2_large():
    """fp32 weights: 4 bytes a parameter (3.10 GB); with AdamW's two moments, 12 (9.29 GB)."""
    n = 774_030_080
    assert gpu.checkpoint_bytes(n, n, resumable=False) == 3_096_120_320
    assert gpu.checkpoint_bytes(n, n, resumable=True) == 9_288_360_960
    # 3 epochs of weights-only checkpoints plus the final model at 1 GB/s: 12.4 s.
    assert gpu.checkpoint_writes_s(n, n, 3, False, 1e9) == pytest.approx(12.38448128)


def test_clipped_keeps_the_first_tokens_and_a_completion():
    example = Encoded([1, 2, 3, 4], [5, 6], shortened=False)
    assert gpu.clipped(example, 6) is example
    cut = gpu.clipped(example, 3)
    assert (cut.prompt_ids, cut.completion_ids, cut.shortened) == ([1, 2], [3], True)


def test_synthetic_examples_have_the_asked_shape():
    examples = gpu.synthetic_examples(3, 10, 4, vocab=50, seed=0)
    assert [(len(e.prompt_ids), len(e.completion_ids)) for e in examples] == [(6, 4)] * 3
    assert all(0 <= t < 50 for e in examples for t in e.prompt_ids + e.completion_ids)


@pytest.mark.e2e
def test_gpu_script_runs_tiny_on_cpu_and_writes_every_figure(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    gpu.main(["--tiny", "--steps", "1", "--optim", "adamw_torch", "--out", str(out)])
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    runs = result["training"]
    assert [(r["mode"], r["lengths"]) for r in runs] == [
        (mode, lengths) for mode in gpu.MODES for lengths in ("pubmedqa", "64")
    ]
    # --tiny: one timed step of batch 8, every example 64 tokens long (PubMedQA's are all
    # longer and are clipped to 64), so each timed epoch learns 8 x 64 = 512 real tokens.
    # Full fine-tuning of the tiny model (n_layer 2, n_embd 64; 3,316,544 matmul parameters
    # by the count above): 512 x (6 x 3,316,544 + 12 x 2 x 64 x 64) = 10,238,754,816 FLOPs.
    # Without the data the "pubmedqa" run takes the tiny fixed fallback, 48 tokens an
    # example: 8 x 48 = 384 tokens, 384 x (6 x 3,316,544 + 12 x 2 x 64 x 48) = 7,669,628,928.
    real_data = gpu.PUBMEDQA_DIR is not None and gpu.TOKENIZER_DIR is not None
    for run in runs:
        tokens, flops = (512, 10_238_754_816)
        if run["lengths"] == "pubmedqa" and not real_data:
            tokens, flops = (384, 7_669_628_928)
        assert run["tokens_per_s"] * run["seconds"] == pytest.approx(tokens)
        if run["lengths"] == "64":
            assert run["useful_share"] == 1.0  # equal lengths: no padding
        else:
            assert 0 < run["useful_share"] <= 1
        if run["mode"] != "lora":
            assert run["model_flops_per_s"] * run["seconds"] == pytest.approx(flops)
        if not torch.cuda.is_available():
            assert run["mfu"] is None and run["peak_memory_gib"] is None
    assert set(result["evaluation_examples_per_s"]) == {"scoring", "perplexity", "generation"}
    estimate = result["pipeline_estimate"]
    assert estimate["disk_write_bytes_per_s"] > 0 and estimate["checkpoint_write_s"] > 0
    assert estimate["total_s"] == pytest.approx(
        estimate["train_s"] + estimate["evaluate_s"] + estimate["checkpoint_write_s"]
    )
    for field in (
        "useful tokens/s",
        "MFU",
        "peak memory",
        "attention implementation",
        "examples/s",
        "Default dvc repro",
    ):
        assert field in printed


@pytest.mark.e2e
@needs_pubmedqa
@needs_tokenizer
def test_cpu_training_benchmark_prints_the_ratio(capsys):
    result = cpu.main(["--quick", "--only", "training"])["training"]
    printed = capsys.readouterr().out
    assert result["ratio"] > 0 and result["project_tokens_per_s"] > 0
    assert "notebook: pad to 1024" in printed and "ratio project/notebook" in printed


@pytest.mark.e2e
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


@pytest.mark.e2e
@needs_pubmedqa
@needs_tokenizer
def test_cpu_pipeline_benchmark_times_a_noop_repro_and_imports(capsys):
    result = cpu.main(["--quick", "--only", "pipeline"])["pipeline"]
    printed = capsys.readouterr().out
    assert result["noop_skipped"]
    assert "dvc status" in printed and "nothing changed" in printed
    imports = result["imports"]
    assert {"stages.download", "stages.ingest", "stages.prepare", "stages.train"} <= set(imports)
    # The data stages never need torch or transformers at import.
    for module in ("stages.download", "stages.ingest", "stages.prepare"):
        assert not imports[module]["torch"] and not imports[module]["transformers"]


def test_the_decode_benchmark_counts_fewer_host_kernels_with_a_captured_step():
    """bench.decode --quick (4 layers): per decode step, the dynamic cache dispatches every
    kernel of the model from the host; what the captured step leaves the host (the loop's own
    ops and the copies into the graph) is a fraction of it."""
    from bench import decode

    figures = decode.main(["--quick", "--batch", "4"])
    dynamic, static, replay = (figures[m] for m in ("dynamic", "static", "replay_stand_in"))
    assert replay["kernels"] < dynamic["kernels"] / 3
    assert replay["kernels"] < static["kernels"] / 3
    assert all(f["host_ms"] > 0 and f["aten_ops"] >= f["kernels"] for f in figures.values())
    assert "replay_stand_in" not in decode.DECODERS
