"""Batches for the Trainer: right-padded, with labels cut to the positions that count."""

from __future__ import annotations

import torch

from pubmedqa_gpt2.model.scoring import pad_right
from pubmedqa_gpt2.training.examples import IGNORE_INDEX


class Collator:
    """Right-pads a batch, as scoring does; padded positions are masked and not learnt.

    The LM head (vocabulary x width, the largest matrix product of a small model) only has to
    run from the position before the first label on: the batch carries `logits_to_keep` and
    labels cut to those positions, and the model's own loss shifts them as usual. With the
    loss on the completion this skips the prompt, most of each example; the loss is the same.
    The Trainer's loss (`loss.py`) then narrows the head to the labelled positions alone.
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor | int]:
        input_ids, attention_mask = pad_right([f["input_ids"] for f in features], self.pad_id)
        labels, _ = pad_right([f["labels"] for f in features], IGNORE_INDEX)
        labelled = (labels != IGNORE_INDEX).any(dim=0).nonzero()
        first = max(int(labelled[0]), 1) if len(labelled) else 1
        keep = labels.shape[1] - first + 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels[:, -keep:],
            "logits_to_keep": keep,
        }
