"""`make smoke-params`: smoke.yaml applied to params.yaml in place, or refused with the file as
it was (the edit `make smoke` makes is checked against it in tests/test_pipeline.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT


def make_smoke_params(folder: Path, tokenizer_dir: Path) -> subprocess.CompletedProcess:
    """`make smoke-params GPT2_TOKENIZER_DIR=...` in `folder`, with this checkout's code."""
    return subprocess.run(
        ["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), "smoke-params",
         f"PYTHON={sys.executable}", f"GPT2_TOKENIZER_DIR={tokenizer_dir}"],
        cwd=folder, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.child_process
def test_a_tokenizer_folder_that_does_not_exist_is_refused(tmp_path) -> None:
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    before = (tmp_path / "params.yaml").read_bytes()
    missing = tmp_path / "no" / "tokenizer"
    proc = make_smoke_params(tmp_path, missing)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: smoke.yaml: GPT2_TOKENIZER_DIR={missing}: no such directory"]
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "params.yaml").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no .tmp left


@pytest.mark.child_process
def test_an_existing_tokenizer_folder_is_written_as_an_absolute_path(tmp_path) -> None:
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "tok").mkdir()
    proc = make_smoke_params(tmp_path, Path("tok"))  # relative: resolved from where make runs
    assert proc.returncode == 0, proc.stdout + proc.stderr
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert params["model"]["tokenizer"] == str(tmp_path / "tok")
    assert params["model"]["init"] == "random"


def test_overrides_that_do_not_validate_leave_the_params_file_as_it_was(tmp_path) -> None:
    from pubmedqa_gpt2.core.errors import StageError
    from pubmedqa_gpt2.smoke_params import apply_overrides

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    before = (tmp_path / "params.yaml").read_bytes()
    with pytest.raises(StageError, match="train.epochs"):
        apply_overrides(tmp_path / "params.yaml", {"train": {"epochs": 0}})
    assert (tmp_path / "params.yaml").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no .tmp left


def test_the_command_applies_every_smoke_setting_and_keeps_the_comments(
    tmp_path, monkeypatch, capsys
) -> None:
    """`python -m pubmedqa_gpt2.smoke_params PATH`, in this process: each value of smoke.yaml
    lands in the file (the tokenizer folder made absolute), the rest and the comments stay."""
    from pubmedqa_gpt2 import smoke_params

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "tok").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPT2_TOKENIZER_DIR", "tok")
    monkeypatch.setattr(sys, "argv", ["smoke_params", "params.yaml"])
    smoke_params.main()
    assert capsys.readouterr().out == "smoke_params: applied smoke.yaml to params.yaml\n"
    after = yaml.safe_load((tmp_path / "params.yaml").read_text())
    before = yaml.safe_load((ROOT / "params.yaml").read_text())
    smoke = yaml.safe_load((ROOT / "smoke.yaml").read_text())
    smoke["model"]["tokenizer"] = str(tmp_path / "tok")
    for section, values in smoke.items():
        for key, value in values.items():
            assert after[section][key] == value, (section, key)
    assert after["train"]["seed"] == before["train"]["seed"]  # untouched

    # Every other line stays as it was, byte for byte: comments, `null`s, long lines unwrapped.
    def kept(text: str) -> list[str]:
        lines, section, skipping = [], None, False
        for line in text.splitlines():
            if line.startswith("    ") and skipping:  # a set mapping's own lines
                continue
            section = line.split(":", 1)[0] if line[:1].isalpha() else section
            key = line.strip().split(":", 1)[0] if line.startswith("  ") else None
            skipping = section in smoke and key in smoke[section]
            if not skipping:
                lines.append(line)
        return lines

    original = (ROOT / "params.yaml").read_text()
    assert kept((tmp_path / "params.yaml").read_text()) == kept(original)
    assert any(len(line) > 80 for line in kept(original)) and "null" in original


def test_quoted_values_stay_quoted(tmp_path, monkeypatch) -> None:
    from pubmedqa_gpt2 import smoke_params

    text = (ROOT / "params.yaml").read_text().replace("  hub_revision: ", '  hub_revision: "', 1)
    lines = text.splitlines(keepends=True)
    quoted = next(i for i, line in enumerate(lines) if line.startswith('  hub_revision: "'))
    value, _, comment = lines[quoted].rstrip("\n").partition("  #")
    lines[quoted] = f'{value.rstrip()}"' + (f"  #{comment}" if comment else "") + "\n"
    (tmp_path / "params.yaml").write_text("".join(lines))
    (tmp_path / "tok").mkdir()
    monkeypatch.setenv("GPT2_TOKENIZER_DIR", str(tmp_path / "tok"))
    smoke_params.apply_smoke(tmp_path / "params.yaml")
    assert lines[quoted] in (tmp_path / "params.yaml").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "tok"]  # no .tmp


