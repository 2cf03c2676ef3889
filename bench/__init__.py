"""Benchmarks of the project's real code paths; the figures are in docs/PERFORMANCE.md.

    python -m bench.cpu     # `make bench`: each figure against its naive baseline, on this CPU
    python -m bench.gpu     # GPT-2 Large training: tokens/s, MFU and peak memory on a GPU
    python -m bench.decode  # host cost of a decode step by `evaluate.decode_step` mode

What both share is in `bench/common.py`; where the offline data is, in `bench/shared_data.py`
(no torch: the GPU kit's builder, `gpu_check/kit.py`, reads it too). The one-call GPU check,
which runs bench.gpu last, is in `gpu_check/`. Figures are printed, never asserted.
"""
