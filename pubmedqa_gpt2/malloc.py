"""glibc's malloc in the stages that compute with tensors: keep freed memory for the next step.

glibc serves each allocation above its mmap threshold (128 KiB, raised as blocks are freed, to
32 MiB at most) with freshly mapped pages, and gives them back to the kernel when it is freed.
A training step or a perplexity batch on a CPU allocates and frees tensors of tens to hundreds
of MB (logits over GPT-2's 50,257 tokens, their gradients), so every step the kernel maps and
zero-fills that memory again. Measured on this project's 2-core machine, the train stage on the
450 PQA-L questions (2 layers, 64 wide, 2 epochs) took 46.4 s, 21.8 s of it the kernel's; with
the thresholds below 34.6 s and 1.3 s, the same model and metrics, peak memory 1.26 -> 1.38 GB.

PyTorch's CPU tuning guide reaches the same end by preloading jemalloc or tcmalloc; raising
glibc's two thresholds needs nothing installed. A user's own `MALLOC_MMAP_THRESHOLD_` or
`MALLOC_TRIM_THRESHOLD_` wins: then nothing is changed. Elsewhere than glibc, nothing happens.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters, from glibc's <malloc.h>
MMAP_THRESHOLD = 1 << 30  # allocations below 1 GiB come from the heap and are reused
TRIM_THRESHOLD = 1 << 30  # up to 1 GiB freed at the heap's top is kept, not given back
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory(environ=os.environ) -> bool:
    """Raise glibc's mmap and trim thresholds for this process; whether it did."""
    if not sys.platform.startswith("linux") or any(name in environ for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no libc.so.6 or no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
