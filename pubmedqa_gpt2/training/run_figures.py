"""A run's devices and memory: the line printed before training, the figures of perf/*.json."""

from __future__ import annotations

import os

import torch

from pubmedqa_gpt2 import out_of_memory


def device_figures(cuda: bool) -> dict:
    """This process's device and its memory peaks, each under a key that says what it is.

    On a GPU: the allocator's peak allocation and reservation (what torch holds, cached
    blocks included), and the memory in use on the whole device at the end (that also counts
    the CUDA context, communication buffers and any other process). On a CPU: peak RSS.
    """
    if not cuda:
        import resource

        # Linux reports ru_maxrss in KiB.
        return {
            "device": "cpu",
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }
    free, total = torch.cuda.mem_get_info()
    return {
        "device": torch.cuda.get_device_name(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "peak_gpu_allocated_bytes": torch.cuda.max_memory_allocated(),
        "peak_gpu_reserved_bytes": torch.cuda.max_memory_reserved(),
        "gpu_used_bytes": total - free,
        "gpu_total_bytes": total,
    }


def gather_from_ranks(figures: dict) -> list[dict]:
    """Every process's `figures`, in rank order (a collective: all processes must call it)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [figures]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, figures)
    return out


def memory_line(total: int, trained: int, cuda: bool, section: str = "train") -> str:
    """The training state's memory against this device's (`pubmedqa_gpt2.out_of_memory`)."""
    capacity = None
    if cuda:
        capacity = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    return out_of_memory.memory_line(total, trained, gpu_capacity=capacity, section=section)
