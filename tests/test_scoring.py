"""Scoring fixed text: batched scores equal one-at-a-time scores and a plain full forward pass."""

from __future__ import annotations

import pytest
import torch

from pubmedqa_gpt2.model.scoring import (
    HEAD_ROWS,
    Fp32Head,
    continuation_nll,
    pad_right,
    score_decisions,
    token_nll,
)

LABEL_IDS = [3763, 645, 3863]  # " yes", " no", " maybe"
LENGTHS = (7, 1, 23, 12, 40, 3)  # unsorted, so that batches reorder and pad


@pytest.fixture(scope="module")
def model():
    """A 2-layer random GPT-2 with GPT-2's vocabulary (the label ids are real)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64)
    return GPT2LMHeadModel(config).eval()


def random_rows(lengths, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 50257, (n,), generator=generator).tolist() for n in lengths]


def test_pad_right_by_hand() -> None:
    ids, mask = pad_right([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_batched_decisions_equal_one_at_a_time(model) -> None:
    prompts = random_rows(LENGTHS, seed=1)
    batched = score_decisions(model, prompts, LABEL_IDS, batch_size=4, pad_id=50256)
    alone = torch.cat([score_decisions(model, [p], LABEL_IDS, batch_size=1) for p in prompts])
    assert batched.shape == (len(prompts), 3)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    # And both equal a softmax over the label logits of a plain forward pass.
    with torch.no_grad():
        direct = torch.stack(
            [model(torch.tensor([p])).logits[0, -1, LABEL_IDS].softmax(-1) for p in prompts]
        )
    torch.testing.assert_close(batched, direct, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched.sum(dim=1), torch.ones(len(prompts)))


def full_forward_nll(model, prompt: list[int], continuation: list[int]) -> float:
    """Summed cross-entropy of `continuation`, from all logits of one unpadded forward pass."""
    if not continuation:
        return 0.0
    with torch.no_grad():
        logits = model(torch.tensor([prompt + continuation])).logits[0]
    predicting = logits[len(prompt) - 1 : -1]
    target = torch.tensor(continuation)
    return torch.nn.functional.cross_entropy(predicting, target, reduction="sum").item()


def test_continuation_nll_equals_full_forward_pass(model) -> None:
    prompts = random_rows(LENGTHS, seed=2)
    continuations = random_rows((4, 9, 0, 1, 15, 6), seed=3)  # one empty: NLL 0
    batched = continuation_nll(model, prompts, continuations, batch_size=4, pad_id=50256)
    alone = torch.cat(
        [continuation_nll(model, [p], [c]) for p, c in zip(prompts, continuations, strict=True)]
    )
    expected = torch.tensor(
        [full_forward_nll(model, p, c) for p, c in zip(prompts, continuations, strict=True)],
        dtype=torch.float64,
    )
    assert batched.dtype == torch.float64
    torch.testing.assert_close(batched, alone, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(batched, expected, atol=1e-4, rtol=1e-5)
    assert batched[2] == 0.0


def test_a_batch_of_more_tokens_than_one_chunk_of_logits_is_scored_whole(model) -> None:
    """93 continuation tokens in one batch: the head's logits are made in three chunks of
    rows (32, 32, 29), and every token still counts, against its own target."""
    prompts = random_rows((3, 10, 5), seed=4)
    continuations = random_rows((40, 33, 20), seed=5)
    assert sum(map(len, continuations)) > 2 * HEAD_ROWS
    batched = continuation_nll(model, prompts, continuations, batch_size=3, pad_id=50256)
    expected = torch.tensor(
        [full_forward_nll(model, p, c) for p, c in zip(prompts, continuations, strict=True)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(batched, expected, atol=1e-4, rtol=1e-5)


def test_chunked_token_nll_is_the_one_shot_cross_entropy(model) -> None:
    """To fp32 rounding: a product of fewer rows may be blocked differently by the BLAS."""
    generator = torch.Generator().manual_seed(6)
    hidden = torch.randn(2 * HEAD_ROWS + 5, 32, generator=generator)
    targets = torch.randint(0, 50257, (len(hidden),), generator=generator)
    head = Fp32Head(model)
    with torch.no_grad():
        one_shot = torch.nn.functional.cross_entropy(head(hidden), targets, reduction="none")
        chunked = token_nll(head, hidden, targets)
    torch.testing.assert_close(chunked, one_shot, atol=1e-6, rtol=1e-6)


def test_continuation_nll_rejects_bad_input(model) -> None:
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        continuation_nll(model, [[]], [[1, 2]])
    with pytest.raises(ValueError, match="2 prompts but 1 continuations"):
        continuation_nll(model, [[1], [2]], [[3]])


# ---- bf16: the numbers a GPU run reads ----


def gpt2_sized_logits(model):
    """A copy of `model` whose logits are about 45, as GPT-2's are, varying by about a nat:
    every token embedding shares a component that the final layer norm sets to 45."""
    import copy

    model = copy.deepcopy(model)
    with torch.no_grad():
        model.transformer.ln_f.weight[0] = 0.0
        model.transformer.ln_f.bias[0] = 45.0
        model.transformer.wte.weight[:, 0] = 1.0
        model.transformer.ln_f.weight[1:] *= 4.0
    return model


def test_bf16_weights_give_the_fp32_decisions_within_a_stated_tolerance(model) -> None:
    """With bf16 weights, the decisions equal fp32's wherever fp32's two likeliest labels are
    more than 0.01 nats apart, and every probability is within 0.005 of fp32's. (Read from
    bf16 logits of this size, 0.25 nats apart, about 40% of them tie or swap.)"""
    fp32 = gpt2_sized_logits(model)
    bf16 = gpt2_sized_logits(model).to(torch.bfloat16)
    generator = torch.Generator().manual_seed(1)
    prompts = [
        torch.randint(0, 50257, (int(n),), generator=generator).tolist()
        for n in torch.randint(5, 40, (300,), generator=generator)
    ]
    logits = fp32(torch.tensor([prompts[0]])).logits[0, -1, LABEL_IDS]
    assert 40 < logits.abs().min() < logits.abs().max() < 50
    exact = score_decisions(fp32, prompts, LABEL_IDS, batch_size=16, pad_id=0)
    approx = score_decisions(bf16, prompts, LABEL_IDS, batch_size=16, pad_id=0)
    top2 = exact.log().topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.01
    assert clear.float().mean() > 0.8  # most decisions are clear: the check has teeth
    assert torch.equal(exact.argmax(dim=1)[clear], approx.argmax(dim=1)[clear])
    torch.testing.assert_close(approx, exact, rtol=0, atol=5e-3)
    # The reference answer's NLL in bf16 is the fp32 one within 0.1% (summed over 10 tokens).
    continuations = [p[:10] for p in prompts[:32]]
    nll = continuation_nll(fp32, prompts[:32], continuations, batch_size=8)
    nll_bf16 = continuation_nll(bf16, prompts[:32], continuations, batch_size=8)
    torch.testing.assert_close(nll_bf16, nll, rtol=1e-3, atol=0)


def test_scoring_builds_no_kv_cache(model, monkeypatch) -> None:
    """A forward pass that returns a cache holds keys and values of every layer and position
    (about 3 GB in bf16 for GPT-2 Large at 16 x 1024): scoring never reads one."""
    caches = []
    forward = model.base_model.forward

    def spy(*args, **kwargs):
        out = forward(*args, **kwargs)
        caches.append(out.past_key_values)
        return out

    monkeypatch.setattr(model.base_model, "forward", spy)
    prompts = random_rows(LENGTHS, seed=3)
    score_decisions(model, prompts, LABEL_IDS, batch_size=4)
    continuation_nll(model, prompts, [[1, 2]] * len(prompts), batch_size=4)
    assert len(caches) == 4 and all(cache is None for cache in caches)


def biased_head_model():
    """A 1-layer GPT-2 of 4 tokens whose LM head (as some causal LMs' have) holds a bias: a zero
    weight and the bias ln 1, ln 2, ln 3, ln 4, so that every position's logits are that bias,
    next-token probabilities 0.1, 0.2, 0.3, 0.4 whatever the text."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, n_positions=16, vocab_size=4))
    model.lm_head = torch.nn.Linear(8, 4, bias=True)
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias.copy_(torch.log(torch.tensor([1.0, 2.0, 3.0, 4.0])))
    return model.eval()


def test_the_head_s_bias_counts_in_the_decisions_and_the_likelihoods() -> None:
    """Labels 0, 1, 2: softmax of ln 1, ln 2, ln 3 is 1/6, 2/6, 3/6 (without the bias, 1/3
    each). Continuation 3, 1 after prompt 2: NLL -ln 0.4 - ln 0.2 = ln 12.5 (without it,
    2 ln 4)."""
    import math

    model = biased_head_model()
    probs = score_decisions(model, [[2], [1, 3, 0]], [0, 1, 2], batch_size=2)
    torch.testing.assert_close(probs, torch.tensor([[1, 2, 3], [1, 2, 3]]) / 6.0)
    nll = continuation_nll(model, [[2]], [[3, 1]])
    assert nll.tolist() == pytest.approx([math.log(12.5)])


def test_the_head_s_rows_are_picked_on_the_weight_s_device() -> None:
    """Rows 3 and 1 of the head, picked where torch's default device ("meta", shapes without
    values) is not the weight's (the CPU): the index is made on the weight's device, so the
    head holds those rows' values: on any input, bias ln 4, ln 2."""
    import math

    model = biased_head_model()
    with torch.device("meta"):
        head = Fp32Head(model, [3, 1])
    logits = head(torch.randn(2, 8))
    torch.testing.assert_close(logits, torch.tensor([[math.log(4), math.log(2)]] * 2))
