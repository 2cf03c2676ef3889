"""Params for tests: the committed params.yaml, the one place every value is set, with the
changes a test makes (nested mappings, as `dvc exp run -S` would set them)."""

from __future__ import annotations

from pathlib import Path

import yaml

from pubmedqa_gpt2.core.config import Params, load_params, merge, with_changes

PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"


def committed_params(changes: dict | None = None) -> Params:
    """params.yaml as committed, with `changes` merged in, validated."""
    return with_changes(load_params(PARAMS_FILE), changes or {})


def write_params(folder: Path, changes: dict | None = None) -> None:
    """`folder/params.yaml`: the committed params with `changes` merged in, not validated (a
    test may write a bad value on purpose)."""
    raw = yaml.safe_load(PARAMS_FILE.read_text())
    merge(raw, changes or {})
    (folder / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
