"""The decode step's modes (model/decoding.py): the static KV cache gives the tokens the dynamic
one gives, whatever the attention implementation; `auto` picks by device; an automatic
generation batch is sized from memory as computed by hand; the decode steps are counted."""

from __future__ import annotations

import contextlib
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from pubmedqa_gpt2.model.decoding import auto_batch_size, resolve_mode, row_bytes
from pubmedqa_gpt2.model.generate import generate_greedy

VOCAB = 500


def gpt2(attention: str):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(3)
    config = GPT2Config(
        n_layer=3, n_embd=48, n_head=4, n_positions=96, vocab_size=VOCAB,
        bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1, attn_implementation=attention,
    )  # fmt: skip
    return GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_static_cache_gives_the_dynamic_caches_tokens(attention) -> None:
    """Rows of many lengths in batches of 4, some reaching the 96 positions, repetition
    penalty and n-gram blocking on: token for token the same in both modes, with either
    attention implementation (SDPA takes a boolean mask, eager an additive one)."""
    model = gpt2(attention)
    generator = torch.Generator().manual_seed(0)
    lengths = (3, 90, 41, 7, 60, 95, 12, 33, 1, 77)
    prompts = [torch.randint(1, VOCAB - 1, (n,), generator=generator).tolist() for n in lengths]
    for settings in ({}, {"repetition_penalty": 1.2, "no_repeat_ngram_size": 3}):
        kwargs = dict(max_new_tokens=20, eos_id=VOCAB - 1, pad_id=0, batch_size=4, **settings)
        dynamic = generate_greedy(model, prompts, decode_step="dynamic", **kwargs)
        static = generate_greedy(model, prompts, decode_step="static", **kwargs)
        assert static == dynamic
        assert sum(map(len, dynamic)) > 100  # rows did generate (not a vacuous equality)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_static_decoder_computes_the_dynamic_decoders_states(attention) -> None:
    """The same tokens fed to both decoders, one row finishing after the second step: every
    step's last hidden states agree to float rounding."""
    from pubmedqa_gpt2.model.decoding import DynamicDecoder, StaticDecoder
    from pubmedqa_gpt2.model.generate import pad_left

    model = gpt2(attention)
    ids, mask = pad_left([[5, 6, 7, 8], [9, 10]], pad_id=0)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    feed = torch.tensor([[11, 12], [13, 0], [14, 0], [15, 0]])  # row 1 stops after its 1st
    states = []
    with torch.inference_mode():
        for decoder in (DynamicDecoder(model, ids, mask, 5), StaticDecoder(model, ids, mask, 5)):
            lengths, seen = mask.sum(dim=1), [decoder.prefill(positions)]
            for step, tokens in enumerate(feed):
                active = torch.tensor([True, step == 0])
                seen.append(decoder.step(tokens[:, None], lengths[:, None], active))
                lengths = lengths + active
            states.append(torch.stack(seen))
    torch.testing.assert_close(states[1], states[0], atol=1e-5, rtol=1e-5)
    assert not torch.equal(states[0][1], states[0][2])  # the steps did move


def test_decode_steps_are_counted() -> None:
    """Three prompts, 5 new tokens each, no end-of-text: per batch one pass over the prompts
    and 4 decode steps; batches of 2 make two batches, so 8 steps."""
    model = gpt2("sdpa")
    stats: dict = {}
    out = generate_greedy(
        model, [[5, 6], [7], [8, 9, 10]], max_new_tokens=5, eos_id=-1, pad_id=0, batch_size=2,
        decode_step="static", stats=stats,
    )  # fmt: skip
    assert [len(t) for t in out] == [5, 5, 5]
    assert stats["decode_steps"] == 8
    assert stats["decode_step"] == "static" and stats["generation_batch_size"] == 2
    assert stats["decode_step_ms"] == pytest.approx(1e3 * stats["decode_s"] / 8)
    assert "fallback" not in stats


def test_a_batch_whose_rows_have_all_ended_stops_at_the_next_check() -> None:
    """One prompt whose first new token (Hugging Face's `generate`) is declared end-of-text:
    the row ends at step 0, but the host only asks every CHECK_EVERY = 8 steps whether any row
    is still active, so the batch stops after step 7: steps 0 to 6 were each followed by a
    decode step, 7 of them, not the 19 that 20 new tokens would take."""
    model = gpt2("sdpa")
    prompt = [5, 6, 7]
    ids = torch.tensor([prompt])
    first = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False, pad_token_id=0
    )[0, -1].item()
    stats: dict = {}
    out = generate_greedy(model, [prompt], max_new_tokens=20, eos_id=first, pad_id=0, stats=stats)
    assert out == [[]]
    assert stats["decode_steps"] == 7


