"""LoRA adapters (`pubmedqa_gpt2/training/lora.py`): each setting reaches every adapted layer
as peft defines it (scaling alpha / r, dropout p), on the three GPT-2 projections, and the
merged model computes what base + B A computes. The whole LoRA run: tests/test_train.py."""

from __future__ import annotations

import pytest
import torch

from pubmedqa_gpt2.model.loading import build_model
from pubmedqa_gpt2.training.lora import apply_lora

from .committed import committed_params


@pytest.fixture
def lora_model(tiny_model_params):
    lora = {"enabled": True, "r": 4, "alpha": 16, "dropout": 0.25}
    train = committed_params({"train": {"lora": lora, "seed": 3}}).train
    return apply_lora(build_model(tiny_model_params), train)


def adapted_layers(model) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in model.named_modules() if hasattr(m, "lora_A")}


def test_each_setting_reaches_every_adapted_projection(lora_model):
    layers = adapted_layers(lora_model)
    # 2 blocks x (c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)
    assert sorted({name.rsplit(".", 1)[-1] for name in layers}) == ["c_attn", "c_fc", "c_proj"]
    assert len(layers) == 8
    for name, layer in layers.items():
        assert layer.r["default"] == 4, name
        assert layer.scaling["default"] == 16 / 4, name  # alpha / r
        assert layer.lora_dropout["default"].p == 0.25, name
        assert layer.fan_in_fan_out, name  # GPT-2's Conv1D stores its weights transposed
    trainable = {n for n, p in lora_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_the_adapters_start_from_the_training_seed(tiny_model_params):
    def first_a(seed):
        train = committed_params({"train": {"lora": {"enabled": True}, "seed": seed}}).train
        model = apply_lora(build_model(tiny_model_params), train)
        return next(m for m in model.modules() if hasattr(m, "lora_A")).lora_A["default"].weight

    assert torch.equal(first_a(3), first_a(3)) and not torch.equal(first_a(3), first_a(4))


def test_a_trained_adapter_merges_into_the_weights_it_adapts(lora_model):
    for layer in adapted_layers(lora_model).values():
        torch.nn.init.normal_(layer.lora_B["default"].weight)  # B starts at 0: no update yet
    lora_model.eval()  # no dropout
    ids = torch.tensor([[464, 3290, 318, 257, 1332]])
    with torch.no_grad():
        adapted = lora_model(ids).logits
        merged = lora_model.merge_and_unload()(ids).logits
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)
