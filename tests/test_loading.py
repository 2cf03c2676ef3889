"""The model before fine-tuning: random weights drawn from `model.seed`, in the dtype asked
for (`pubmedqa_gpt2/model/loading.py`), as the train stage starts from them."""

from __future__ import annotations

import pytest
import torch

from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.model.loading import build_model, load_model
from pubmedqa_gpt2.training.phase import TRAIN_PHASE
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
    started = weights(starting_model(params_of_seed(1), TRAIN_PHASE))
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
    assert {p.dtype for p in starting_model(params, TRAIN_PHASE).parameters()} == {torch.float32}


@pytest.mark.parametrize(
    ("name", "shape"),
    [  # the public checkpoints' config.json (huggingface.co/gpt2, -medium, -large, -xl)
        ("gpt2", (12, 768, 12)),
        ("gpt2-medium", (24, 1024, 16)),
        ("gpt2-large", (36, 1280, 20)),
        ("gpt2-xl", (48, 1600, 25)),
    ],
)
def test_a_preset_has_its_public_checkpoint_s_shape(name, shape):
    from pubmedqa_gpt2.model.loading import random_config

    params = committed_params({"model": {"name": name, "init": "random", "overrides": {}}}).model
    config = random_config(params)
    assert (config.n_layer, config.n_embd, config.n_head) == shape
    assert (config.vocab_size, config.n_positions) == (50257, 1024)


def test_overrides_and_a_local_config_shape_the_random_model(tmp_path):
    from transformers import GPT2Config

    from pubmedqa_gpt2.model.loading import random_config

    GPT2Config(n_layer=3, n_embd=96, n_head=4).save_pretrained(tmp_path)
    model = {"name": str(tmp_path), "init": "random", "overrides": {"n_layer": 1}}
    config = random_config(committed_params({"model": model}).model)
    assert (config.n_layer, config.n_embd, config.n_head) == (1, 96, 4)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            {"name": "gpt3", "init": "random"},
            "model.name: 'gpt3' is not a GPT-2 preset (gpt2, gpt2-medium, gpt2-large, gpt2-xl) "
            "nor a directory with config.json, so model.init=random cannot build it",
        ),
        (
            {"name": "gpt2", "init": "random", "overrides": {"n_layers": 2}},
            "model.overrides.n_layers: GPT2Config has no such field",
        ),
        (
            {"name": "gpt2", "init": "pretrained", "overrides": {"n_layer": 2}},
            "model.overrides: only used with model.init=random; set it to {}",
        ),
    ],
)
def test_a_model_the_params_cannot_build_is_one_line_naming_the_key(model, message):
    from pubmedqa_gpt2.core.errors import StageError

    with pytest.raises(StageError) as err:
        build_model(committed_params({"model": {"overrides": {}, **model}}).model)
    assert str(err.value) == message


def test_missing_weights_or_tokenizer_are_one_line_naming_the_setting(tmp_path):
    from pubmedqa_gpt2.core.errors import StageError
    from pubmedqa_gpt2.model.loading import load_tokenizer

    with pytest.raises(StageError) as err:
        load_model(tmp_path / "nothing", what="--model x")
    assert str(err.value).startswith(
        f"--model x: cannot load a model from '{tmp_path / 'nothing'}': "
    )
    assert "\n" not in str(err.value).split(": ", 2)[1]
    with pytest.raises(StageError) as err:
        load_tokenizer(tmp_path / "nothing")
    assert str(err.value).startswith(
        f"model.tokenizer: cannot load tokenizer from '{tmp_path / 'nothing'}': "
    )


def test_a_missing_model_asked_for_without_a_label_is_called_model(tmp_path):
    """`load_model`'s default label: the one-line error starts "model: ", then the path."""
    from pubmedqa_gpt2.core.errors import StageError

    with pytest.raises(StageError) as err:
        load_model(tmp_path / "nothing")
    assert str(err.value).startswith(f"model: cannot load a model from '{tmp_path / 'nothing'}': ")


