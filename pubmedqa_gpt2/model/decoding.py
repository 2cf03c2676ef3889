"""How one greedy decode step runs: the KV cache it reads and how its kernels are launched.

`evaluate.decode_step` picks one of:
- `dynamic`: transformers' DynamicCache, grown by one column a step, and an attention mask
  concatenated likewise. Every step dispatches the model's ops one by one from Python (for a
  36-layer GPT-2 about 1,500), so on a GPU the host, not the device, sets the pace.
- `static`: a StaticCache allocated once per batch for prompt + new tokens, and an attention
  mask of that fixed width written in place; the decode step sees the same shapes every time
  and is given the 4-D mask itself, so no mask is built (no host sync) inside the model.
- `cuda_graph`: `static`, with the decode step captured once per batch as a CUDA graph and then
  replayed: one launch per step instead of one per op. The first decode step runs eagerly on a
  side stream (the warm-up the capture needs); if the capture fails, decoding goes on eagerly
  with the static cache and `fallback` says why. CUDA only.
- `auto`: `cuda_graph` on a CUDA device, `dynamic` elsewhere.
All of them give the same tokens (tests/test_decoding.py): only where the work happens differs.
"""

from __future__ import annotations

import torch

MODES = ("auto", "dynamic", "static", "cuda_graph")
# Rows of an automatically sized generation batch (`evaluate.generation_batch_size: auto`).
AUTO_BATCH_CPU = 16
AUTO_BATCH_MAX = 64  # beyond this a batch waits longer for its longest answer than it gains
AUTO_MEMORY_SHARE = 0.5  # of the free GPU memory, for the KV cache and the step's buffers


def resolve_mode(mode: str, device: torch.device) -> str:
    """The mode `auto` stands for on `device`; a refusal for `cuda_graph` off CUDA."""
    if mode not in MODES:
        raise ValueError(f"decode_step must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "auto":
        return "cuda_graph" if device.type == "cuda" else "dynamic"
    if mode == "cuda_graph" and device.type != "cuda":
        raise ValueError(f"decode_step cuda_graph needs a CUDA device; the model is on {device}")
    return mode


def row_bytes(config, length: int, element_bytes: int) -> int:
    """GPU memory one generated row needs: its keys and values at every layer for `length`
    positions, and its fp32 logits (and the penalised copy) over the vocabulary."""
    kv = 2 * config.n_layer * length * config.n_embd * element_bytes
    return kv + 3 * 4 * config.vocab_size


def auto_batch_size(
    config, length: int, element_bytes: int, free_bytes: int | None, prompts: int
) -> int:
    """Rows per generation batch: AUTO_BATCH_CPU without a GPU (`free_bytes` None), else as many
    as AUTO_MEMORY_SHARE of the free memory holds at `length` positions, between 1 and
    AUTO_BATCH_MAX, and never more than there are prompts."""
    if free_bytes is None:
        rows = AUTO_BATCH_CPU
    else:
        rows = int(AUTO_MEMORY_SHARE * free_bytes) // row_bytes(config, length, element_bytes)
        rows = max(1, min(rows, AUTO_BATCH_MAX))
    return max(1, min(rows, prompts))


class DynamicDecoder:
    """The KV cache grows by a column a step (transformers' DynamicCache)."""

    fallback: str | None = None

    def __init__(self, model, ids: torch.Tensor, mask: torch.Tensor, steps: int):
        from transformers import DynamicCache

        self.model, self.ids, self.mask = model.base_model, ids, mask
        self.cache = DynamicCache()

    def _forward(self, ids, mask, positions) -> torch.Tensor:
        # The cache is the second positional parameter (`past_key_values`, later `cache`).
        out = self.model(
            ids, self.cache, attention_mask=mask, position_ids=positions, use_cache=True
        )
        return out.last_hidden_state[:, -1]

    def prefill(self, positions: torch.Tensor) -> torch.Tensor:
        """The last hidden state of every prompt, the cache filled with the prompts."""
        return self._forward(self.ids, self.mask, positions)

    def step(self, ids: torch.Tensor, positions: torch.Tensor, active: torch.Tensor):
        """One new token per row ([batch, 1]); `active` rows see it, finished rows do not."""
        self.mask = torch.cat([self.mask, active.long()[:, None]], dim=1)
        return self._forward(ids, self.mask, positions)


class StaticDecoder(DynamicDecoder):
    """A StaticCache and a fixed-width mask: prompt width + `steps` positions per row."""

    def __init__(self, model, ids: torch.Tensor, mask: torch.Tensor, steps: int):
        from transformers import StaticCache

        self.model = model.base_model
        self.ids = ids
        width = ids.shape[1] + steps
        self.cache = StaticCache(config=model.config, max_cache_len=width)
        self.mask = torch.zeros((ids.shape[0], width), dtype=torch.long, device=ids.device)
        self.mask[:, : ids.shape[1]] = mask
        self.column = torch.tensor([ids.shape[1]], device=ids.device)  # the next token's
        self.additive = model.config._attn_implementation != "sdpa"
        self.dtype = next(model.parameters()).dtype

    def _mask_4d(self) -> torch.Tensor:
        """[batch, 1, 1, width]: what each new token may attend to (boolean for SDPA, else
        additive, as transformers' own masks are)."""
        keep = self.mask[:, None, None, :].bool()
        if self.additive:
            return torch.zeros(keep.shape, dtype=self.dtype, device=keep.device).masked_fill(
                ~keep, torch.finfo(self.dtype).min
            )
        return keep

    def _write_mask(self, active: torch.Tensor) -> None:
        self.mask.index_copy_(1, self.column, active.long()[:, None])
        self.column += 1

    def _decode(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self._forward(ids, self._mask_4d(), positions)

    def step(self, ids: torch.Tensor, positions: torch.Tensor, active: torch.Tensor):
        self._write_mask(active)
        return self._decode(ids, positions)


class GraphDecoder(StaticDecoder):
    """StaticDecoder whose decode step is captured as a CUDA graph after one eager step."""

    def __init__(self, model, ids: torch.Tensor, mask: torch.Tensor, steps: int):
        super().__init__(model, ids, mask, steps)
        self.graph = None
        self.ids_in = self.positions_in = self.hidden_out = None

    def step(self, ids: torch.Tensor, positions: torch.Tensor, active: torch.Tensor):
        self._write_mask(active)
        if self.graph is not None:
            self.ids_in.copy_(ids)
            self.positions_in.copy_(positions)
            self.graph.replay()
            return self.hidden_out.clone()
        if self.fallback is not None:
            return self._decode(ids, positions)
        # The warm-up the capture needs, on a side stream: a real step, not a wasted one.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            hidden = self._decode(ids, positions)
        torch.cuda.current_stream().wait_stream(side)
        self._capture(ids, positions)
        return hidden

    def _capture(self, ids: torch.Tensor, positions: torch.Tensor) -> None:
        self.ids_in, self.positions_in = ids.clone(), positions.clone()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.hidden_out = self._decode(self.ids_in, self.positions_in)
        except RuntimeError as exc:  # a host sync or an unsupported op inside the model
            self.fallback = f"CUDA graph capture failed ({str(exc).splitlines()[0]})"
            return
        self.graph = graph


DECODERS = {"dynamic": DynamicDecoder, "static": StaticDecoder, "cuda_graph": GraphDecoder}
