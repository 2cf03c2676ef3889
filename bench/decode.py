"""Host cost of one greedy decode step, on this CPU, with a full-depth stand-in of GPT-2 Large.

    python -m bench.decode            # 36 layers of width 80 (20 heads), batch 16
    python -m bench.decode --quick    # 4 layers: checks that it runs

On a GPU a decode step of GPT-2 Large is short enough that the host, dispatching the model's
ops one by one, sets its pace. A stand-in with GPT-2 Large's depth (36 layers, 20 heads) but a
narrow width and a small vocabulary dispatches the same ops with almost no arithmetic, so the
time it takes here is host time. Per decode step of the project's generation loop
(`model/generate.py`), for each `evaluate.decode_step` mode:
- aten ops: every op the profiler records (composite ops and what they call);
- kernels: the ops that reach a backend kernel (a TorchDispatchMode count): on a GPU, launches;
- host ms: wall time per step (the median batch), here all of it host time.
`cuda_graph` cannot run without CUDA; what it leaves the host per step is measured with its
replay replaced by handing back the captured step's output: the loop's own ops, the copies into
the graph's inputs, and (on a GPU, not counted here) one graph launch.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pubmedqa_gpt2.model import generate
from pubmedqa_gpt2.model.decoding import DECODERS, StaticDecoder
from pubmedqa_gpt2.model.scoring import Fp32Head

VOCAB = 512  # small: the LM head's arithmetic (the same in every mode) would hide host time


class ReplayStandIn(StaticDecoder):
    """The host side of `cuda_graph` after its capture: the inputs copied into the graph's
    buffers, the mask column written, the output cloned; the replay itself (one launch on a
    GPU) replaced by the output of the one eager step."""

    def step(self, ids, positions, active):
        self._write_mask(active)
        if getattr(self, "hidden_out", None) is None:
            self.ids_in, self.positions_in = ids.clone(), positions.clone()
            self.hidden_out = self._decode(ids, positions)
            return self.hidden_out.clone()
        self.ids_in.copy_(ids)
        self.positions_in.copy_(positions)
        return self.hidden_out.clone()


class KernelCount(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def stand_in(n_layer: int, n_embd: int, n_head: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=VOCAB)
    return GPT2LMHeadModel(config).eval()


def run_batch(model, rows, steps: int, mode: str) -> dict:
    """One batch of `rows` decoded for `steps` tokens (no end-of-text) in `mode`."""
    stats = {"decode_steps": 0, "decode_s": 0.0}
    with torch.inference_mode():
        generate._generate_batch(
            model, Fp32Head(model), rows, [steps] * len(rows), -1, 0, 1.0, 0, mode, stats
        )
    return stats


def per_step_ops(model, rows, mode: str, steps: int) -> tuple[float, float]:
    """(aten ops, kernels) per decode step: a run of `steps` tokens less a run of 1 token (the
    prompts' own pass and the setup cancel), over the steps in between."""
    from torch.profiler import ProfilerActivity, profile

    counts = []
    for n in (1, steps):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run_batch(model, rows, n, mode)
        aten = sum(1 for e in prof.events() if e.name.startswith("aten::"))
        with KernelCount() as kernels:
            run_batch(model, rows, n, mode)
        counts.append((aten, kernels.count))
    (aten_1, kernels_1), (aten_n, kernels_n) = counts
    return (aten_n - aten_1) / (steps - 1), (kernels_n - kernels_1) / (steps - 1)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="4 layers, fewer steps")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n_layer, steps, repeats = (4, 8, 2) if args.quick else (36, 32, 5)
    model = stand_in(n_layer, 80, 20)
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(300, 420, (args.batch,), generator=generator).tolist()
    rows = [torch.randint(1, VOCAB - 1, (n,), generator=generator).tolist() for n in lengths]
    DECODERS["replay_stand_in"] = ReplayStandIn
    print(
        f"bench.decode: GPT-2 stand-in, {n_layer} layers of width 80 (20 heads, vocabulary "
        f"{VOCAB}), batch {args.batch}, prompts of {min(lengths)}-{max(lengths)} tokens, "
        f"{steps} new tokens; torch {torch.__version__}, 1 thread\n"
    )
    print(f"   {'decode step':<34} {'aten ops':>9} {'kernels':>8} {'host ms':>8}")
    figures = {}
    for mode, label in (
        ("dynamic", "dynamic (before)"),
        ("static", "static, eager"),
        ("replay_stand_in", "cuda_graph, host side after capture"),
    ):
        run_batch(model, rows, 2, mode)  # warm-up
        times = []
        for _ in range(repeats):
            stats = run_batch(model, rows, steps, mode)
            times.append(stats["decode_s"] / stats["decode_steps"])
        aten, kernels = per_step_ops(model, rows, mode, steps)
        ms = 1e3 * statistics.median(times)
        figures[mode] = {"aten_ops": aten, "kernels": kernels, "host_ms": ms}
        print(f"   {label:<34} {aten:9.0f} {kernels:8.0f} {ms:8.2f}")
    before, after = figures["dynamic"], figures["replay_stand_in"]
    print(
        f"\n   per step, cuda_graph against dynamic: kernels launched from the host "
        f"{before['kernels']:.0f} -> {after['kernels']:.0f} + 1 graph launch; host time "
        f"{before['host_ms']:.2f} -> {after['host_ms']:.2f} ms "
        f"({before['host_ms'] / after['host_ms']:.0f}x less) plus the launch"
    )
    del DECODERS["replay_stand_in"]
    return figures


if __name__ == "__main__":
    main()
