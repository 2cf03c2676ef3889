"""Greedy generation: batched equals one-at-a-time, equals Hugging Face `generate` on one
unpadded prompt, stops at end-of-text, and never runs past the model's positions."""

from __future__ import annotations

import pytest
import torch

from pubmedqa_gpt2.model.generate import NgramBlocker, generate_greedy, pad_left, penalize_repeats

N_POSITIONS = 48
VOCAB = 300
PAD = 0
NO_EOS = -1  # a token id greedy decoding never produces: rows run to their budget
SETTINGS = [
    {},
    {"repetition_penalty": 1.3},
    {"no_repeat_ngram_size": 2},
    {"repetition_penalty": 0.8, "no_repeat_ngram_size": 3},
    {"repetition_penalty": 2.0, "no_repeat_ngram_size": 1},
    {"repetition_penalty": 2.0},  # alone: with 1-gram blocking no seen token is left to penalise
]


@pytest.fixture(scope="module")
def model():
    """A 2-layer random GPT-2 with a small vocabulary and 48 positions."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_embd=32, n_head=2, n_positions=N_POSITIONS, vocab_size=VOCAB,
        bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1,
    )  # fmt: skip
    return GPT2LMHeadModel(config).eval()


def random_rows(lengths, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    # Token 0 (the pad id) is left out so that Hugging Face does not mistake it for padding.
    return [torch.randint(1, VOCAB - 1, (n,), generator=generator).tolist() for n in lengths]


def test_pad_left_by_hand() -> None:
    ids, mask = pad_left([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_ngram_blocker_by_hand() -> None:
    blocker = NgramBlocker(2, [[1, 2, 3, 1]])
    assert blocker.banned(0) == [2]  # "1 2" is there: after 1, 2 would repeat it
    blocker.append(0, 4)
    assert blocker.banned(0) == []  # nothing followed 4 yet
    blocker.append(0, 1)
    assert blocker.banned(0) == [2, 4]  # "1 2" and "1 4"
    assert NgramBlocker(1, [[3, 1, 3]]).banned(0) == [1, 3]  # unigrams: every seen token
    assert NgramBlocker(3, [[1]]).banned(0) == []  # too short for any trigram


def test_penalize_repeats_by_hand() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    assert penalize_repeats(logits, seen, 2.0).tolist() == [[1.0, -4.0, 1.0]]


# How the decode step runs (model/decoding.py); cuda_graph needs CUDA (not here).
DECODE_STEPS = ("dynamic", "static")


@pytest.mark.parametrize("decode_step", DECODE_STEPS)
@pytest.mark.parametrize("settings", SETTINGS)
def test_batched_generation_equals_one_at_a_time(model, settings, decode_step) -> None:
    # Lengths up to the model's 48 positions: the long ones get fewer new tokens, or none.
    prompts = random_rows((5, 17, 1, 30, 44, 9, 47, 48), seed=1)
    kwargs = dict(max_new_tokens=10, eos_id=VOCAB - 1, pad_id=PAD, decode_step=decode_step)
    kwargs |= settings
    batched = generate_greedy(model, prompts, batch_size=3, **kwargs)
    alone = [generate_greedy(model, [p], batch_size=1, **kwargs)[0] for p in prompts]
    assert batched == alone
    assert all(len(p) + len(g) <= N_POSITIONS for p, g in zip(prompts, batched, strict=True))


@pytest.mark.parametrize("decode_step", DECODE_STEPS)
@pytest.mark.parametrize("settings", SETTINGS)
def test_generation_equals_hugging_face_generate(model, settings, decode_step) -> None:
    for prompt in random_rows((5, 17, 9, 30), seed=2):
        ids = torch.tensor([prompt])
        expected = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=PAD,
            eos_token_id=VOCAB - 1,
            **settings,
        )[0, len(prompt) :].tolist()
        if expected and expected[-1] == VOCAB - 1:
            expected = expected[:-1]  # ours leaves the end-of-text token out
        got = generate_greedy(
            model, [prompt], max_new_tokens=12, eos_id=VOCAB - 1, pad_id=PAD,
            decode_step=decode_step, **settings,
        )  # fmt: skip
        assert got == [expected]


def test_budget_is_max_new_tokens_capped_by_positions(model) -> None:
    prompts = random_rows((3, 40, 46, 48), seed=3)
    out = generate_greedy(model, prompts, max_new_tokens=5, eos_id=NO_EOS, pad_id=PAD)
    assert [len(g) for g in out] == [5, 5, 2, 0]


def test_stops_at_end_of_text(model) -> None:
    prompts = random_rows((6, 11), seed=4)
    free = generate_greedy(model, prompts, max_new_tokens=6, eos_id=NO_EOS, pad_id=PAD)
    # Declare a token the first row generates to be end-of-text: rows stop before it.
    eos = free[0][2]
    out = generate_greedy(model, prompts, max_new_tokens=6, eos_id=eos, pad_id=PAD)
    for row, tokens in zip(out, free, strict=True):
        assert row == tokens[: tokens.index(eos)] if eos in tokens else row == tokens
    assert len(out[0]) <= 2


def test_rejects_prompts_that_do_not_fit(model) -> None:
    with pytest.raises(ValueError, match="prompt 1 has 49 tokens; need 1 to 48"):
        generate_greedy(model, [[1], [1] * 49], max_new_tokens=3, eos_id=NO_EOS, pad_id=PAD)
    with pytest.raises(ValueError, match="prompt 0 has 0 tokens"):
        generate_greedy(model, [[]], max_new_tokens=3, eos_id=NO_EOS, pad_id=PAD)


@pytest.mark.parametrize("decode_step", DECODE_STEPS)
def test_rows_stop_where_hugging_face_stops_at_end_of_text(model, decode_step) -> None:
    """End-of-text set to a token the rows do generate: each row ends where Hugging Face's
    `generate` ends it (without the token), in one batch whose rows stop at different steps,
    and a row whose first token is end-of-text is empty."""
    prompts = random_rows((5, 17, 9, 30, 12), seed=5)
    free = generate_greedy(model, prompts, max_new_tokens=12, eos_id=NO_EOS, pad_id=PAD)
    for eos in (free[0][3], free[1][0]):
        expected = []
        for prompt in prompts:
            ids = torch.tensor([prompt])
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                pad_token_id=PAD, eos_token_id=eos,
            )[0, len(prompt):].tolist()  # fmt: skip
            expected.append(out[:-1] if out and out[-1] == eos else out)
        got = generate_greedy(
            model, prompts, max_new_tokens=12, eos_id=eos, pad_id=PAD, decode_step=decode_step
        )
        assert got == expected
        assert len({len(row) for row in got}) > 1  # rows of the batch stop at different steps
    assert got[1] == []  # its first token was end-of-text
    assert len(generate_greedy(model, prompts[:1], 12, free[0][3], PAD)[0]) <= 3


def test_ngram_blocker_at_the_length_boundaries() -> None:
    blocker = NgramBlocker(2, [[1]])
    blocker.append(0, 2)  # the row's first bigram, "1 2", ends here
    blocker.append(0, 1)
    assert blocker.banned(0) == [2]
    assert NgramBlocker(2, [[5, 5]]).banned(0) == [5]  # a row exactly n long
    assert NgramBlocker(3, [[4, 4, 4]]).banned(0) == [4]


def test_the_last_positions_are_generated_as_hugging_face_does(model) -> None:
    """Prompts 46 and 47 long (48 positions): 2 tokens and 1, the last one fed at position 47,
    each equal to Hugging Face's `generate` with that budget."""
    prompts = random_rows((46, 47), seed=6)
    got = generate_greedy(model, prompts, max_new_tokens=5, eos_id=NO_EOS, pad_id=PAD)
    for prompt, tokens, budget in zip(prompts, got, (2, 1), strict=True):
        ids = torch.tensor([prompt])
        expected = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=budget, do_sample=False,
            pad_token_id=PAD, eos_token_id=None,
        )[0, len(prompt):].tolist()  # fmt: skip
        assert tokens == expected and len(tokens) == budget


