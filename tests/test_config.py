"""params.yaml: the committed file is valid, and mistakes are named precisely."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from pubmedqa_gpt2.core.config import Params, load_params, parse_params
from pubmedqa_gpt2.core.errors import StageError

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
        (
            {"train": {"epochs": "three"}},
            "train.epochs: Input should be a valid integer, unable to parse string as an "
            "integer (got 'three')",
        ),
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


@pytest.mark.child_process
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


# ---- Bounds: every numeric setting has the range its meaning needs ----

SEED = ([-1, 2**32], [0, 2**32 - 1])  # numpy's seeds (set_seed, the bootstrap): 0 .. 2**32 - 1
COUNT = ([0, -1], [1])  # a number of things that must happen at least once
TRAINING = {
    "epochs": COUNT,
    "learning_rate": ([0, -1e-5], [1e-9]),  # a step of size 0 trains nothing
    "warmup_ratio": ([-0.01, 1.01], [0, 1]),  # a share of the steps
    "weight_decay": ([-0.1], [0]),
    "batch_size": COUNT,
    "gradient_accumulation_steps": COUNT,
    "max_grad_norm": ([0, -1.0], [1e-6]),  # clipping to norm 0 zeroes every update
    "seed": SEED,
    "eval_batch_size": COUNT,
    "num_processes": COUNT,
    "save_steps": (COUNT[0], [1, None]),  # null: only at each epoch's end
    "logging_steps": COUNT,
    "lora.r": COUNT,
    "lora.alpha": COUNT,
    "lora.dropout": ([-0.1, 1.0], [0, 0.99]),  # a probability; 1 drops every input
}
BOUNDS = {
    "data.max_artificial": (COUNT[0], [1, None]),
    "prepare.seed": SEED,
    "prepare.fold": ([-1, 10], [0, 9]),  # ten folds
    "prepare.max_length": ([63, 0], [64]),  # a prompt's frame alone takes tens of tokens
    "prepare.max_train_samples": (COUNT[0], [1, None]),
    "model.seed": SEED,
    **{f"train.{key}": bounds for key, bounds in TRAINING.items()},
    **{f"pretrain.{key}": bounds for key, bounds in TRAINING.items()},
    "pretrain.max_samples": (COUNT[0], [1, None]),
    "evaluate.batch_size": COUNT,
    "evaluate.generate_examples": ([-1], [0, None]),  # 0: no generation
    "evaluate.max_new_tokens": COUNT,
    "evaluate.generation_batch_size": (COUNT[0] + ["many"], [1, "auto"]),
    "evaluate.repetition_penalty": ([0, -1.0], [0.5, 1.0]),  # a divisor of the logits
    "evaluate.no_repeat_ngram_size": ([-1], [0, 1]),  # 0: no constraint
    "evaluate.bootstrap_samples": ([99, 0], [100]),  # fewer make a 95% interval meaningless
    "evaluate.bootstrap_seed": SEED,
}


def nested(key: str, value) -> dict:
    """{"a": {"b": value}} for key "a.b"."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def test_every_numeric_setting_has_its_bounds_listed():
    """A new numeric setting needs a row above (model.overrides is free-form config)."""
    numeric = []
    for key, field in sections():
        kinds = {field.annotation, *getattr(field.annotation, "__args__", ())}
        kinds |= {getattr(kind, "__origin__", None) for kind in kinds}  # Annotated[int, ...]
        if kinds & {int, float} and key != "model.overrides":
            numeric.append(key)
    assert sorted(numeric) == sorted(BOUNDS)


@pytest.mark.parametrize("key", list(BOUNDS))
def test_each_numeric_setting_refuses_values_outside_its_meaning(key):
    rejected, accepted = BOUNDS[key]
    for value in rejected:
        with pytest.raises(StageError) as err:
            committed_params(nested(key, value))
        assert str(err.value).startswith(f"changes: {key}: "), (value, str(err.value))
    for value in accepted:
        committed_params(nested(key, value))


# ---- Changes merged as `dvc exp run -S` merges them ----


def test_an_empty_mapping_replaces_the_old_one_and_a_full_one_merges_key_by_key():
    start = committed_params({"model": {"init": "random", "overrides": {"n_layer": 2}}})
    from pubmedqa_gpt2.core.config import with_changes

    assert with_changes(start, {"model": {"overrides": {}}}).model.overrides == {}
    merged = with_changes(start, {"model": {"overrides": {"n_head": 4}}}).model.overrides
    assert merged == {"n_layer": 2, "n_head": 4}


