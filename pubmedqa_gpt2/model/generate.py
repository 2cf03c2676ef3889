"""Greedy generation of the long answer: batched, with a KV cache.

Prompts are left-padded so that every row's next token is read in the same (last) column.
Explicit position ids give each real token the absolute position it has when generated alone
(GPT-2 learns its position embeddings) and the attention mask hides the padding, so a prompt
gets the same tokens whatever batch it is in. A row stops at end-of-text, after
`max_new_tokens`, or when prompt + new tokens reach the model's `n_positions`. The repetition
penalty and n-gram blocking (as in Hugging Face `generate`: prompt and generated tokens both
count) look at a row's real tokens only, never at its padding. The next token is read from
fp32 logits (see `scoring.py`), whatever the model's dtype.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from pubmedqa_gpt2.model.scoring import Fp32Head


def pad_left(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token rows into (input_ids, attention_mask)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.as_tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids, mask


class NgramBlocker:
    """Bans, per row, every token that would repeat an n-gram already in that row."""

    def __init__(self, n: int, rows: Sequence[Sequence[int]]):
        self.n = n
        self.rows = [list(r) for r in rows]
        self.followers: list[defaultdict[tuple[int, ...], set[int]]] = []
        for row in self.rows:
            followers: defaultdict[tuple[int, ...], set[int]] = defaultdict(set)
            for end in range(n, len(row) + 1):
                followers[tuple(row[end - n : end - 1])].add(row[end - 1])
            self.followers.append(followers)

    def append(self, row: int, token: int) -> None:
        """Extend `row` by `token` and record the n-gram it ends."""
        tokens = self.rows[row]
        tokens.append(token)
        if len(tokens) >= self.n:
            self.followers[row][tuple(tokens[len(tokens) - self.n : -1])].add(token)

    def banned(self, row: int) -> list[int]:
        """Tokens that must not come next in `row`."""
        tokens = self.rows[row]
        if len(tokens) < self.n - 1:
            return []
        return sorted(self.followers[row].get(tuple(tokens[len(tokens) - self.n + 1 :]), ()))


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty: the logits of seen tokens move towards less likely."""
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalized, logits)


CHECK_EVERY = 8  # decoding steps between checks that every row has finished (a host sync)


def _generate_batch(
    model,
    head: Fp32Head,
    rows: Sequence[Sequence[int]],
    budgets: Sequence[int],
    eos_id: int,
    pad_id: int,
    repetition_penalty: float,
    no_repeat_ngram_size: int,
) -> list[list[int]]:
    """Greedy continuations of one batch; row i gets at most `budgets[i]` new tokens.

    The loop's state lives on the model's device: the new tokens in a [batch, max budget]
    buffer, the rows still active, their counts and the seen-token mask; the host asks
    whether any row is still active only every CHECK_EVERY steps, so a GPU is not made to
    wait for the host at each token. Finished rows keep computing (masked, their tokens not
    kept) until then. N-gram blocking reads each row's tokens on the host at every step.
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    limit = model.config.n_positions
    ids, mask = pad_left(rows, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    steps = max(budgets)
    budget = torch.as_tensor(list(budgets), device=device)
    active = budget > 0
    count = torch.zeros_like(budget)
    tokens = torch.full((len(rows), max(steps, 1)), pad_id, dtype=torch.long, device=device)
    every_row = torch.arange(len(rows), device=device)

    seen = None
    if repetition_penalty != 1.0:
        seen = torch.zeros((len(rows), head.weight.shape[0]), dtype=torch.long, device=device)
        seen = seen.scatter_add_(1, ids, mask) > 0
    blocker = NgramBlocker(no_repeat_ngram_size, rows) if no_repeat_ngram_size > 0 else None

    cache = DynamicCache()
    step_ids = ids
    for step in range(steps):
        # The cache is the second positional parameter (`past_key_values`, later `cache`).
        hidden = model.base_model(
            step_ids, cache, attention_mask=mask, position_ids=positions, use_cache=True
        ).last_hidden_state[:, -1]
        logits = head(hidden)
        if seen is not None:
            logits = penalize_repeats(logits, seen, repetition_penalty)
        if blocker is not None:
            banned = [(row, t) for row in range(len(rows)) for t in blocker.banned(row)]
            if banned:
                logits[tuple(torch.tensor(banned, device=device).T)] = float("-inf")
        chosen = logits.argmax(dim=-1)
        tokens[:, step] = torch.where(active, chosen, pad_id)
        if blocker is not None:
            for row, (token, on) in enumerate(zip(chosen.tolist(), active.tolist(), strict=True)):
                if on:
                    blocker.append(row, token)
        if seen is not None:
            seen[every_row, chosen] |= active
        count += active
        active &= (chosen != eos_id) & (count < budget)
        # Finished rows keep computing (masked, at a valid position) until the batch is done.
        step_ids = torch.where(active, chosen, pad_id)[:, None]
        positions = mask.sum(dim=1, keepdim=True).clamp(max=limit - 1)
        mask = torch.cat([mask, active.long()[:, None]], dim=1)
        if (step + 1) % CHECK_EVERY == 0 and not active.any():
            break
    out = []
    for row, n in zip(tokens.tolist(), count.tolist(), strict=True):
        generated = row[:n]
        out.append(generated[:-1] if generated and generated[-1] == eos_id else generated)
    return out


@torch.inference_mode()
def generate_greedy(
    model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    batch_size: int = 16,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    progress: str | None = None,
) -> list[list[int]]:
    """The greedy continuation of each prompt, without its end-of-text token, in input order.

    Each prompt gets at most `max_new_tokens`, and never more than fit the model's positions.
    Prompts are generated longest first (batches of similar length, the memory peak early).
    `progress` names a progress bar; None shows none.
    """
    model.eval()
    limit = model.config.n_positions
    head = Fp32Head(model)
    for i, prompt in enumerate(prompts):
        if not prompt or len(prompt) > limit:
            raise ValueError(f"prompt {i} has {len(prompt)} tokens; need 1 to {limit}")
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    with tqdm(total=len(prompts), desc=progress, unit="ex", disable=progress is None) as bar:
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            rows = [prompts[i] for i in index]
            budgets = [min(max_new_tokens, limit - len(r)) for r in rows]
            results = _generate_batch(
                model, head, rows, budgets, eos_id, pad_id, repetition_penalty, no_repeat_ngram_size
            )
            for i, tokens in zip(index, results, strict=True):
                out[i] = tokens
            bar.update(len(index))
    return out