def test_an_automatic_batch_is_sized_from_the_free_memory_of_the_model_s_gpu(monkeypatch):
    """A stand-in for GPT-2 Large in bf16 whose weights are on cuda:1, 10 GiB free of 80: 30
    prompts of 1,000 tokens + 152 new ones = 1,152 positions, 212,939,724 bytes a row (keys and
    values 2 x 36 x 1152 x 1280 x 2, plus 3 x 4 x 50,257 for fp32 logits), and half of the
    10 GiB free, 5,368,709,120 bytes, holds 25 rows: batches of 25 and 5. (The 80 GiB total
    would give 30 rows; the CPU's fixed size is 16.) Only cuda:1 is asked for its memory."""
    from types import SimpleNamespace

    from transformers import GPT2Config

    from pubmedqa_gpt2.model import generate

    asked, batches = [], []

    def mem_get_info(device=None):
        asked.append(device)
        return 10 * 2**30, 80 * 2**30

    def generate_batch(model, head, rows, *args):
        batches.append(len(rows))
        return [[] for _ in rows]

    class OnGpu:
        config = GPT2Config(n_layer=36, n_embd=1280, n_head=20, vocab_size=50257)

        def eval(self):
            return self

        def parameters(self):
            yield SimpleNamespace(device=torch.device("cuda", 1), element_size=lambda: 2)

        def get_output_embeddings(self):
            return SimpleNamespace(weight=torch.zeros(1, 1), bias=None)

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    monkeypatch.setattr(generate, "_generate_batch", generate_batch)
    stats: dict = {}
    prompts = [[1] * 1000 for _ in range(30)]
    generate_greedy(OnGpu(), prompts, 152, NO_EOS, PAD, batch_size="auto", stats=stats)
    assert stats["generation_batch_size"] == 25 and batches == [25, 5]
    assert asked == [torch.device("cuda", 1)]


