"""The GPU check's time plan (gpu_check/plan.py): each step's expected seconds from the cost
model by hand, the cap on generated answers when the pessimistic plan would not fit, the
training MFU of the loop alone, and the cards' ratings by exact name."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import gpu
from gpu_check import plan
from gpu_check.pipeline import pipeline_stages

from .committed import write_params
from .conftest import needs_pubmedqa, needs_tokenizer

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["install", "imports", *(s.name for s in pipeline_stages(ROOT / "dvc.yaml")), "bench.gpu"]
WORK = plan.Workload(
    train_tokens=1000, train_flops_per_token=1e9, epochs=2, checkpoint_bytes=2e9,
    test_examples=500, forward_flops_per_prompt=1e9, generated=500, generation_batch=64,
    max_new_tokens=128,
)  # fmt: skip


def test_each_steps_expected_seconds_by_hand():
    """At 20% of 989 TFLOP/s = 197.8 TFLOP/s: train 2 x 1000 x 1e9 / 197.8e12 = 0.0101 s of
    compute + 2 GB at 1 GB/s + 20 s fixed = 22.0 s; evaluate 2 x 500 x 1e9 / 197.8e12 = 0.005 s
    of scoring + ceil(500 / 64) = 8 batches x (128 steps x 15 ms + 0.5 s capture) = 19.36 s
    + 20 s fixed = 39.4 s. Pessimistic (13.3% MFU, 30 ms steps, 0.667 GB/s, fixed x 1.5):
    train 0.015 + 3 + 30 = 33.0 s; evaluate 0.0076 + 8 x (3.84 + 0.5) + 30 = 64.7 s."""
    expected = plan.step_seconds(STEPS, WORK, plan.ASSUMED)
    assert expected["train"] == 22.0
    assert expected["evaluate@base"] == expected["evaluate@finetuned"] == 39.4
    assert expected["install"] == 20.0 and expected["bench.gpu"] == 80.0
    pessimistic = plan.step_seconds(STEPS, WORK, plan.PESSIMISTIC)
    assert pessimistic["train"] == 33.0
    assert pessimistic["evaluate@base"] == 64.7
    assert pessimistic["report"] == 4.5
    none = plan.step_seconds(["evaluate@base"], plan.Workload(**{**vars(WORK), "generated": 0}),
                             plan.ASSUMED)  # fmt: skip
    assert none["evaluate@base"] == 20.0  # scoring only: no batch decoded


@needs_pubmedqa
@needs_tokenizer
def test_the_plan_fits_the_budget_or_caps_the_check_s_answers(pubmedqa_dir, tokenizer_dir):
    """The committed experiment at full size fits 480 s pessimistically as it is (500 answers
    in batches of 64, `auto` on an 80 GB card); a tighter budget cuts the answers, in whole
    batches, just enough, and the cut is stated."""
    full = plan.plan(STEPS, pubmedqa_dir, tokenizer_dir, 480)
    assert full["overrides"] == {} and full["fits"] and "capped" not in full
    assert full["generated_answers"] == 500 and full["generation_batch"] == 64
    assert full["total_pessimistic_s"] <= 480
    assert full["total_expected_s"] == pytest.approx(sum(full["expected_s"].values()), abs=0.2)
    assert set(full["expected_s"]) == set(STEPS)
    budget = full["total_pessimistic_s"] - 40  # 40 s short: 4.34 s a batch, so 10 batches go
    tight = plan.plan(STEPS, pubmedqa_dir, tokenizer_dir, budget)
    kept = tight["overrides"]["evaluate"]["generate_examples"]
    assert kept % 64 == 0 and kept == tight["generated_answers"]
    assert tight["fits"] and tight["total_pessimistic_s"] <= budget
    one_more = plan.plan(STEPS, pubmedqa_dir, tokenizer_dir, tight["total_pessimistic_s"] - 0.1)
    assert one_more["generated_answers"] == kept - 64  # the cap is the largest that fits
    assert f"evaluate.generate_examples={kept} for the check only" in tight["capped"]
    hopeless = plan.plan(STEPS, pubmedqa_dir, tokenizer_dir, 100)
    assert not hopeless["fits"] and "still does not fit" in hopeless["capped"]


def _trained_work(work: Path) -> float:
    """A work folder of a train stage: two examples of 100 and 50 tokens, 2 epochs, GPT-2's
    width, 2 layers; returns its FLOPs counted by hand."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pubmedqa_gpt2.core.config import load_params
    from pubmedqa_gpt2.model.loading import random_config

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
    config = random_config(load_params(work / "params.yaml").model)
    n = gpu.flop_parameters(gpu.meta_model(config))[0]
    return 2 * sum(t * (6 * n + 12 * 2 * 768 * t) for t in (100, 50))


