"""The training loss: next-token cross-entropy on the labelled positions, with the LM head run
on those positions only.

The LM head (width x vocabulary, 50,257 rows for GPT-2) is the largest matrix product of a
small model and, for a large one, the largest activation: [batch, length, vocabulary] logits.
The loss needs the logits of the positions that predict a label and nothing else: with the
loss on the completion, a few dozen tokens after a prompt of hundreds. So while the Trainer
computes the loss, a forward pre-hook hands the head only the rows of those positions, and
`completion_loss` (the Trainer's `compute_loss_func`) scores them against their labels.

The figure is the model's own loss (transformers' `ForCausalLMLoss`): position t predicts
label t + 1, -100 is ignored, the sum is divided by the Trainer's count of labels over the
accumulated batch when it passes one, else it is the mean. Gradient accumulation and the
averaging across processes stay the Trainer's (the `compute_loss_func` contract).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from pubmedqa_gpt2.training.examples import IGNORE_INDEX


def predicting_positions(labels: torch.Tensor) -> torch.Tensor:
    """[batch, length] bool: the positions whose next token is a label."""
    read = torch.zeros_like(labels, dtype=torch.bool)
    read[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return read


@contextmanager
def head_on_labelled_positions(head: torch.nn.Module, labels: torch.Tensor) -> Iterator[None]:
    """While inside, `head` maps only the hidden states of the positions that predict a label:
    [batch, length, width] in, [labelled tokens, vocabulary] out, in (row, position) order."""
    # The rows to keep, as flat indices found here, outside the model: inside it (compiled or
    # not) the hook only gathers them, an op whose output shape is its index's, so a compiled
    # forward has no data-dependent shape and no graph break (a boolean mask would have one).
    rows = predicting_positions(labels).flatten().nonzero().squeeze(1)

    def keep_read_rows(_module, args):
        hidden = args[0]
        flat = hidden.reshape(-1, hidden.shape[-1])
        return (flat.index_select(0, rows.to(hidden.device)), *args[1:])

    handle = head.register_forward_pre_hook(keep_read_rows)
    try:
        yield
    finally:
        handle.remove()


def completion_loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Cross-entropy of the logits `head_on_labelled_positions` produced against their labels."""
    targets = labels[:, 1:][labels[:, 1:] != IGNORE_INDEX].to(outputs.logits.device)
    logits = outputs.logits.float()
    if num_items_in_batch is None:
        return torch.nn.functional.cross_entropy(logits, targets)
    total = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    return total / torch.as_tensor(num_items_in_batch, device=total.device, dtype=total.dtype)
