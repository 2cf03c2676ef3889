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

import time
from collections import defaultdict
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from pubmedqa_gpt2.model.decoding import DECODERS, auto_batch_size, resolve_mode
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


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _generate_batch(
    model,
    head: Fp32Head,
    rows: Sequence[Sequence[int]],
    budgets: Sequence[int],
    eos_id: int,
    pad_id: int,
    repetition_penalty: float,
    no_repeat_ngram_size: int,
    mode: str,
    stats: dict,
) -> list[list[int]]:
    """Greedy continuations of one batch; row i gets at most `budgets[i]` new tokens.

    The loop's state lives on the model's device: the new tokens in a [batch, max budget]
    buffer, the rows still active, their counts and the seen-token mask; the host asks
    whether any row is still active only every CHECK_EVERY steps, so a GPU is not made to
    wait for the host at each token. Finished rows keep computing (masked, their tokens not
    kept) until then. N-gram blocking reads each row's tokens on the host at every step.
    The model's step runs as `mode` says (`decoding.py`); `stats` adds up the decode steps
    and their seconds.
    """
    device = next(model.parameters()).device
    limit = model.config.n_positions
    ids, mask = pad_left(rows, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    lengths = mask.sum(dim=1)  # real tokens of each row so far
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

    decoder = DECODERS[mode](model, ids, mask, steps)
    hidden = decoder.prefill(positions)
    _synchronize(device)
    start, decoded = time.perf_counter(), 0
    for step in range(steps):
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
        if step + 1 == steps or ((step + 1) % CHECK_EVERY == 0 and not active.any()):
            break
        # Finished rows keep computing (masked, at a valid position) until the batch is done.
        step_ids = torch.where(active, chosen, pad_id)[:, None]
        hidden = decoder.step(step_ids, lengths.clamp(max=limit - 1)[:, None], active)
        lengths = lengths + active
        decoded += 1
    out = []
    for row, n in zip(tokens.tolist(), count.tolist(), strict=True):
        generated = row[:n]
        out.append(generated[:-1] if generated and generated[-1] == eos_id else generated)
    stats["decode_steps"] += decoded
    stats["decode_s"] += time.perf_counter() - start
    if decoder.fallback:
        stats["fallback"] = decoder.fallback
    return out


def _free_gpu_bytes(device: torch.device) -> int | None:
    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None


@torch.inference_mode()
def generate_greedy(
    model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    batch_size: int | str = 16,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    progress: str | None = None,
    decode_step: str = "dynamic",
    stats: dict | None = None,
) -> list[list[int]]:
    """The greedy continuation of each prompt, without its end-of-text token, in input order.

    Each prompt gets at most `max_new_tokens`, and never more than fit the model's positions.
    Prompts are generated longest first (batches of similar length, the memory peak early).
    `batch_size` "auto" sizes the batches to the GPU's free memory (`decoding.auto_batch_size`);
    `decode_step` says how each step runs (`decoding.py`). `stats`, a dict, receives the mode
    and batch size used, the decode steps run (prompts' own pass not counted), their seconds
    and milliseconds per step, and why a CUDA graph was not used, if it was asked for and
    failed. `progress` names a progress bar; None shows none.
    """
    model.eval()
    device = next(model.parameters()).device
    limit = model.config.n_positions
    head = Fp32Head(model)
    for i, prompt in enumerate(prompts):
        if not prompt or len(prompt) > limit:
            raise ValueError(f"prompt {i} has {len(prompt)} tokens; need 1 to {limit}")
    mode = resolve_mode(decode_step, device)
    if batch_size == "auto":
        longest = max((len(p) for p in prompts), default=0) + max_new_tokens
        element = next(model.parameters()).element_size()
        batch_size = auto_batch_size(
            model.config, longest, element, _free_gpu_bytes(device), len(prompts)
        )
    stats = {} if stats is None else stats
    stats.update(decode_step=mode, generation_batch_size=batch_size, decode_steps=0, decode_s=0.0)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    with tqdm(total=len(prompts), desc=progress, unit="ex", disable=progress is None) as bar:
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            rows = [prompts[i] for i in index]
            budgets = [min(max_new_tokens, limit - len(r)) for r in rows]
            results = _generate_batch(
                model, head, rows, budgets, eos_id, pad_id, repetition_penalty,
                no_repeat_ngram_size, mode, stats,
            )  # fmt: skip
            for i, tokens in zip(index, results, strict=True):
                out[i] = tokens
            bar.update(len(index))
    if stats["decode_steps"]:
        stats["decode_step_ms"] = 1e3 * stats["decode_s"] / stats["decode_steps"]
    return out