PERF = {"device": "NVIDIA H100 80GB HBM3", "train_loop_seconds": 1.0, "runtime_seconds": 4.0}


@needs_pubmedqa
@needs_tokenizer
def test_the_full_size_workload_by_hand(pubmedqa_dir, tokenizer_dir):
    """GPT-2 Large has 774,030,080 parameters: 3 weights-only epoch checkpoints and the final
    model, 4 bytes a parameter each, are 12.38 GB (12.4 s at 1 GB/s); training 450 x 3 epochs
    of PQA-L's ~391 tokens at 20% of 989 TFLOP/s over ~4.85 GFLOP a token is about 13 s; the
    500 answers of 128 tokens go in batches of 64 (`auto` on an 80 GB card)."""
    work = plan.workload(pubmedqa_dir, tokenizer_dir)
    assert work.checkpoint_bytes == 4 * 4 * 774_030_080
    train_compute = work.epochs * work.train_tokens * work.train_flops_per_token
    assert 12 < train_compute / (0.2 * 989e12) < 14
    assert 380 < work.train_tokens / 450 < 400 and work.epochs == 3
    assert (work.generated, work.generation_batch, work.max_new_tokens) == (500, 64, 128)
    # scoring and perplexity: two forward passes over 500 prompts, well under 10 s
    assert 0 < 2 * 500 * work.forward_flops_per_prompt / (0.2 * 989e12) < 10


def test_the_train_stage_mfu_counts_its_training_set_over_the_card_peak(tmp_path):
    """On an H100 SXM (989 TFLOP/s): FLOPs over the training loop's 1 s, or over the whole
    run's 4 s with evaluations and checkpoints."""
    work, perf = tmp_path, PERF
    by_hand = _trained_work(work)
    loop = plan.training_mfu(work, perf, "train_loop_seconds")
    assert loop == pytest.approx(by_hand / 989e12)
    assert plan.training_mfu(work, perf, "runtime_seconds") == pytest.approx(loop / 4)
    assert plan.training_mfu(work, {**perf, "device": "cpu"}, "train_loop_seconds") is None


def test_cards_are_rated_by_their_exact_names():
    """NVIDIA's dense bf16 figures: the NVL parts of H100 and H200 are 835 TFLOP/s, not the
    SXM parts' 989; a name not listed gets no rating rather than a neighbour's."""
    assert gpu.peak_flops("NVIDIA H200 NVL") == 835e12
    assert gpu.peak_flops("NVIDIA H200") == 989e12
    assert gpu.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu.peak_flops("NVIDIA H100 NVL") == 835e12
    assert gpu.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu.peak_flops("NVIDIA H100") is None
    assert gpu.peak_flops("cpu") is None


def test_the_summary_s_mfu_is_the_training_loop_s(tmp_path):
    """The check's summary (check.check_figures) of the same run: MFU over the loop's 1 s, and over
    the stage's 4 s as the figure with evaluations and checkpoints."""
    import json

    from gpu_check import check

    work = tmp_path / "work"
    work.mkdir()
    by_hand = _trained_work(work)
    (work / "perf").mkdir()
    (work / "perf/train.json").write_text(json.dumps(PERF))
    summary = check.check_figures([], work, None)
    assert summary["train_mfu"] == pytest.approx(by_hand / 989e12)
    assert summary["train_mfu_with_evaluations_and_checkpoints"] == pytest.approx(
        by_hand / 989e12 / 4
    )
