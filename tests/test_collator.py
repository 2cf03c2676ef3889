"""The batches a run trains on (`pubmedqa_gpt2/training/collator.py`): padding, the labels
that count in the loss, and the logits kept."""

from __future__ import annotations

from pubmedqa_gpt2.prompt import Encoded
from pubmedqa_gpt2.training.collator import Collator
from pubmedqa_gpt2.training.examples import to_features


def test_completion_loss_masks_the_prompt_and_padding():
    short = Encoded([1, 2, 3], [3763, 9, 50256], False)
    long = Encoded([1, 2, 3, 4], [645, 8, 50256], False)
    feats = [to_features(ex, "completion") for ex in (short, long)]
    batch = Collator(pad_id=50256)(feats)
    assert batch["input_ids"].tolist() == [
        [1, 2, 3, 3763, 9, 50256, 50256],
        [1, 2, 3, 4, 645, 8, 50256],
    ]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1, 0], [1] * 7]
    # Logits are kept from the position before the first label (index 2) on: 5 positions.
    assert batch["logits_to_keep"] == 5
    assert batch["labels"].tolist() == [
        [-100, 3763, 9, 50256, -100],  # the end-of-text IS learnt; the padding after it is not
        [-100, -100, 645, 8, 50256],
    ]


def test_all_tokens_loss_masks_only_padding():
    feats = [
        to_features(Encoded([1, 2], [3763], False), "all"),
        to_features(Encoded([1, 2, 3], [645], False), "all"),
    ]
    batch = Collator(pad_id=0)(feats)
    assert batch["logits_to_keep"] == 4
    assert batch["labels"].tolist() == [[1, 2, 3763, -100], [1, 2, 3, 645]]


def test_a_batch_with_no_label_keeps_every_position():
    """Rows whose labels are all -100 (nothing to learn; padding is -100 too): no first label
    to cut at, so it is taken as position 1 (the earliest a label can be predicted from):
    3 - 1 + 1 = 3 logits kept, the whole length, and the labels stay whole."""
    feats = [
        {"input_ids": [1, 2, 3], "labels": [-100, -100, -100]},
        {"input_ids": [4, 5], "labels": [-100, -100]},
    ]
    batch = Collator(pad_id=0)(feats)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0]]
    assert batch["logits_to_keep"] == 3
    assert batch["labels"].tolist() == [[-100, -100, -100], [-100, -100, -100]]