def test_pickled_weights_are_refused(tmp_path):
    """A directory with its weights only as pytorch_model.bin (a pickle, which can run code as
    it loads) and no model.safetensors: refused, in one line naming the setting."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from pubmedqa_gpt2.core.errors import StageError

    config = GPT2Config(
        n_layer=1, n_embd=8, n_head=2, n_positions=8, vocab_size=20, bos_token_id=19,
        eos_token_id=19,
    )  # fmt: skip
    config.save_pretrained(tmp_path / "pickled")
    torch.save(GPT2LMHeadModel(config).state_dict(), tmp_path / "pickled" / "pytorch_model.bin")
    with pytest.raises(StageError) as err:
        load_model(tmp_path / "pickled", what="--model x")
    assert str(err.value).startswith(
        f"--model x: cannot load a model from '{tmp_path / 'pickled'}': "
    )


def test_a_model_s_own_code_is_never_run_even_by_a_user_who_would_allow_it(tmp_path, monkeypatch):
    """A directory whose config names a model type transformers lacks and the file of code
    that would build it (auto_map), the code raising as it is imported: loading is refused
    with a StageError, the code not run, not even when standard input would answer "y" to
    transformers' question whether to run it."""
    import io
    import json
    import sys

    import transformers.dynamic_module_utils as dynamic

    from pubmedqa_gpt2.core.errors import StageError

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    auto_map = {"AutoConfig": "custom.Config", "AutoModelForCausalLM": "custom.Model"}
    config = {"model_type": "someone-elses-gpt2", "auto_map": auto_map}
    (foreign / "config.json").write_text(json.dumps(config))
    (foreign / "custom.py").write_text('raise RuntimeError("the custom code ran")\n')
    # Where transformers would copy the code to import it: here, not the user's cache.
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", [*sys.path])
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\ny\n"))
    with pytest.raises(StageError) as err:
        load_model(foreign, what="--model x")
    assert str(err.value).startswith(f"--model x: cannot load a model from '{foreign}': ")
    assert "trust_remote_code=True" in str(err.value)


def test_the_tokenizer_pads_with_its_end_of_text(tokenizer_dir):
    from pubmedqa_gpt2.model.loading import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.pad_token_id == 50256


def test_the_device_asked_for_wins_else_cuda_when_there_is_one(monkeypatch):
    from pubmedqa_gpt2.model.loading import init_device, pick_device

    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device() == torch.device("cpu") and init_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device() == torch.device("cuda")
    monkeypatch.setenv("LOCAL_RANK", "3")  # one process of several: its own GPU
    assert init_device() == torch.device("cuda", 3)
    monkeypatch.delenv("LOCAL_RANK")
    assert init_device() == torch.device("cuda", 0)


def test_a_pretrained_model_is_loaded_from_its_name_in_the_dtype_asked_for(
    tiny_model_params, tmp_path
):
    """`model.init: pretrained` with a local directory: the weights saved there, cast to the
    dtype asked for (bf16 here; fp32 without one)."""
    saved = build_model(tiny_model_params)
    saved.save_pretrained(tmp_path / "saved")
    model = {"name": str(tmp_path / "saved"), "init": "pretrained", "overrides": {}}
    params = committed_params({"model": model}).model
    loaded = build_model(params, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    expected = {name: p.to(torch.bfloat16) for name, p in weights(saved).items()}
    got = weights(loaded)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
    assert {p.dtype for p in build_model(params).parameters()} == {torch.float32}


def test_a_pretrained_model_that_is_not_there_is_one_line_naming_model_name(tmp_path):
    from pubmedqa_gpt2.core.errors import StageError

    model = {"name": str(tmp_path / "nothing"), "init": "pretrained", "overrides": {}}
    with pytest.raises(StageError) as err:
        build_model(committed_params({"model": model}).model)
    assert str(err.value).startswith(
        f"model.name: cannot load a model from '{tmp_path / 'nothing'}': "
    )


@pytest.fixture
def foreign_code(tmp_path, monkeypatch):
    """A folder for a config or tokenizer that names code of its own (custom.py, which raises
    as it is imported); transformers would copy it under tmp_path, and standard input would
    answer "y" to transformers' question whether to run it."""
    import io
    import sys

    import transformers.dynamic_module_utils as dynamic

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "custom.py").write_text('raise RuntimeError("the custom code ran")\n')
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", [*sys.path])
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\ny\n"))
    # and input() too, whatever stdin is (mutmut's test processes read none)
    monkeypatch.setattr("builtins.input", lambda *args: "y")
    return foreign


