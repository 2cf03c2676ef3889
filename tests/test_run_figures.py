"""A run's devices and memory (`pubmedqa_gpt2/training/run_figures.py`): the figures of
perf/*.json, on a CPU as measured here and on a GPU from torch.cuda's own counters (stood in
for: these machines have none)."""

from __future__ import annotations

import resource
import types

import pytest
import torch

from pubmedqa_gpt2 import out_of_memory
from pubmedqa_gpt2.training import run_figures


def test_on_a_cpu_the_figure_is_the_peak_resident_memory():
    figures = run_figures.device_figures(cuda=False)
    assert set(figures) == {"device", "peak_rss_bytes"} and figures["device"] == "cpu"
    # Linux's ru_maxrss is in KiB; the peak only grows
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert (
        before
        <= figures["peak_rss_bytes"]
        <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )


@pytest.fixture
def a_gpu(monkeypatch):
    """torch.cuda answering as an 80 GB H100 with 60 GB free would."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (60 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 11 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda: 13 * 2**30)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        lambda i: types.SimpleNamespace(total_memory=80 * 2**30),
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")


def test_on_a_gpu_each_figure_is_the_counter_it_names(a_gpu):
    assert run_figures.device_figures(cuda=True) == {
        "device": "NVIDIA H100 80GB HBM3",
        "cuda_visible_devices": "3",
        "peak_gpu_allocated_bytes": 11 * 2**30,
        "peak_gpu_reserved_bytes": 13 * 2**30,
        "gpu_used_bytes": 20 * 2**30,  # total - free: every process and the context
        "gpu_total_bytes": 80 * 2**30,
    }


def test_the_memory_line_weighs_the_training_state_against_this_device(a_gpu):
    assert run_figures.memory_line(
        774_030_080, 774_030_080, cuda=True
    ) == out_of_memory.memory_line(774_030_080, 774_030_080, gpu_capacity=80 * 2**30)
    assert run_figures.memory_line(
        1000, 10, cuda=False, section="pretrain"
    ) == out_of_memory.memory_line(1000, 10, gpu_capacity=None, section="pretrain")


def test_one_process_gathers_its_own_figures():
    assert run_figures.gather_from_ranks({"device": "cpu"}) == [{"device": "cpu"}]


def test_every_process_s_figures_are_gathered_in_rank_order(monkeypatch):
    """Rank 0 of two: its own figures first, then rank 1's (all_gather_object stood in for:
    it fills each rank's slot of the list it is given)."""
    import torch.distributed as dist

    theirs = {"device": "cpu", "peak_rss_bytes": 2}

    def all_gather_object(object_list, obj):
        object_list[0], object_list[1] = obj, theirs

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    mine = {"device": "cpu", "peak_rss_bytes": 1}
    assert run_figures.gather_from_ranks(mine) == [mine, theirs]


def test_a_state_too_big_for_the_gpu_names_the_phase_s_lora_setting(a_gpu):
    """10^10 trained fp32 parameters need 16 bytes each (weights, gradients, AdamW's two
    moments): 160 GB, more than the 80 GiB GPU; the advice names the section asked about,
    train when none is named."""
    from pubmedqa_gpt2.core.errors import StageError

    with pytest.raises(StageError, match=r"set train\.lora\.enabled: true"):
        run_figures.memory_line(10**10, 10**10, cuda=True)
    with pytest.raises(StageError, match=r"set pretrain\.lora\.enabled: true"):
        run_figures.memory_line(10**10, 10**10, cuda=True, section="pretrain")
