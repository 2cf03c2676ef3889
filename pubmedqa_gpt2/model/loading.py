"""Building the tokenizer and the model exactly as the params describe them.

`model.init: pretrained` loads a hub id or local directory with `from_pretrained`;
`model.init: random` builds a GPT-2 preset from its public shape with random weights,
seeded, so that offline runs use the same code path as the real experiment. `train` and
`evaluate@base` both call `build_model`, so the base model evaluated is the model trained.
Never `trust_remote_code`; weights are safetensors only.
"""

from __future__ import annotations

import os
from pathlib import Path

from pubmedqa_gpt2.core.config import ModelParams
from pubmedqa_gpt2.core.errors import StageError, one_line

# The shapes of the public GPT-2 checkpoints (vocabulary 50257, 1024 positions).
GPT2_SHAPES = {
    "gpt2": {"n_layer": 12, "n_embd": 768, "n_head": 12},
    "gpt2-medium": {"n_layer": 24, "n_embd": 1024, "n_head": 16},
    "gpt2-large": {"n_layer": 36, "n_embd": 1280, "n_head": 20},
    "gpt2-xl": {"n_layer": 48, "n_embd": 1600, "n_head": 25},
}


def load_tokenizer(source: str | Path):
    """The tokenizer of a hub id or directory (`ModelParams.tokenizer_source`, a saved model),
    with a pad token set."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise StageError(
            f"model.tokenizer: cannot load tokenizer from {str(source)!r}: {one_line(exc)}"
        ) from None
    if tokenizer.pad_token is None:
        # GPT-2 has no pad token; padded positions are masked out of attention and labels.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def random_config(params: ModelParams):
    """A GPT2Config of the named preset (or a local config directory) plus overrides."""
    from transformers import AutoConfig, GPT2Config

    if params.name in GPT2_SHAPES:
        config = GPT2Config(**GPT2_SHAPES[params.name])
    elif (Path(params.name) / "config.json").is_file():
        try:
            config = AutoConfig.from_pretrained(params.name, trust_remote_code=False)
        except (OSError, ValueError) as exc:  # e.g. a config that names code of its own
            raise StageError(
                f"model.name: cannot read a config from {params.name!r}: {one_line(exc)}"
            ) from None
    else:
        raise StageError(
            f"model.name: {params.name!r} is not a GPT-2 preset ({', '.join(GPT2_SHAPES)}) "
            "nor a directory with config.json, so model.init=random cannot build it"
        )
    for key, value in params.overrides.items():
        if not hasattr(config, key):
            raise StageError(f"model.overrides.{key}: {type(config).__name__} has no such field")
        setattr(config, key, value)
    return config


def init_device():
    """Where random weights are drawn: this process's GPU when there is one, else the CPU.

    GPT-2 Large's 774M weights take about 12 s on one CPU core and a fraction of a second on a
    GPU. Every stage that builds the base model on a machine draws it on the same kind of device
    with the same seed, so evaluate@base scores the weights train starts from; weights drawn on
    a GPU differ from those drawn on a CPU (another random generator), as any GPU result does.
    """
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def build_model(params: ModelParams, dtype=None):
    """The model before fine-tuning: pretrained weights or a seeded random initialisation,
    drawn in fp32 on `init_device()` (then cast to `dtype`)."""
    import torch
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoModelForCausalLM

    if params.init == "random":
        config = random_config(params)
        torch.manual_seed(params.seed)
        if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:  # e.g. only its own code has one
            raise StageError(
                f"model.name: {params.name!r} holds a {type(config).__name__}, for which "
                "transformers has no causal language model (code a model folder names is never run)"
            )
        try:
            with init_device():
                model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
        except ValueError as exc:  # a shape it cannot build, e.g. a width no head count divides
            setting = "model.overrides" if params.overrides else "model.name"
            raise StageError(
                f"{setting}: cannot build a {type(config).__name__}: {one_line(exc)}"
            ) from None
        return model if dtype is None else model.to(dtype)
    if params.overrides:
        raise StageError("model.overrides: only used with model.init=random; set it to {}")
    return load_model(params.name, dtype=dtype, what="model.name")


def load_model(name_or_dir: str | Path, dtype=None, what: str = "model"):
    """`from_pretrained` with safetensors only and no remote code; errors in one line."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(
            name_or_dir, dtype=dtype, use_safetensors=True, trust_remote_code=False
        )
    except (OSError, ValueError, SafetensorError) as exc:  # the last: a truncated weights file
        raise StageError(
            f"{what}: cannot load a model from {str(name_or_dir)!r}: {one_line(exc)}"
        ) from None


def gpu_has_bf16() -> bool:
    """Whether the CUDA GPU computes bf16 natively (Ampere and newer).

    torch counts emulated bf16 (V100, T4) as support unless told otherwise; emulated it is far
    slower than fp16, so it does not count here. train, evaluate and the CLI all decide by this.
    """
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def inference_dtype(device):
    """bf16 on a GPU that has it natively, else fp16 on a GPU; fp32 on the CPU."""
    import torch

    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if gpu_has_bf16() else torch.float16


def pick_device(prefer: str | None = None):
    """CUDA when available (or the device asked for), else CPU."""
    import torch

    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
