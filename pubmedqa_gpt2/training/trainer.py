"""The Trainer of both phases: Hugging Face's, with the dev decisions' accuracy added to each
evaluation, read the way the evaluate stage reads decisions, and a quiet console: the logged
figures in the progress bar's postfix, and one known-harmless warning silenced."""

from __future__ import annotations

import logging

import torch
from transformers import Trainer
from transformers.trainer_callback import ProgressCallback

from pubmedqa_gpt2.model.scoring import score_decisions
from pubmedqa_gpt2.prompt import Encoded
from pubmedqa_gpt2.training.callbacks import PostfixProgress
from pubmedqa_gpt2.training.loss import completion_loss, head_on_labelled_positions

# Harmless: GPT-2's lm_head is tied to the token embeddings (one tensor), so safetensors stores
# it once, under transformer.wte.weight, and loading the best checkpoint at the end of training
# restores the head with it. The Trainer (transformers 5) still warns that lm_head.weight is
# missing. Only this exact message is dropped; any other missing or unexpected key is reported.
TIED_HEAD_MISSING = "There were missing keys in the checkpoint model loaded: ['lm_head.weight']."


class TiedHeadIsNotMissing(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != TIED_HEAD_MISSING


TIED_HEAD_FILTER = TiedHeadIsNotMissing()


def decision_accuracy(
    model,
    examples: list[Encoded],
    label_ids: list[int],
    batch_size: int,
    pad_id: int,
    progress: str | None = None,
) -> float:
    """Share of examples whose most likely decision token is the gold one; `progress` names
    a progress bar (None: none)."""
    prompts = [ex.prompt_ids for ex in examples]
    probabilities = score_decisions(
        model, prompts, label_ids, batch_size=batch_size, pad_id=pad_id, progress=progress
    )
    gold = torch.tensor([label_ids.index(ex.completion_ids[0]) for ex in examples])
    return (probabilities.argmax(dim=1) == gold).float().mean().item()


class DecisionTrainer(Trainer):
    """A Trainer whose loss runs the LM head on the labelled positions only (`loss.py`) and
    whose evaluation also reports `<prefix>_accuracy` on the dev decisions."""

    def __init__(self, *args, dev_examples: list[Encoded], label_ids: list[int], **kwargs):
        super().__init__(*args, compute_loss_func=completion_loss, **kwargs)
        self.dev_examples = dev_examples
        self.label_ids = label_ids
        if self.pop_callback(ProgressCallback) is not None:
            self.add_callback(PostfixProgress())
        if getattr(self.model.config, "tie_word_embeddings", False):
            logging.getLogger("transformers.trainer").addFilter(TIED_HEAD_FILTER)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        with head_on_labelled_positions(head, inputs["labels"]):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

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
                progress="dev accuracy" if self.is_world_process_zero() else None,
            )
        return output
