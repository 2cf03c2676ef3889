"""The model before fine-tuning: random weights drawn from `model.seed`, in the dtype asked
for (`pubmedqa_gpt2/model/loading.py`), as the train stage starts from them."""

from __future__ import annotations

import pytest
import torch

from pubmedqa_gpt2.model.loading import build_model, load_model
from pubmedqa_gpt2.training.phase import PHASE2
from pubmedqa_gpt2.training.recipe import starting_model

from .committed import committed_params


def weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.fixture
def params_of_seed(tiny_model_params):
    def params(seed: int):
        return committed_params({"model": {**tiny_model_params.model_dump(), "seed": seed}})

    return params


def test_model_seed_draws_the_random_weights(params_of_seed):
    """The same seed gives the same weights; another seed other weights, in every randomly
    drawn matrix (layer norms start at 1 and 0 whatever the seed), also where train starts."""
    first = weights(build_model(params_of_seed(0).model))
    again = weights(build_model(params_of_seed(0).model))
    other = weights(build_model(params_of_seed(1).model))
    assert first.keys() == again.keys() == other.keys()
    drawn = [name for name in first if name.endswith(("wte.weight", "wpe.weight", "attn.weight"))]
    assert drawn
    for name in first:
        torch.testing.assert_close(again[name], first[name], rtol=0, atol=0, msg=name)
    for name in drawn:
        assert not torch.equal(other[name], first[name]), name
    started = weights(starting_model(params_of_seed(1), PHASE2))
    for name in first:
        torch.testing.assert_close(started[name], other[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_the_weights_are_in_the_dtype_asked_for(tiny_model_params, tmp_path, dtype):
    built = build_model(tiny_model_params, dtype=dtype)
    assert {p.dtype for p in built.parameters()} == {dtype}
    build_model(tiny_model_params).save_pretrained(tmp_path / "saved")
    loaded = load_model(tmp_path / "saved", dtype=dtype)
    assert {p.dtype for p in loaded.parameters()} == {dtype}


def test_without_a_dtype_the_weights_are_fp32(tiny_model_params):
    """Master weights for training: fp32 (AMP on top); train asks for it explicitly too."""
    assert {p.dtype for p in build_model(tiny_model_params).parameters()} == {torch.float32}
    params = committed_params({"model": tiny_model_params.model_dump()})
    assert {p.dtype for p in starting_model(params, PHASE2).parameters()} == {torch.float32}
