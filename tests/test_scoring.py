"""Scoring fixed text: batched scores equal one-at-a-time scores and a plain full forward pass."""

from __future__ import annotations

import pytest
import torch

from stages.scoring import continuation_nll, pad_right, score_decisions

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


def test_continuation_nll_rejects_bad_input(model) -> None:
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        continuation_nll(model, [[]], [[1, 2]])
    with pytest.raises(ValueError, match="2 prompts but 1 continuations"):
        continuation_nll(model, [[1], [2]], [[3]])
