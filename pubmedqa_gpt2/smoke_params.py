"""Apply `smoke.yaml` to a params file in place:
`python -m pubmedqa_gpt2.smoke_params [params.yaml]`.

Used by `make smoke-params` and `make smoke DIR=...`. Comments and key order of the params
file are kept (ruamel round-trip); `${VAR}` in smoke.yaml is replaced from the environment.
The result is validated like any params file.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from ruamel.yaml import YAML

from pubmedqa_gpt2.core.config import load_params, merge
from pubmedqa_gpt2.core.errors import StageError, run_stage

SMOKE_FILE = Path(__file__).resolve().parent.parent / "smoke.yaml"


def expand_env(value):
    """Replace ${VAR} in strings (recursively) with the environment's value; a *_DIR variable
    must name an existing directory and becomes its absolute path."""
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    if not isinstance(value, str):
        return value

    def lookup(match: re.Match) -> str:
        name = match.group(1)
        if not os.environ.get(name):
            raise StageError(f"smoke.yaml: environment variable {name} is not set")
        if not name.endswith("_DIR"):
            return os.environ[name]
        # A folder that is not there would be taken for a hub id later (prepare's confusing
        # "Repo id must be in the form ..."): refuse it here, params.yaml untouched.
        folder = Path(os.environ[name]).resolve()
        if not folder.is_dir():
            raise StageError(f"smoke.yaml: {name}={folder}: no such directory")
        return str(folder)

    return re.sub(r"\$\{(\w+)\}", lookup, value)


def apply_smoke(params_path: Path, smoke_path: Path = SMOKE_FILE) -> None:
    apply_overrides(params_path, expand_env(YAML(typ="safe").load(smoke_path.read_text())))


def apply_overrides(params_path: Path, overrides: dict) -> None:
    """Deep-merge `overrides` into the params file in place, keeping its comments; the result
    must validate, or the file is left as it was."""
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    document = yaml.load(params_path.read_text())
    merge(document, overrides)
    tmp = params_path.with_suffix(".tmp")
    try:
        with tmp.open("w") as f:
            yaml.dump(document, f)
        load_params(tmp)  # refuse to write a params file that does not validate
        tmp.replace(params_path)
    finally:
        tmp.unlink(missing_ok=True)  # refused: nothing half-written left beside it


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "params.yaml")
    apply_smoke(path)
    print(f"smoke_params: applied {SMOKE_FILE.name} to {path}")


if __name__ == "__main__":
    run_stage(main)
