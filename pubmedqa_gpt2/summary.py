"""Summaries of groups of experiments: `pubmedqa-gpt2 summary --over train.seed`.

A sweep of seeds (or dev folds) is a set of DVC experiments that differ only in the swept
params. This reads the experiments (`dvc exp show --json`), groups them by every param except
the swept ones, and gives per group the number of runs and the mean, standard deviation
(n - 1), min and max of each headline metric: Markdown for people (a table per group, its
experiments named, within 120 columns), JSON for machines.

    dvc exp run --queue -S train.seed=0,1,2 && dvc queue start
    pubmedqa-gpt2 summary --over train.seed
    pubmedqa-gpt2 summary --over train.seed --plot sweep.html   # and a page of the sweep
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.core.paths import COMPARE_METRICS, TRAIN_METRICS, eval_metrics

TUNED, TRAIN, COMPARE = str(eval_metrics("finetuned")), str(TRAIN_METRICS), str(COMPARE_METRICS)
# (column, metrics file, dotted key): what a sweep compares.
HEADLINE = (
    ("accuracy", TUNED, "accuracy"),
    ("macro_f1", TUNED, "macro_f1"),
    ("rougeL", TUNED, "rougeL"),
    ("meteor", TUNED, "meteor"),
    ("dev_accuracy", TRAIN, "dev_accuracy"),
    ("accuracy_diff", COMPARE, "accuracy.diff"),
    ("macro_f1_diff", COMPARE, "macro_f1.diff"),
    ("mcnemar_p", COMPARE, "mcnemar.p"),
)


@dataclass(frozen=True)
class Experiment:
    name: str
    params: dict[str, Any]
    """params.yaml flattened to dotted keys, e.g. {"train.seed": 1}."""
    metrics: dict[str, float]
    """The headline metrics it has, by column name."""


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_experiment(entry: dict[str, Any]) -> Experiment | None:
    """One experiment of `dvc exp show --json`; None when it has no results (failed, queued)."""
    data = entry.get("data") or {}
    if entry.get("error") or not data.get("metrics"):
        return None
    params = flatten((data.get("params") or {}).get("params.yaml", {}).get("data") or {})
    metrics = {}
    for column, path, key in HEADLINE:
        values = flatten((data["metrics"].get(path) or {}).get("data") or {})
        if isinstance(values.get(key), int | float):
            metrics[column] = float(values[key])
    return Experiment(name=entry.get("name") or entry["rev"][:7], params=params, metrics=metrics)


def experiments_of(exp_show: Sequence[dict[str, Any]]) -> list[Experiment]:
    """The experiments (not the baseline commits nor the workspace) in `dvc exp show --json`."""
    found = []
    for commit in exp_show:
        for group in commit.get("experiments") or []:
            for entry in group.get("revs") or []:
                experiment = read_experiment(entry)
                if experiment is not None:
                    found.append(experiment)
    return found


def describe(values: Sequence[float]) -> dict[str, float | None]:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "sd": sd, "min": min(values), "max": max(values), "n": n}


def summarize(experiments: Sequence[Experiment], over: Iterable[str]) -> list[dict[str, Any]]:
    """Groups of experiments equal in every param but those in `over`, with their statistics.

    Each group names the params that set it apart from the other groups (those that vary
    among all the experiments), its experiments, and per headline metric its statistics.
    """
    over = set(over)
    unknown = sorted(key for key in over if not any(key in e.params for e in experiments))
    if unknown:
        raise StageError(f"--over {', '.join(unknown)}: not a param of these experiments")
    keys = sorted({k for e in experiments for k in e.params} - over)
    varying = [k for k in keys if len({json.dumps(e.params.get(k)) for e in experiments}) > 1]
    groups: dict[str, list[Experiment]] = {}
    for experiment in experiments:
        label = json.dumps([experiment.params.get(k) for k in keys])
        groups.setdefault(label, []).append(experiment)
    out = []
    for members in groups.values():
        stats = {}
        for column, _, _ in HEADLINE:
            values = [e.metrics[column] for e in members if column in e.metrics]
            if values:
                stats[column] = describe(values)
        out.append(
            {
                "params": {k: members[0].params.get(k) for k in varying},
                "swept": {k: sorted({json.dumps(e.params.get(k)) for e in members}) for k in over},
                "experiments": [e.name for e in members],
                "n": len(members),
                "metrics": stats,
            }
        )
    return out


def group_label(number: int, group: dict[str, Any]) -> str:
    """ "Group 1: train.learning_rate=0.001": the group's number and the params that set it
    apart (the Markdown heading, the sweep plot's axis)."""
    apart = ", ".join(f"{k}={v}" for k, v in group["params"].items())
    return f"Group {number}" + (f": {apart}" if apart else "")


WIDTH = 120  # the text output fits a terminal this wide


def markdown(groups: Sequence[dict[str, Any]], over: Sequence[str]) -> str:
    """The groups in Markdown, one after the other, each a heading line (the params that set it
    apart), the experiments it holds, and a table of one row per metric: n, mean, sd, min,
    max. Lines stay within WIDTH columns, however many groups and metrics."""
    lines = [f"Experiments over {', '.join(over)}, grouped by every other param"]
    for number, group in enumerate(groups, start=1):
        lines += ["", f"## {group_label(number, group)}"]
        plural = "experiment" if group["n"] == 1 else "experiments"
        names = f"{group['n']} {plural}: " + ", ".join(group["experiments"])
        lines += ["", *textwrap.wrap(names, WIDTH, break_on_hyphens=False)]
        lines += ["", "| metric | n | mean | sd | min | max |", "|---|---|---|---|---|---|"]
        for column, stats in group["metrics"].items():
            sd = "" if stats["sd"] is None else f"{stats['sd']:.4f}"
            mean, low, high = (f"{stats[k]:.4f}" for k in ("mean", "min", "max"))
            lines.append(f"| {column} | {stats['n']} | {mean} | {sd} | {low} | {high} |")
    return "\n".join(lines)


def exp_show_json() -> list[dict[str, Any]]:
    """`dvc exp show --json` of the repository in the current directory."""
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["(no output)"]
        raise StageError(f"dvc exp show --json failed: {lines[-1]}")
    text = proc.stdout
    start = min(i for i in (text.find("["), text.find("{")) if i >= 0)
    return json.loads(text[start:])


def collect(
    over: Sequence[str], exp_show: list[dict[str, Any]] | None = None
) -> tuple[list[Experiment], list[dict[str, Any]]]:
    """The finished experiments of `exp_show` (read from DVC when None) and their groups."""
    experiments = experiments_of(exp_show if exp_show is not None else exp_show_json())
    if not experiments:
        raise StageError("no finished experiments; run some with `dvc exp run` first")
    return experiments, summarize(experiments, over)


def run(over: Sequence[str], as_json: bool, exp_show: list[dict[str, Any]] | None = None) -> str:
    """The summary of the experiments of `exp_show` (read from DVC when None), as text."""
    _, groups = collect(over, exp_show)
    return json.dumps(groups, indent=2) if as_json else markdown(groups, over)