@pytest.mark.parametrize(
    ("override", "change"),
    [
        ("model.overrides.n_layer=3", {"model": {"overrides": {"n_layer": 3}}}),
        ("train.lora.r=4", {"train": {"lora": {"r": 4}}}),
        ("train.save_steps=null", {"train": {"save_steps": None}}),
    ],
)
def test_changes_merge_as_dvc_exp_run_set_param_applies_them(tmp_path, override, change):
    """with_changes (the tests', and through `merge` the smoke file's) against DVC's own
    `-S` (dvc.utils.hydra.apply_overrides) on the same params.yaml."""
    from dvc.utils.hydra import apply_overrides

    from pubmedqa_gpt2.core.config import with_changes

    from .committed import write_params

    start = {"model": {"init": "random", "overrides": {"n_layer": 2, "n_embd": 64}}}
    write_params(tmp_path, start)
    apply_overrides(tmp_path / "params.yaml", [override])
    assert with_changes(committed_params(start), change) == load_params(tmp_path / "params.yaml")


def test_a_sweep_s_empty_mapping_reaches_dvc_as_a_replacement(tmp_path):
    """DVC's `-S model.overrides={}` keeps the old mapping (Hydra merges `{}` into it); a sweep
    of `pubmedqa-gpt2 slurm submit` sends it to DVC as `~key` then `+key={}`, which clears it."""
    from dvc.utils.hydra import apply_overrides

    from pubmedqa_gpt2.slurm.sweep import expand

    from .committed import write_params

    start = {"model": {"init": "random", "overrides": {"n_layer": 2, "n_embd": 64}}}
    write_params(tmp_path, start)
    apply_overrides(tmp_path / "params.yaml", ["model.overrides={}"])
    assert load_params(tmp_path / "params.yaml").model.overrides == {"n_layer": 2, "n_embd": 64}
    (experiment,) = expand(["model.overrides={}", "model.seed=1"])
    apply_overrides(tmp_path / "params.yaml", experiment)
    params = load_params(tmp_path / "params.yaml")
    assert (params.model.overrides, params.model.seed) == ({}, 1)


def test_one_section_is_read_and_its_errors_are_named_with_the_section(tmp_path):
    """`load_section` (the CLI reads only `evaluate`): a bad value elsewhere does not stop it;
    a bad value in it is named `evaluate.<key>` with what was given; a params file that is
    not a mapping, or lacks the section, is a missing section, not a crash."""
    import yaml

    from pubmedqa_gpt2.core.config import load_section

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["learning_rate"] = -1  # bad, but not in the section read
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    assert load_section("evaluate", path).max_new_tokens == params["evaluate"]["max_new_tokens"]

    params["evaluate"]["max_new_tokens"] = "many"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(StageError) as err:
        load_section("evaluate", path)
    assert str(err.value).startswith(f"{path}: evaluate.max_new_tokens: ")
    assert str(err.value).endswith("(got 'many')") and "\n" not in str(err.value)

    # An unknown key names the section's keys (params.yaml lists them in the same order); two
    # errors, two lines.
    allowed = ", ".join(yaml.safe_load((ROOT / "params.yaml").read_text())["evaluate"])
    del params["evaluate"]["max_new_tokens"]
    params["evaluate"]["beams"] = 4
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(StageError) as err:
        load_section("evaluate", path)
    assert sorted(str(err.value).splitlines()) == [
        f"{path}: evaluate.beams: unknown key; allowed: {allowed}",
        f"{path}: evaluate.max_new_tokens: missing (params.yaml sets every key; see "
        "pubmedqa_gpt2/core/config.py)",
    ]

    path.write_text("- a list\n- not sections\n")
    with pytest.raises(StageError) as err:
        load_section("evaluate", path)
    assert str(err.value).startswith(f"{path}: evaluate: ")


def test_a_params_file_s_errors_name_the_file_they_are_in(tmp_path):
    """load_params names the file it read; parse_params of a mapping from elsewhere names
    params.yaml; an empty file is a mapping of no sections (each named missing), and a YAML
    error is the parser's message on one line."""
    missing = "missing (params.yaml sets every key; see pubmedqa_gpt2/core/config.py)"
    sections = ("data", "prepare", "model", "pretrain", "train", "evaluate")
    path = tmp_path / "exp.yaml"
    path.write_text("")
    with pytest.raises(StageError) as err:
        load_params(path)
    assert str(err.value).splitlines() == [f"{path}: {name}: {missing}" for name in sections]
    with pytest.raises(StageError) as err:
        parse_params({"data": {}} | dict.fromkeys(sections[1:], {}) | {"x": 1})
    assert str(err.value).splitlines()[-1] == (
        "params.yaml: x: unknown key; allowed: " + ", ".join(sections)
    )
    with pytest.raises(StageError) as err:
        parse_params(["data", "train"])
    assert str(err.value) == "params.yaml: expected a mapping of sections, got list"
    path.write_text("train: [1,\n")
    with pytest.raises(StageError) as err:
        load_params(path)
    try:  # PyYAML's own words, on several lines
        yaml.safe_load("train: [1,\n")
    except yaml.YAMLError as exc:
        words = str(exc).split()
    assert "\n" not in str(err.value)
    assert str(err.value).split() == [f"{path}:", "not", "valid", "YAML:", *words]
