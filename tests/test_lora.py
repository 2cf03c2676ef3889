"""LoRA adapters (`pubmedqa_gpt2/training/lora.py`): each setting reaches every adapted layer
as peft defines it (scaling alpha / r, dropout p), on the three GPT-2 projections, and the
merged model computes what base + B A computes. The whole LoRA run, last."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from pubmedqa_gpt2.core import paths
from pubmedqa_gpt2.model.loading import build_model, load_model
from pubmedqa_gpt2.training.lora import apply_lora
from stages import train as stage

from .committed import committed_params
from .training_helpers import curve_steps, read_metrics, set_params


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


def test_lora_run_saves_the_base_plus_the_trained_low_rank_update(
    workdir, tiny, tiny_model_params, capsys
):
    from safetensors import safe_open

    from pubmedqa_gpt2.model.loading import build_model

    params = tiny(epochs=1, save_steps=2, gradient_checkpointing=True, keep_checkpoints=True)
    r, alpha = 4, 8
    params["train"]["lora"] = {"enabled": True, "r": r, "alpha": alpha}
    set_params(workdir, params)
    stage.main()
    metrics = read_metrics(workdir)
    # By hand, width 64, r = 4: A and B of c_attn 4 x (64 + 192), attention c_proj 4 x (64 + 64),
    # c_fc 4 x (64 + 256), MLP c_proj 4 x (256 + 64): 4,096 a block, 8,192 in the 2 blocks. The
    # base has 3,382,080 (token embeddings 50,257 x 64, positions 1,024 x 64, 49,984 a block,
    # the final layer norm 128); the memory estimate counts the frozen ones as weights only.
    assert (metrics["trainable_parameters"], metrics["total_parameters"]) == (8_192, 3_390_272)
    assert "need 0.0 GB (3,390,272 parameters, 8,192 trained)" in capsys.readouterr().out
    with safe_open(workdir / paths.FINETUNED / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and not any("lora" in k for k in keys)
    # save_steps=2 evaluates at steps 2 and 3 (the epoch end).
    assert curve_steps(workdir, "eval/loss") == ["2", "3"]

    # The saved weights are W + (alpha / r) * (B A)^T (GPT-2's Conv1D stores W as in x out),
    # with A and B the adapters of the checkpoint selected on dev; everything else is the base.
    base = build_model(tiny_model_params).state_dict()
    saved = load_model(workdir / paths.FINETUNED).state_dict()
    best = workdir / paths.CHECKPOINTS / f"checkpoint-{metrics['best_step']}"
    adapters = load_file(best / "adapter_model.safetensors")
    updated = set()
    for name, weight in saved.items():
        a_key = f"base_model.model.{name.removesuffix('.weight')}.lora_A.weight"
        if a_key not in adapters:
            torch.testing.assert_close(weight, base[name], rtol=0, atol=0, msg=name)
            continue
        a, b = adapters[a_key], adapters[a_key.replace("lora_A", "lora_B")]
        delta = (alpha / r) * (b @ a).T
        assert delta.abs().max() > 1e-4, name  # training moved the adapter
        torch.testing.assert_close(weight, base[name] + delta, rtol=1e-5, atol=1e-6, msg=name)
        updated.add(name)
    # By hand: the tiny model's 2 blocks, each with its four Conv1D weights (GPT-2's c_proj
    # name is both the attention's and the MLP's output projection).
    assert updated == {
        f"transformer.h.{i}.{layer}.weight"
        for i in (0, 1)
        for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
