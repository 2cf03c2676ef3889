"""params.yaml: the committed file is valid, and mistakes are named precisely."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pubmedqa_gpt2.config import Params, load_params, parse_params
from pubmedqa_gpt2.errors import StageError

from .committed import committed_params
from .conftest import ROOT


def test_committed_params_are_the_real_experiment():
    params = load_params(ROOT / "params.yaml")
    assert params.model.name == "gpt2-large" and params.model.init == "pretrained"
    assert params.data.source == "official" and params.prepare.fold == 0
    assert params.prepare.max_length == 1024


def test_committed_params_set_every_key_explicitly():
    """Every field of every section appears in params.yaml, so `dvc params diff` shows it."""
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())

    def missing(model, values, prefix=""):
        for name, field in model.model_fields.items():
            if name not in values:
                yield prefix + name
            elif isinstance(field.annotation, type) and issubclass(
                field.annotation, Params.__base__
            ):
                yield from missing(field.annotation, values[name], f"{prefix}{name}.")

    assert list(missing(Params, raw)) == []


def sections(model=Params, prefix=""):
    """(dotted key, field) of every field of every section, nested ones included."""
    for name, field in model.model_fields.items():
        yield prefix + name, field
        if isinstance(field.annotation, type) and issubclass(field.annotation, Params.__base__):
            yield from sections(field.annotation, f"{prefix}{name}.")


def test_every_config_field_is_described_and_has_no_default():
    """params.yaml is the one source of every value (a field with a default would be a second
    copy that could differ), and each field says what it means."""
    fields = list(sections())
    assert len(fields) > 60
    assert [key for key, field in fields if not field.is_required()] == []
    assert [key for key, field in fields if not (field.description or "").strip()] == []


def test_a_key_missing_from_params_yaml_is_named(tmp_path):
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    del raw["pretrain"]["warmup_ratio"]
    with pytest.raises(StageError, match=r"pretrain.warmup_ratio: missing"):
        parse_params(raw)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"train": {"learning_rte": 1e-5}}, "train.learning_rte: unknown key; allowed: epochs"),
        (
            {"trian": {}},
            "trian: unknown key; allowed: data, prepare, model, pretrain, train, evaluate",
        ),
        ({"train": {"lora": {"rank": 8}}}, "train.lora.rank: unknown key; allowed: enabled, r"),
        ({"prepare": {"fold": 10}}, "prepare.fold: Input should be less than or equal to 9"),
        ({"train": {"epochs": "three"}}, "train.epochs: Input should be a valid integer"),
        ({"train": {"precision": "fp8"}}, "train.precision: Input should be 'auto', 'bf16'"),
        ({"data": {"md5": "abc"}}, "data.md5: Value error, must be 32 lowercase hex digits"),
        ([1, 2], "expected a mapping of sections"),
    ],
)
def test_bad_params_name_the_key_and_what_is_allowed(raw, message):
    with pytest.raises(StageError) as err:
        parse_params(raw)
    assert message in str(err.value)


def test_scientific_notation_from_dvc_set_param_is_a_number():
    # YAML reads `1e-5` as a string; `dvc exp run -S train.learning_rate=1e-5` writes that.
    assert committed_params({"train": {"learning_rate": "1e-5"}}).train.learning_rate == 1e-5


def test_missing_params_file_is_one_clear_error(tmp_path):
    with pytest.raises(StageError, match="params.yaml: file not found"):
        load_params(tmp_path / "params.yaml")


def run_pytest(env: dict) -> subprocess.CompletedProcess:
    """One quick test of this file in a child pytest with `env`."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_config.py",
         "-k", "committed_params_are_the_real"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


PROBES = {"PUBMEDQA_DIR": "ori_pqal.json", "GPT2_TOKENIZER_DIR": "tokenizer.json"}


@pytest.mark.parametrize("missing", list(PROBES))
def test_ci_fails_instead_of_skipping_when_the_offline_data_is_missing(tmp_path, missing):
    # The other folder is present (a stand-in: the check looks for its file), so the message
    # names exactly the missing one, with or without ../shared on this machine.
    (other,) = set(PROBES) - {missing}
    (tmp_path / "present").mkdir()
    (tmp_path / "present" / PROBES[other]).write_text("{}")
    env = {
        **os.environ,
        "CI": "true",
        missing: str(tmp_path / "nowhere"),
        other: str(tmp_path / "present"),
    }
    proc = run_pytest(env)
    assert proc.returncode == 1, proc.stdout
    out = proc.stdout + proc.stderr
    assert f"offline data is missing: {missing} (no {PROBES[missing]} there);" in out, out
    # Outside CI the same run goes on: tests that need the data skip, with their reason.
    proc = run_pytest({**env, "CI": ""})
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout
