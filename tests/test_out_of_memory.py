"""The training state's memory estimate and the out-of-memory messages, by hand."""

from __future__ import annotations

import pytest

from pubmedqa_gpt2 import out_of_memory
from pubmedqa_gpt2.core.errors import StageError

GPT2_LARGE = 774_030_080  # the published parameter count
# LoRA r = 16 on GPT-2 Large's 36 blocks (width 1280): A and B of c_attn 16 x (1280 + 3840),
# attention c_proj 16 x (1280 + 1280), c_fc 16 x (1280 + 5120), MLP c_proj 16 x (5120 + 1280)
# = 327,680 a block, 11,796,480 in all.
LORA_TRAINED = 11_796_480


def test_lora_counts_the_frozen_weights_once_and_the_trained_ones_four_times():
    total = GPT2_LARGE + LORA_TRAINED
    # 4 x 785,826,560 + 12 x 11,796,480 = 3,143,306,240 + 141,557,760 = 3,284,864,000 bytes
    assert out_of_memory.training_state_bytes(total, LORA_TRAINED) == 3_284_864_000
    assert out_of_memory.training_state_bytes(GPT2_LARGE, GPT2_LARGE) == 12_384_481_280  # 16 x
    line = out_of_memory.memory_line(total, LORA_TRAINED, gpu_capacity=8_589_934_592)
    assert line == (
        "weights, gradients and AdamW state need 3.3 GB (785,826,560 parameters, 11,796,480 "
        "trained), before activations; the GPU has 8.6 GB"
    )


def test_a_state_that_just_fits_is_accepted_and_one_byte_more_is_not():
    assert out_of_memory.memory_line(100, 10, gpu_capacity=520).endswith("; the GPU has 0.0 GB")
    with pytest.raises(StageError) as error:
        out_of_memory.memory_line(100, 10, gpu_capacity=519)
    assert str(error.value) == (
        "weights, gradients and AdamW state need 0.0 GB (100 parameters, 10 trained), before "
        "activations, more than the GPU's 0.0 GB: set train.lora.enabled: true (it trains few "
        "parameters), or use a GPU with more memory"
    )
    with pytest.raises(StageError, match=r"GPU's 0.0 GB: set pretrain.lora.enabled: true \("):
        out_of_memory.memory_line(
            100, 10, gpu_capacity=519, section="pretrain"
        )  # phase 1's setting


def test_on_a_cpu_the_machine_s_available_memory_is_said(monkeypatch):
    monkeypatch.setattr(out_of_memory, "available_cpu_bytes", lambda: 33_300_000_000)
    assert out_of_memory.memory_line(GPT2_LARGE, GPT2_LARGE, gpu_capacity=None) == (
        "weights, gradients and AdamW state need 12.4 GB (774,030,080 parameters, 774,030,080 "
        "trained), before activations; 33.3 GB available on this machine"
    )
    monkeypatch.setattr(out_of_memory, "available_cpu_bytes", lambda: None)
    assert out_of_memory.memory_line(10, 10, gpu_capacity=None).endswith(
        "(10 parameters, 10 trained), before activations"
    )


def test_available_memory_is_memavailable_in_bytes(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       32000000 kB\nMemAvailable:   1000 kB\nCached: 5 kB\n")
    assert out_of_memory.available_cpu_bytes(meminfo) == 1_024_000
    meminfo.write_text("MemTotal:       32000000 kB\n")
    assert out_of_memory.available_cpu_bytes(meminfo) is None
    meminfo.write_text("MemAvailable: lots\n")
    assert out_of_memory.available_cpu_bytes(meminfo) is None
    meminfo.write_text("MemAvailable:\n")
    assert out_of_memory.available_cpu_bytes(meminfo) is None
    assert out_of_memory.available_cpu_bytes(tmp_path / "missing") is None


def test_out_of_memory_messages_say_what_was_asked_and_free():
    error = RuntimeError(
        "CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of "
        "15.77 GiB of which 3.12 MiB is free. Process 1 has 15.76 GiB memory in use."
    )
    assert out_of_memory.out_of_memory_message(error, "do less") == (
        "CUDA out of memory, tried to allocate 20.00 MiB, 3.12 MiB free of 15.77 GiB; "
        "to fit: do less"
    )
    assert out_of_memory.out_of_memory_message(RuntimeError("CUDA error"), "x") == (
        "CUDA out of memory; to fit: x"
    )
    assert out_of_memory.killed_message("do less") == (
        "killed by signal 9: probably out of memory (the kernel's out-of-memory killer sends "
        "it); to fit: do less"
    )
    assert out_of_memory.train_advice() == (
        "lower train.batch_size and raise train.gradient_accumulation_steps by the same factor, "
        "set train.gradient_checkpointing: true, set train.lora.enabled: true, "
        "or lower prepare.max_length"
    )
    assert out_of_memory.train_advice("pretrain") == (  # phase 1's settings, never train's
        "lower pretrain.batch_size and raise pretrain.gradient_accumulation_steps by the same "
        "factor, set pretrain.gradient_checkpointing: true, set pretrain.lora.enabled: true, "
        "or lower prepare.max_length"
    )
    assert out_of_memory.EVALUATE_ADVICE == (
        "lower evaluate.batch_size and evaluate.generation_batch_size, or prepare.max_length"
    )


def test_gigabytes_are_decimal_rounded_to_one_place():
    assert out_of_memory.gb(1_050_000_000) == "1.1 GB"  # 1.05 x 10^9 bytes
    assert out_of_memory.gb(12_384_481_280) == "12.4 GB"


def test_a_gpu_too_small_for_the_training_state_is_refused_with_advice():
    from pubmedqa_gpt2.out_of_memory import memory_line

    gpt2_large = 774_030_080  # full fine-tuning: 16 x 774M = 12.4 GB
    with pytest.raises(StageError, match=r"more than the GPU's 8.6 GB: set train.lora.enabled"):
        memory_line(gpt2_large, gpt2_large, gpu_capacity=8_589_934_592)
    line = memory_line(gpt2_large, gpt2_large, gpu_capacity=85_899_345_920)
    assert line.startswith("weights, gradients and AdamW state need 12.4 GB")
    assert line.endswith("; the GPU has 85.9 GB")
