"""The Trainer of both phases: Hugging Face's, with the dev decisions' accuracy added to each
evaluation, read the way the evaluate stage reads decisions."""

from __future__ import annotations

import torch
from transformers import Trainer

from pubmedqa_gpt2.model.scoring import score_decisions
from pubmedqa_gpt2.prompt import Encoded


def decision_accuracy(
    model, examples: list[Encoded], label_ids: list[int], batch_size: int, pad_id: int
) -> float:
    """Share of examples whose most likely decision token is the gold one."""
    probabilities = score_decisions(
        model, [ex.prompt_ids for ex in examples], label_ids, batch_size=batch_size, pad_id=pad_id
    )
    gold = torch.tensor([label_ids.index(ex.completion_ids[0]) for ex in examples])
    return (probabilities.argmax(dim=1) == gold).float().mean().item()


class DecisionTrainer(Trainer):
    """A Trainer whose evaluation also reports `<prefix>_accuracy` on the dev decisions."""

    def __init__(self, *args, dev_examples: list[Encoded], label_ids: list[int], **kwargs):
        super().__init__(*args, **kwargs)
        self.dev_examples = dev_examples
        self.label_ids = label_ids

    def evaluation_loop(
        self,
        dataloader,
        description,
        prediction_loss_only=None,
        ignore_keys=None,
        metric_key_prefix="eval",
    ):
        output = super().evaluation_loop(
            dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
        )
        # Every process scores the whole (small) dev split on its own copy of the weights,
        # so all of them agree on the best checkpoint.
        model = self.model.get_base_model() if hasattr(self.model, "peft_config") else self.model
        # Under the autocast that training and dev loss use, so that the checkpoint is
        # chosen on the numbers the model computes everywhere else.
        with self.accelerator.autocast():
            output.metrics[f"{metric_key_prefix}_accuracy"] = decision_accuracy(
                model,
                self.dev_examples,
                self.label_ids,
                self.args.eval_batch_size,
                self.processing_class.pad_token_id,
            )
        return output
