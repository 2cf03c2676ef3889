"""A sweep's experiments from `-S` overrides, expanded as `dvc exp run -S` expands them
(Hydra's sweep syntax: `train.seed=0,1,2`, `range(0,3)`, `choice(a,b)`; the product of all)."""

from __future__ import annotations

import itertools

from pubmedqa_gpt2.core.errors import StageError


def expand(overrides: list[str]) -> list[list[str]]:
    """Each experiment's `-S` arguments for DVC (`key=value`), in order. No override: one
    experiment, the committed params."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    choices = []
    parser = OverridesParser.create()
    for text in overrides:
        try:
            (override,) = parser.parse_overrides([text])
        except HydraException as exc:
            raise StageError(f"-S {text}: {str(exc).splitlines()[0]}") from None
        key = override.get_key_element()
        if override.is_sweep_override():
            values = list(override.sweep_string_iterator())
        else:
            values = [text.split("=", 1)[1]]  # as typed: dvc parses it itself
        choices.append([as_dvc_sets(key, value) for value in values])
    return [
        [s for sets in combination for s in sets] for combination in itertools.product(*choices)
    ]


def as_dvc_sets(key: str, value: str) -> list[str]:
    """What `dvc exp run -S` needs to set `key` to `value`. An empty mapping replaces the old
    one: DVC's `-S key={}` merges it into the old mapping, which stays, so it is sent as
    `~key` (delete) and `+key={}` (add)."""
    if value.strip() == "{}":
        return [f"~{key}", f"+{key}={{}}"]
    return [f"{key}={value}"]