def test_variables_are_replaced_in_nested_strings_only(monkeypatch) -> None:
    from pubmedqa_gpt2.core.errors import StageError
    from pubmedqa_gpt2.smoke_params import expand_env

    monkeypatch.setenv("WHO", "model")
    given = {"a": {"b": "${WHO}-x ${WHO}", "n": 3, "none": None}, "c": "plain"}
    assert expand_env(given) == {"a": {"b": "model-x model", "n": 3, "none": None}, "c": "plain"}
    for value in ("", None):
        if value is None:
            monkeypatch.delenv("UNSET_HERE", raising=False)
        else:
            monkeypatch.setenv("UNSET_HERE", value)
        with pytest.raises(StageError) as err:
            expand_env({"x": "${UNSET_HERE}"})
        assert str(err.value) == "smoke.yaml: environment variable UNSET_HERE is not set"


def test_the_command_defaults_to_params_yaml_here_and_names_a_missing_folder(
    tmp_path, monkeypatch, capsys
) -> None:
    from pubmedqa_gpt2 import smoke_params
    from pubmedqa_gpt2.core.errors import StageError

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["smoke_params"])
    monkeypatch.setenv("GPT2_TOKENIZER_DIR", str(tmp_path / "absent"))
    with pytest.raises(StageError) as err:
        smoke_params.main()
    assert (
        str(err.value) == f"smoke.yaml: GPT2_TOKENIZER_DIR={tmp_path / 'absent'}: no such directory"
    )
    (tmp_path / "absent").mkdir()
    smoke_params.main()
    assert capsys.readouterr().out == "smoke_params: applied smoke.yaml to params.yaml\n"
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["model"]["init"] == "random"


def test_the_command_edits_the_params_file_it_names(tmp_path, monkeypatch, capsys) -> None:
    """`python -m pubmedqa_gpt2.smoke_params PATH`: PATH is edited, not ./params.yaml."""
    from pubmedqa_gpt2 import smoke_params

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "other").mkdir()
    shutil.copy(ROOT / "params.yaml", tmp_path / "other" / "exp.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPT2_TOKENIZER_DIR", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["smoke_params", "other/exp.yaml"])
    smoke_params.main()
    assert capsys.readouterr().out == "smoke_params: applied smoke.yaml to other/exp.yaml\n"
    assert yaml.safe_load((tmp_path / "other" / "exp.yaml").read_text())["model"]["init"] == (
        "random"
    )
    assert (tmp_path / "params.yaml").read_bytes() == (ROOT / "params.yaml").read_bytes()


def test_nulls_are_written_null_whatever_ran_before(tmp_path, monkeypatch) -> None:
    """A `null` set or kept is written `null`, not ruamel's round-trip empty value: the
    representer that says so is installed by `apply_overrides` itself (ruamel keeps
    representers per class, so one installed by an earlier call is reset to ruamel's here)."""
    from ruamel.yaml.representer import RoundTripRepresenter

    from pubmedqa_gpt2.smoke_params import apply_overrides

    representers = RoundTripRepresenter.yaml_representers
    monkeypatch.setitem(representers, type(None), RoundTripRepresenter.represent_none)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    apply_overrides(tmp_path / "params.yaml", {"model": {"name": "gpt2", "tokenizer": None}})
    text = (tmp_path / "params.yaml").read_text()
    assert "\n  tokenizer: null           # tokenizer id or directory" in text
    assert "\n  save_steps: null\n" in text  # a null the overrides leave as it was


def test_a_value_line_is_folded_only_past_4096_columns(tmp_path) -> None:
    """ruamel folds a long plain scalar at a space once its line passes `width` (4096 here,
    80 by default): `  hub_revision: ` (16 columns) + 4078 a's + ` b` is 4096 columns, kept
    whole; one more `a` makes 4097, folded at the space (kept at the end of the line, 4096
    columns), the ` b` on the next line; either way the same value."""
    from pubmedqa_gpt2.smoke_params import apply_overrides

    for a_count, written in (
        (4078, ["  hub_revision: " + "a" * 4078 + " b"]),
        (4079, ["  hub_revision: " + "a" * 4079 + " ", "    b"]),
    ):
        shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
        apply_overrides(tmp_path / "params.yaml", {"data": {"hub_revision": "a" * a_count + " b"}})
        text = (tmp_path / "params.yaml").read_text()
        assert "\n".join(["", *written, "  artificial: false "]) in text, a_count
        assert yaml.safe_load(text)["data"]["hub_revision"] == "a" * a_count + " b"
