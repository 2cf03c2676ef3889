"""Plain helpers of the training tests (tests/test_train.py, test_checkpoints.py, test_loss.py,
...): synthetic records, params.yaml, and what a run writes (metrics, perf, dvclive curves)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pubmedqa_gpt2.core import paths
from pubmedqa_gpt2.data.records import Record
from pubmedqa_gpt2.prompt import LABELS

from .committed import write_params
from .conftest import ROOT

LABEL_IDS = [3763, 645, 3863]  # " yes", " no", " maybe" in GPT-2's vocabulary


def records(n: int, offset: int = 0) -> list[Record]:
    """Synthetic PQA-L records, labels cycling through yes/no/maybe."""
    return [
        Record(
            pmid=str(1000 + i),
            question=f"Does treatment {i} reduce mortality?",
            contexts=[f"We studied {i} patients.", "Outcomes were recorded."],
            labels=["BACKGROUND", "METHODS"],
            meshes=[],
            long_answer=f"Treatment {i} had an effect.",
            final_decision=LABELS[i % 3],
        )
        for i in range(offset, offset + n)
    ]


def set_params(folder: Path, params: dict) -> None:
    """params.yaml: the committed one with `params` (sections of changes) merged in."""
    write_params(folder, params)


def read_metrics(folder: Path) -> dict:
    """metrics/train.json (timing and memory, which vary, are in perf/train.json)."""
    return json.loads((folder / paths.TRAIN_METRICS).read_text())


def read_perf(folder: Path) -> dict:
    return json.loads((folder / paths.TRAIN_PERF).read_text())


def curve_text(folder: Path, name: str) -> str:
    """A dvclive curve's whole file, e.g. name="train/loss"."""
    return (folder / paths.DVCLIVE / "plots" / "metrics" / f"{name}.tsv").read_text()


def curve(folder: Path, name: str) -> dict[int, float]:
    """A dvclive curve as {step: value} (a step logged twice keeps its value)."""
    rows = [line.split("\t") for line in curve_text(folder, name).splitlines()[1:]]
    return {int(step): float(value) for step, value in rows}


def curve_steps(folder: Path, name: str) -> list[str]:
    """The steps of a dvclive curve, e.g. name="eval/loss"."""
    tsv = folder / paths.DVCLIVE / "plots" / "metrics" / f"{name}.tsv"
    return [line.split("\t")[0] for line in tsv.read_text().splitlines()[1:]]


def run_module(folder: Path) -> subprocess.CompletedProcess:
    """`python -m stages.train` in `folder`, as DVC runs it."""
    return subprocess.run(
        [sys.executable, "-m", "stages.train"],
        cwd=folder,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=600,
    )