def test_the_decode_time_adds_up_over_the_batches(monkeypatch) -> None:
    """A clock that reads 1, 4 (first batch), then 10, 15 (second): 3 + 5 = 8 s over the two
    batches of test_decode_steps_are_counted's 8 decode steps, 1,000 ms a step."""
    from types import SimpleNamespace

    from pubmedqa_gpt2.model import generate

    clock = iter([1.0, 4.0, 10.0, 15.0])
    monkeypatch.setattr(generate, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    stats: dict = {}
    generate_greedy(
        gpt2("sdpa"), [[5, 6], [7], [8, 9, 10]], max_new_tokens=5, eos_id=-1, pad_id=0,
        batch_size=2, stats=stats,
    )  # fmt: skip
    assert stats["decode_steps"] == 8 and stats["decode_s"] == 8.0
    assert stats["decode_step_ms"] == 1000.0


def test_auto_modes_by_device() -> None:
    assert resolve_mode("auto", torch.device("cpu")) == "dynamic"
    assert resolve_mode("auto", torch.device("cuda", 0)) == "cuda_graph"
    assert resolve_mode("static", torch.device("cpu")) == "static"
    with pytest.raises(ValueError, match="cuda_graph needs a CUDA device"):
        resolve_mode("cuda_graph", torch.device("cpu"))
    with pytest.raises(ValueError, match="must be one of auto, dynamic, static, cuda_graph"):
        resolve_mode("graph", torch.device("cpu"))


def test_auto_batch_size_by_hand() -> None:
    """GPT-2 Large in bf16 at 1,152 positions: keys and values 2 x 36 x 1152 x 1280 x 2 bytes
    = 212,336,640, plus 3 fp32 rows of logits 3 x 4 x 50,257 = 603,084: 212,939,724 a row."""
    from transformers import GPT2Config

    large = GPT2Config(n_layer=36, n_embd=1280, n_head=20, vocab_size=50257)
    assert row_bytes(large, 1152, 2) == 212_939_724
    gib = 2**30
    assert auto_batch_size(large, 1152, 2, 10 * gib, 500) == 25  # 5,368,709,120 / 212,939,724
    assert auto_batch_size(large, 1152, 2, 70 * gib, 500) == 64  # 176 rows fit: the cap
    assert auto_batch_size(large, 1152, 2, 70 * gib, 40) == 40  # no more rows than prompts
    assert auto_batch_size(large, 1152, 2, 100 << 20, 500) == 1  # too little: one row
    assert auto_batch_size(large, 1152, 2, None, 500) == 16  # no GPU
    assert auto_batch_size(large, 1152, 2, None, 3) == 3


def test_auto_batch_on_the_cpu_is_16() -> None:
    model = gpt2("sdpa")
    stats: dict = {}
    prompts = [[i + 1] for i in range(20)]
    generate_greedy(model, prompts, 2, -1, 0, batch_size="auto", stats=stats)
    assert stats["generation_batch_size"] == 16


def test_a_cuda_graph_is_what_auto_means_on_a_cuda_device_and_may_be_asked_there():
    assert resolve_mode("cuda_graph", torch.device("cuda", 0)) == "cuda_graph"
    assert resolve_mode("dynamic", torch.device("cuda", 0)) == "dynamic"


@pytest.mark.parametrize(
    ("attention", "dtype", "kept", "hidden"),
    [
        ("sdpa", torch.float32, True, False),  # SDPA: True where a key may be read
        ("eager", torch.float32, 0.0, torch.finfo(torch.float32).min),  # added to the scores
        ("eager", torch.bfloat16, 0.0, torch.finfo(torch.bfloat16).min),  # in the model's dtype
    ],
)
def test_the_static_mask_is_the_form_the_attention_implementation_reads(
    attention, dtype, kept, hidden
):
    """Prompt rows [5, 6] and [7] (left-padded), 2 new tokens: a width of 4; before any step
    row 0 reads positions 0-1, row 1 position 1 only, in SDPA's boolean form or eager
    attention's additive one (as transformers builds them)."""
    from pubmedqa_gpt2.model.decoding import StaticDecoder
    from pubmedqa_gpt2.model.generate import pad_left

    model = gpt2(attention).to(dtype)
    ids, mask = pad_left([[5, 6], [7]], pad_id=0)
    decoder = StaticDecoder(model, ids, mask, 2)
    shown = decoder._mask_4d()
    assert shown.shape == (2, 1, 1, 4) and shown.dtype == (torch.bool if kept is True else dtype)
    expected = [[kept, kept, hidden, hidden], [hidden, kept, hidden, hidden]]
    assert shown[:, 0, 0].tolist() == expected
    assert decoder.additive == (attention != "sdpa")


def test_the_static_decoder_s_buffers_live_on_the_model_s_device():
    """On the `meta` device (standing in for a GPU here): the mask, the next column and the
    4-D mask are made there, not on the CPU."""
    from pubmedqa_gpt2.model.decoding import StaticDecoder

    model = gpt2("eager").to("meta")
    ids = torch.ones((2, 3), dtype=torch.long, device="meta")
    decoder = StaticDecoder(model, ids, torch.ones_like(ids), 2)
    assert {decoder.mask.device.type, decoder.column.device.type} == {"meta"}
    assert decoder._mask_4d().device.type == "meta"


# ---- The CUDA-graph decoder, on the CPU: a stand-in for torch.cuda's streams and graphs ----


class Recorder(TorchDispatchMode):
    """What a CUDA graph capture keeps: every aten op run inside it, with its tensors (their
    memory); a host sync there fails as CUDA fails it."""

    SYNCS = ("_local_scalar_dense", "item", "is_nonzero", "nonzero")

    def __init__(self):
        super().__init__()
        self.ops: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.__name__.split(".")[0] in self.SYNCS:
            raise RuntimeError(f"operation not permitted when stream is capturing ({func})")
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


class FakeCuda:
    """torch.cuda's streams and graphs as CUDA behaves, for a CPU. Streams do nothing. Inside
    `graph(g)` the ops are recorded (`Recorder`) and their writes undone: a capture leaves the
    memory as it found it but for the new tensors it made. `g.replay()` runs the recorded ops
    again on the same tensors, each result written into the tensor it made at capture: the
    kernels of a CUDA graph on their fixed addresses. `fail` makes every capture raise."""

    def __init__(self, fail: str | None = None):
        self.fail, self.captures, self.replays = fail, 0, 0
        self.CUDAGraph = self.graph_class()  # a class: transformers annotates with it

    class Stream:
        def wait_stream(self, other) -> None:
            assert isinstance(other, FakeCuda.Stream), other

    def stream(self, stream):
        assert isinstance(stream, FakeCuda.Stream), stream
        return contextlib.nullcontext()

    def current_stream(self):
        return self.Stream()

    def graph_class(self) -> type:
        fakes = self

        class CUDAGraph:
            ops: list = []

            def replay(self) -> None:
                fakes.replays += 1
                for func, args, kwargs, out in self.ops:
                    again = func(*args, **kwargs)
                    for made, now in zip(tree_leaves(out), tree_leaves(again), strict=True):
                        if isinstance(made, torch.Tensor) and made.data_ptr() != now.data_ptr():
                            made.copy_(now)

        return CUDAGraph

    def graph(self, graph):
        fakes = self

        class Capture:
            def __enter__(self):
                fakes.captures += 1
                if fakes.fail:
                    raise RuntimeError(fakes.fail)
                decoder = sys._getframe(1).f_locals["self"]  # GraphDecoder._capture's
                self.saved = [(t, t.clone()) for t in held_tensors(decoder)]
                self.recorder = Recorder().__enter__()

            def __exit__(self, kind, exc, tb):
                self.recorder.__exit__(kind, exc, tb)
                for tensor, before in self.saved:
                    tensor.copy_(before)
                graph.ops = self.recorder.ops

        return Capture()


def held_tensors(decoder) -> list[torch.Tensor]:
    """The decoder's tensors and its cache's: what a capture must leave unchanged."""
    tensors = [t for t in vars(decoder).values() if isinstance(t, torch.Tensor)]
    for layer in decoder.cache.layers:
        tensors += [t for t in vars(layer).values() if isinstance(t, torch.Tensor)]
    return tensors


@pytest.fixture
def fake_cuda(monkeypatch):
    def install(**kwargs) -> FakeCuda:
        fakes = FakeCuda(**kwargs)
        for name in ("Stream", "stream", "current_stream", "CUDAGraph", "graph"):
            monkeypatch.setattr(torch.cuda, name, getattr(fakes, name))
        return fakes

    return install


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_replayed_decode_step_computes_the_dynamic_decoders_states(attention, fake_cuda):
    """The same tokens fed to the dynamic decoder and to the graph decoder, rows of three
    lengths (left-padded), one finishing after the second step: the first step runs eagerly
    and is captured, the next three replay it; every step's last hidden states agree."""
    from pubmedqa_gpt2.model.decoding import DynamicDecoder, GraphDecoder
    from pubmedqa_gpt2.model.generate import pad_left

    fakes = fake_cuda()
    model = gpt2(attention)
    ids, mask = pad_left([[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]], pad_id=0)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    feed = torch.tensor([[15, 16, 17], [18, 19, 0], [20, 21, 0], [22, 23, 0]])
    states = []
    with torch.inference_mode():
        for decoder in (DynamicDecoder(model, ids, mask, 6), GraphDecoder(model, ids, mask, 6)):
            lengths, seen = mask.sum(dim=1), [decoder.prefill(positions)]
            for step, tokens in enumerate(feed):
                active = torch.tensor([True, True, step == 0])
                seen.append(decoder.step(tokens[:, None], lengths[:, None], active))
                lengths = lengths + active
            states.append(torch.stack(seen))
    torch.testing.assert_close(states[1], states[0], atol=1e-5, rtol=1e-5)
    assert not torch.equal(states[0][2], states[0][3])  # the steps did move
    assert decoder.fallback is None and fakes.captures == 1 and fakes.replays == 3


def generate_with(model, prompts, mode: str) -> tuple[list[list[int]], dict]:
    """generate.py's batch loop in `mode` (the device check left out: this is a CPU)."""
    from pubmedqa_gpt2.model.generate import Fp32Head, _generate_batch

    stats = {"decode_steps": 0, "decode_s": 0.0}
    with torch.inference_mode():
        out = _generate_batch(
            model, Fp32Head(model), prompts, [12] * len(prompts), eos_id=VOCAB - 1, pad_id=0,
            repetition_penalty=1.2, no_repeat_ngram_size=0, mode=mode, stats=stats,
        )  # fmt: skip
    return out, stats


def test_generation_with_a_captured_step_gives_the_dynamic_caches_tokens(fake_cuda):
    """Through generate.py's loop: one capture, a replay a step after the first, the tokens of
    the dynamic cache, no fallback."""
    fakes = fake_cuda()
    model = gpt2("sdpa")
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    dynamic, _ = generate_with(model, prompts, "dynamic")
    graphed, stats = generate_with(model, prompts, "cuda_graph")
    assert graphed == dynamic and sum(map(len, dynamic)) >= 30
    assert fakes.captures == 1 and fakes.replays == stats["decode_steps"] - 1 == 10
    assert "fallback" not in stats


def test_a_failed_capture_goes_on_eagerly_and_says_why(fake_cuda):
    """A capture that raises (CUDA's error when captured code syncs with the host): decoding
    goes on with the static cache, eagerly, to the same tokens; `fallback` gives the error's
    first line; no further capture is tried."""
    fakes = fake_cuda(fail="operation not permitted when stream is capturing\nmore detail")
    model = gpt2("sdpa")
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    dynamic, _ = generate_with(model, prompts, "dynamic")
    graphed, stats = generate_with(model, prompts, "cuda_graph")
    assert graphed == dynamic
    assert fakes.captures == 1 and fakes.replays == 0
    assert stats["fallback"] == (
        "CUDA graph capture failed (operation not permitted when stream is capturing)"
    )


def test_the_dynamic_step_could_not_be_captured(fake_cuda):
    """The recorder fails a host sync as CUDA does: the dynamic cache's step (its mask grown
    by concatenation, read by transformers' mask builder) is refused, so a test of the static
    step's capture above means something."""
    from pubmedqa_gpt2.model.decoding import DynamicDecoder
    from pubmedqa_gpt2.model.generate import pad_left

    model = gpt2("sdpa")
    ids, mask = pad_left([[5, 6, 7], [8]], pad_id=0)
    decoder = DynamicDecoder(model, ids, mask, 3)
    with torch.inference_mode():
        decoder.prefill((mask.cumsum(dim=1) - 1).clamp(min=0))
        with pytest.raises(RuntimeError, match="not permitted when stream is capturing"):
            with Recorder():
                decoder.step(torch.tensor([[9], [10]]), torch.tensor([[3], [1]]), torch.ones(2))
