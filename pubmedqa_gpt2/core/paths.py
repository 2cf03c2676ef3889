"""Every file and folder the pipeline reads or writes, relative to the project's root (where
DVC runs each stage): one definition each. `dvc.yaml` names the same paths."""

from __future__ import annotations

from pathlib import Path

PARAMS_FILE = Path("params.yaml")
PARAMS_CHECKED = Path("reports/params.checked")  # the `validate` stage's output

# download, ingest
OFFICIAL_FILE = Path("data/external/ori_pqal.json")
RAW_DIR = Path("data/raw")
RAW_LABELED = RAW_DIR / "pqa_labeled.jsonl"
RAW_ARTIFICIAL = RAW_DIR / "pqa_artificial.jsonl"

# prepare
PREPARED_DIR = Path("data/prepared")
SPLITS = ("train", "dev", "test")
ARTIFICIAL = "artificial"  # PQA-A: phase 1's training set (the pretrain stage)
TRAIN_FILE = PREPARED_DIR / "train.parquet"
DEV_FILE = PREPARED_DIR / "dev.parquet"
TEST_FILE = PREPARED_DIR / "test.parquet"
ARTIFICIAL_FILE = PREPARED_DIR / f"{ARTIFICIAL}.parquet"
METRICS_DIR = Path("metrics")
DATA_METRICS = METRICS_DIR / "data.json"

# train (phase 2)
FINETUNED = Path("models/finetuned")
CHECKPOINTS = Path("models/checkpoints")  # not a DVC output: DVC never deletes it
DVCLIVE = Path("dvclive")
TRAIN_METRICS = METRICS_DIR / "train.json"
PERF_DIR = Path("perf")
TRAIN_PERF = PERF_DIR / "train.json"  # timings, devices, memory: an output, not a metric

# pretrain (phase 1)
PHASE1_MODEL = Path("models/phase1")
PHASE1_CHECKPOINTS = Path("models/checkpoints-phase1")
PHASE1_DVCLIVE = Path("dvclive-pretrain")
PRETRAIN_METRICS = METRICS_DIR / "pretrain.json"
PRETRAIN_PERF = PERF_DIR / "pretrain.json"

# evaluate, compare, report
EVAL_DIR = Path("eval")
EVALUATED = ("base", "finetuned")


def eval_metrics(which: str) -> Path:
    """metrics/eval_<model>.json"""
    return METRICS_DIR / f"eval_{which}.json"


def samples_file(which: str) -> Path:
    """eval/<model>/samples.jsonl"""
    return EVAL_DIR / which / "samples.jsonl"


COMPARE_METRICS = METRICS_DIR / "compare.json"
COMPARE_SENTENCE = EVAL_DIR / "compare.txt"
# The forest plot's rows: each figure of each model and their difference, with its interval.
COMPARE_PLOT = EVAL_DIR / "compare_intervals.json"
# The page `dvc plots show` fills (.dvc/config's html_template), vega inlined: plots offline.
PLOTS_TEMPLATE = Path("reports/plots_template.html")
REFERENCE_FILE = Path("reports/reference.yaml")
RESULTS_FILE = Path("reports/results.md")
README = Path("README.md")

# What git keeps of a run (the rest is in DVC's cache): the lock, the params it ran with, and
# every `cache: false` output of dvc.yaml (metrics, perf, reports). The report stage's closing
# hint names them.
KEPT_IN_GIT = (Path("dvc.lock"), PARAMS_FILE, METRICS_DIR, PERF_DIR, Path("reports"))
