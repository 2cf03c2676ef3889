"""Scoring fixed text: the decision (" yes", " no", " maybe" after the prompt) and the
likelihood of a reference continuation (the perplexity of the long answer).

One forward pass per batch. Rows are right-padded, so every real token keeps the absolute
position it has when scored alone (GPT-2 has learned position embeddings). Only the positions
that are read go through the LM head (the last real one for the decision, those that predict
the continuation for its likelihood), so a batch never materialises a
[batch, length, vocabulary] logits tensor.

Those logits are computed in fp32 from the (possibly bf16) hidden states: GPT-2's logits are
around 45 in size, where bf16's step is 0.25 nats, enough to tie or swap " yes" and " no".
No KV cache is built: nothing here decodes further.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm


def pad_right(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token rows into (input_ids, attention_mask)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def last_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The decoder's final hidden states [batch, length, width], without the LM head or a cache."""
    return model.base_model(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state


class Fp32Head:
    """The model's LM head in fp32, for the vocabulary rows asked for (all by default).

    The weight is cast once, when this is built: for GPT-2 Large in bf16 the whole head is
    257 MB in fp32, so build it once per pass, not per batch. Autocast (the Trainer's) is
    switched off around the product, which it would otherwise run in bf16 again.
    """

    def __init__(self, model, rows: Sequence[int] | None = None):
        head = model.get_output_embeddings()
        weight, bias = head.weight, head.bias
        if rows is not None:
            index = torch.as_tensor(list(rows), device=weight.device)
            weight = weight[index]
            bias = None if bias is None else bias[index]
        self.weight = weight.float()
        self.bias = None if bias is None else bias.float()

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            return torch.nn.functional.linear(hidden.float(), self.weight, self.bias)


@torch.inference_mode()
def score_decisions(
    model,
    prompts: Sequence[Sequence[int]],
    label_ids: Sequence[int],
    batch_size: int = 16,
    pad_id: int = 0,
    progress: str | None = None,
) -> torch.Tensor:
    """Probabilities [n, len(label_ids)] of each label token at the end of each prompt.

    The softmax is taken over the label tokens only: the prediction is their argmax, and the
    probabilities say how sure the model is among the allowed answers. Prompts are scored in
    order of length so that batches carry little padding; the result is in input order.
    `progress` names a progress bar; None shows none.
    """
    model.eval()
    device = next(model.parameters()).device
    head = Fp32Head(model, label_ids)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = torch.empty((len(prompts), len(label_ids)), dtype=torch.float32)
    for start in tqdm(
        range(0, len(order), batch_size), desc=progress, unit="batch", disable=progress is None
    ):
        index = order[start : start + batch_size]
        ids, mask = pad_right([prompts[i] for i in index], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        hidden = last_hidden(model, ids, mask)
        last = mask.sum(dim=1) - 1
        final = hidden[torch.arange(len(index), device=device), last]
        logits = head(final)
        out[index] = torch.softmax(logits, dim=-1).cpu()
    return out


# Rows of [rows, vocabulary] fp32 logits made at a time when scoring continuations: 32 rows of
# GPT-2's 50,257 are 6.4 MB, which the CPU allocator reuses from one chunk to the next, where a
# whole batch's (16 answers of ~50 tokens: 160 MB) is mapped and page-faulted in afresh each
# time. On this project's 2-core CPU the smoke run's perplexity pass took 4.95 s instead of
# 7.37 s. The figures agree to fp32 rounding (a product of fewer rows may be blocked
# differently): in the smoke run one answer's NLL of 500 differed, by 1 part in 10^9, and the
# perplexity in its 12th significant digit.
HEAD_ROWS = 32


def token_nll(head: Fp32Head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood (nats) of each target token [n] from its hidden state [n, width],
    the logits made `HEAD_ROWS` rows at a time."""
    return torch.cat(
        [
            torch.nn.functional.cross_entropy(
                head(hidden[start : start + HEAD_ROWS]),
                targets[start : start + HEAD_ROWS],
                reduction="none",
            )
            for start in range(0, len(targets), HEAD_ROWS)
        ]
    )


@torch.inference_mode()
def continuation_nll(
    model,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    batch_size: int = 16,
    pad_id: int = 0,
    progress: str | None = None,
) -> torch.Tensor:
    """Negative log-likelihood [n] (nats, summed over tokens) of each continuation after its
    prompt: the model reads prompt + continuation and is scored on the continuation only.

    Rows are scored in order of length; the result is in input order. `progress` names a
    progress bar; None shows none.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"prompt {i} is empty: the first continuation token needs a context")
    model.eval()
    device = next(model.parameters()).device
    head = Fp32Head(model)
    lengths = [len(p) + len(c) for p, c in zip(prompts, continuations, strict=True)]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    out = torch.zeros(len(prompts), dtype=torch.float64)
    for start in tqdm(
        range(0, len(order), batch_size), desc=progress, unit="batch", disable=progress is None
    ):
        index = [i for i in order[start : start + batch_size] if continuations[i]]
        if not index:
            continue
        ids, mask = pad_right([list(prompts[i]) + list(continuations[i]) for i in index], pad_id)
        hidden = last_hidden(model, ids.to(device), mask.to(device))
        # Position t predicts token t + 1: row r is scored at len(prompt) - 1 ... length - 2.
        read = torch.zeros_like(mask, dtype=torch.bool)
        row_of = []
        for r, i in enumerate(index):
            read[r, len(prompts[i]) - 1 : lengths[i] - 1] = True
            row_of += [r] * len(continuations[i])
        targets = torch.cat([torch.as_tensor(continuations[i]) for i in index]).to(device)
        nll = token_nll(head, hidden[read.to(device)], targets)
        sums = torch.zeros(len(index), dtype=torch.float64)
        sums.index_add_(0, torch.as_tensor(row_of), nll.double().cpu())
        out[index] = sums
    return out
