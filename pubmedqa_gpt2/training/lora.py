"""LoRA adapters (peft) on GPT-2's attention and MLP projections."""

from __future__ import annotations

from peft import LoraConfig, get_peft_model
from transformers import set_seed

from pubmedqa_gpt2.core.config import TrainParams

LORA_TARGETS = ["c_attn", "c_proj", "c_fc"]


def apply_lora(model, train: TrainParams):
    """Wrap the model with LoRA adapters on the attention and MLP projections."""
    set_seed(train.seed)  # the adapters' initialisation
    config = LoraConfig(
        r=train.lora.r,
        lora_alpha=train.lora.alpha,
        lora_dropout=train.lora.dropout,
        target_modules=LORA_TARGETS,
        fan_in_fan_out=True,  # GPT-2's projections are Conv1D, weights stored transposed
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