def test_a_tokenizer_s_own_code_is_never_run(foreign_code):
    """A tokenizer folder whose tokenizer_config.json maps AutoTokenizer to custom.Tok:
    refused in one line naming the setting, the code not run."""
    import json

    from pubmedqa_gpt2.core.errors import StageError
    from pubmedqa_gpt2.model.loading import load_tokenizer

    config = {"model_type": "someone-elses-gpt2", "auto_map": {"AutoConfig": "custom.Config"}}
    (foreign_code / "config.json").write_text(json.dumps(config))
    auto_map = {"AutoTokenizer": ["custom.Tok", None]}
    (foreign_code / "tokenizer_config.json").write_text(json.dumps({"auto_map": auto_map}))
    with pytest.raises(StageError) as err:
        load_tokenizer(foreign_code)
    assert str(err.value).startswith(
        f"model.tokenizer: cannot load tokenizer from '{foreign_code}': "
    )
    assert "trust_remote_code=True" in str(err.value)


def test_a_random_model_s_config_code_is_never_run(foreign_code):
    """model.init=random from a folder whose config.json names a model type transformers
    lacks and maps AutoConfig to custom.Config: refused in one line naming the setting
    (transformers' ValueError quoted), the code not run."""
    import json

    config = {"model_type": "someone-elses-gpt2", "auto_map": {"AutoConfig": "custom.Config"}}
    (foreign_code / "config.json").write_text(json.dumps(config))
    model = {"name": str(foreign_code), "init": "random", "overrides": {}}
    with pytest.raises(StageError) as err:
        build_model(committed_params({"model": model}).model)
    assert str(err.value).startswith(f"model.name: cannot read a config from '{foreign_code}': ")
    assert "trust_remote_code=True" in str(err.value) and "\n" not in str(err.value)


def test_a_random_model_s_own_code_is_never_run(foreign_code):
    """model.init=random from a folder whose config is a type transformers knows (ViT) but
    has no causal LM of, its auto_map naming custom.Model for one: refused in one line naming
    the setting, the code not run."""
    import json

    config = {"model_type": "vit", "auto_map": {"AutoModelForCausalLM": "custom.Model"}}
    (foreign_code / "config.json").write_text(json.dumps(config))
    model = {"name": str(foreign_code), "init": "random", "overrides": {}}
    with pytest.raises(StageError) as err:
        build_model(committed_params({"model": model}).model)
    assert str(err.value) == (
        f"model.name: '{foreign_code}' holds a ViTConfig, for which transformers has no causal "
        "language model (code a model folder names is never run)"
    )


def test_a_random_gpt2_whose_config_maps_code_of_its_own_is_built_without_it(foreign_code):
    """A GPT-2 config (a type transformers has a causal LM for) whose auto_map names
    custom.Model: the model is transformers' own GPT2LMHeadModel, the code not run (even with
    stdin and input() answering yes)."""
    import json

    config = {"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 2,
              "auto_map": {"AutoModelForCausalLM": "custom.Model"}}  # fmt: skip
    (foreign_code / "config.json").write_text(json.dumps(config))
    model = {"name": str(foreign_code), "init": "random", "overrides": {}}
    built = build_model(committed_params({"model": model}).model)
    assert type(built).__name__ == "GPT2LMHeadModel"
    assert type(built).__module__ == "transformers.models.gpt2.modeling_gpt2"


def test_a_shape_transformers_cannot_build_is_one_line_naming_the_overrides(tmp_path):
    """A width no head count divides (768 wide, 12 heads: 100 is not a multiple of 12): the
    overrides that made it are named, with transformers' reason; from a config folder
    without overrides, model.name is."""
    import json

    model = {"name": "gpt2", "init": "random", "overrides": {"n_layer": 1, "n_embd": 100}}
    with pytest.raises(StageError) as err:
        build_model(committed_params({"model": model}).model)
    assert str(err.value).startswith("model.overrides: cannot build a GPT2Config: ")
    assert "divisible" in str(err.value) and "\n" not in str(err.value)
    config = {"model_type": "gpt2", "n_layer": 1, "n_embd": 100, "n_head": 12}
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = {"name": str(tmp_path), "init": "random", "overrides": {}}
    with pytest.raises(StageError) as err:
        build_model(committed_params({"model": model}).model)
    assert str(err.value).startswith("model.name: cannot build a GPT2Config: ")


def test_an_unknown_architecture_is_one_line_quoting_transformers(tmp_path):
    """transformers explains an unknown model_type in three paragraphs: quoted on one line."""
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(StageError) as err:
        load_model(tmp_path, what="--model m")
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(
        f"--model m: cannot load a model from {str(tmp_path)!r}: The checkpoint you are trying "
        "to load has model type `no-such-architecture` but Transformers does not recognize "
        "this architecture. This could be because of an issue with the checkpoint, or because "
        "your version of Transformers is out of date. You can update Transformers with"
    )
