"""Benchmarks of the project's real code paths; the figures are in docs/PERFORMANCE.md.

    python -m bench.cpu    # `make bench`: each figure against its naive baseline, on this CPU
    python -m bench.gpu    # GPT-2 Large training: tokens/s, MFU and peak memory on a GPU

What both share is in `bench/common.py`; where the offline data is, in `bench/shared_data.py`
(no torch: the GPU kit's builder, `bench/gpu_kit.py`, reads it too). The one-call GPU check is
`bench/gpu_check.sh` (docs/PERFORMANCE.md). Figures are printed, never asserted.
"""