class OnTheHost(torch.Tensor):
    """A tensor made on the host, which the model's device cannot read (as a CPU tensor given
    to a model on a GPU): only `.to(the model's device)`, here the CPU, gives a usable one."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.to and args[1:] == (torch.device("cpu"),) and not kwargs:
            with torch._C.DisableTorchFunctionSubclass():
                return args[0].as_subclass(torch.Tensor)
        raise RuntimeError(f"{func.__name__} of a tensor left on the host")


def test_generation_makes_its_tensors_on_the_model_s_device(model, monkeypatch) -> None:
    """The loop's tensors are made on, or moved to, the model's device, never left on torch's
    default one or the host: stood in for by a default device ("meta", shapes without values)
    other than the model's (the CPU), and pad_left's rows made on a host the model cannot read
    until they are moved. Any tensor left behind fails the step. The tokens are Hugging Face's
    `generate` for each prompt alone, outside of that (repetition penalty and 1-gram blocking
    on, so the seen-token mask and the banned tokens' index are made too; two lengths, so
    the rows are padded)."""
    from pubmedqa_gpt2.model import generate

    settings = {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2}
    prompts = random_rows((5, 17), seed=7)
    expected = []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        expected.append(
            model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                pad_token_id=PAD, eos_token_id=None, **settings,
            )[0, len(prompt):].tolist()
        )  # fmt: skip
    real_pad_left = generate.pad_left

    def pad_left(rows, pad_id):
        with torch.device("cpu"):
            ids, mask = real_pad_left(rows, pad_id)
        return ids.as_subclass(OnTheHost), mask.as_subclass(OnTheHost)

    monkeypatch.setattr(generate, "pad_left", pad_left)
    with torch.device("meta"):
        got = generate_greedy(
            model, prompts, max_new_tokens=6, eos_id=NO_EOS, pad_id=PAD, decode_step="dynamic",
            **settings,
        )  # fmt: skip
    assert got == expected and all(len(row) == 6 for row in got)


def test_the_timing_waits_for_the_model_s_gpu_and_only_for_a_gpu(monkeypatch) -> None:
    """Before the decode steps are timed the host waits for the prompts' pass to end on the
    model's GPU (cuda:1 here, not whichever is current); a CPU has nothing to wait for."""
    from pubmedqa_gpt2.model import generate

    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", waited.append)
    generate._synchronize(torch.device("cuda", 1))
    generate._synchronize(torch.device("cpu"))
    assert waited == [torch.device("cuda", 1)]
