"""The pipeline as the GPU check runs it: the stages of `dvc.yaml` in file order (`foreach`
expanded as DVC interpolates it), each a `python ...` command run in a scratch copy of the
project with the check's params. dvc itself is not run: no git repository is needed on the GPU
machine and no time goes into hashing a 3 GB model."""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# What a scratch copy needs: the stage code and the library, the pipeline, its params and the
# report's reference.
COPIED = (
    "stages",
    "pubmedqa_gpt2",
    "bench",
    "gpu_check",
    "dvc.yaml",
    "params.yaml",
    "smoke.yaml",
    "reports/reference.yaml",
)


@dataclass(frozen=True)
class Stage:
    name: str
    cmd: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]


def _paths(entries: Sequence) -> tuple[str, ...]:
    """Paths of a dvc.yaml deps/outs/metrics list, whose entries are strings or {path: opts}."""
    return tuple(e if isinstance(e, str) else next(iter(e)) for e in entries or ())


def _substitute(value, key: str, item) -> object:
    """${key} and ${item.x} of a foreach stage, as DVC interpolates them."""
    if isinstance(value, list):
        return [_substitute(v, key, item) for v in value]
    if isinstance(value, dict):
        return {_substitute(k, key, item): _substitute(v, key, item) for k, v in value.items()}
    if not isinstance(value, str):
        return value

    def lookup(match: re.Match) -> str:
        name = match.group(1)
        if name == "key":
            return key
        if name.startswith("item.") and isinstance(item, dict):
            return str(item[name.removeprefix("item.")])
        if name == "item":
            return str(item)
        raise ValueError(f"dvc.yaml: cannot interpolate ${{{name}}}")

    return re.sub(r"\$\{([\w.]+)\}", lookup, value)


def pipeline_stages(dvc_yaml: Path) -> list[Stage]:
    """The stages of `dvc_yaml` in file order, foreach expanded (`evaluate@base`, ...).

    The file's order must be a valid run order: a stage that depends on the output of a
    stage listed after it is an error, not a silently wrong run.
    """
    stages: list[Stage] = []
    for name, body in yaml.safe_load(dvc_yaml.read_text())["stages"].items():
        if "foreach" in body:
            for key, item in body["foreach"].items():
                do = _substitute(body["do"], key, item)
                stages.append(_stage(f"{name}@{key}", do))
        else:
            stages.append(_stage(name, body))
    for i, stage in enumerate(stages):
        for later in stages[i + 1 :]:
            for dep in stage.deps:
                if any(dep == out or dep.startswith(out.rstrip("/") + "/") for out in later.outs):
                    raise ValueError(
                        f"{dvc_yaml}: stage {stage.name} depends on {dep}, an output of "
                        f"{later.name}, which is listed after it"
                    )
    return stages


def _stage(name: str, body: dict) -> Stage:
    outs = _paths(body.get("outs")) + _paths(body.get("metrics")) + _paths(body.get("plots"))
    return Stage(name, body["cmd"], _paths(body.get("deps")), outs)


def make_workdir(
    work: Path, pubmedqa: Path, tokenizer: Path, tiny: bool, overrides: dict | None = None
) -> None:
    """A scratch copy of the project with the check's params (`overrides` on top) and the
    offline data."""
    from pubmedqa_gpt2.smoke_params import SMOKE_FILE, apply_overrides, apply_smoke

    if work.exists():
        shutil.rmtree(work)
    for name in COPIED:
        source, target = ROOT / name, work / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    params = work / "params.yaml"
    if tiny:
        apply_smoke(params, SMOKE_FILE)
    apply_overrides(params, {"model": {"init": "random", "tokenizer": str(tokenizer)}})
    if overrides:
        apply_overrides(params, overrides)
    external = work / "data" / "external"
    external.mkdir(parents=True)
    shutil.copy2(pubmedqa / "ori_pqal.json", external / "ori_pqal.json")


def python_argv(cmd: str) -> list[str]:
    """A dvc.yaml command, run by this interpreter (the one the kit was installed for)."""
    argv = cmd.split()
    if argv[0] != "python":
        raise ValueError(f"dvc.yaml: expected a `python ...` command, got {cmd!r}")
    return [sys.executable, *argv[1:]]
