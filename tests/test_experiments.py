"""DVC experiments of the smoke run, through real git and real dvc in temporary clones: `dvc exp
run -S` and what it reruns, a seed sweep through DVC's queue (`seed_sweep`), the diffs between
two commits, `summary` over the sweep, the README's experiments table, and an experiment on
the 450 real training questions that learns what a small model can.

Their helpers are in `tests/e2e.py`, the shared runs (`smoke`, `seed_sweep`) in
`tests/conftest.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import needs_pubmedqa, needs_tokenizer
from .e2e import (
    AFTER_TRAIN,
    commit_all,
    committed_json,
    committed_json_params,
    copy_of,
    experiment_revs,
    experiment_that_moved_accuracy,
    ran_stages,
    read_json,
    read_json_text,
    readme_line,
    sh,
    shown_experiments,
)

pytestmark = [needs_pubmedqa, needs_tokenizer, pytest.mark.e2e]


def test_exp_run_set_param_reruns_only_train_and_its_evaluation(smoke, tmp_path):
    repo = copy_of(smoke[0], tmp_path / "repo")
    output = sh(
        ["dvc", "exp", "run", "--name", "lr-5e-4", "-S", "train.learning_rate=5e-4"], cwd=repo
    )
    # A train param reruns train, the fine-tuned model's evaluation and the comparison; the
    # base model's evaluation is cached.
    assert sorted(ran_stages(output)) == AFTER_TRAIN
    table = read_json_text(sh(["dvc", "exp", "show", "--json"], cwd=repo))
    names = [exp.get("name") for rev in table for exp in rev.get("experiments") or []]
    assert "lr-5e-4" in names
    shown = sh(["dvc", "exp", "show", "--no-pager", "--csv"], cwd=repo)
    header, *rows = shown.splitlines()
    assert "accuracy" in header and "train.learning_rate" in header
    assert any(row.startswith("lr-5e-4") and "0.0005" in row for row in rows)


# ---- A seed sweep through DVC's queue: the diffs, the summary and the readable table ----


@pytest.fixture
def sweep_copy(seed_sweep, tmp_path) -> Path:
    """A copy of the seed sweep (git with its experiment refs, DVC cache, outputs)."""
    return copy_of(seed_sweep, tmp_path / "sweep")


def test_metrics_params_and_plots_diff_between_two_commits(sweep_copy):
    """An experiment of the seed sweep applied and committed on top of its baseline commit:
    nothing is left to rerun; `dvc metrics diff` lists the fine-tuned model's figures, not the
    base model's (unchanged); `dvc params diff` the seed; `dvc plots diff` draws both."""
    repo = sweep_copy
    revs = experiment_revs(repo)
    name = experiment_that_moved_accuracy(repo, revs)
    seed = committed_json_params(repo, revs[name])["train"]["seed"]
    sh(["dvc", "exp", "apply", name], cwd=repo)
    commit_all(repo, f"experiment {name}")
    assert ran_stages(sh(["dvc", "repro"], cwd=repo)) == []
    metrics = read_json_text(sh(["dvc", "metrics", "diff", "HEAD~1", "HEAD", "--json"], cwd=repo))
    # Only changed metrics are listed: the fine-tuned model's, not the base model's.
    assert "perplexity" in metrics["metrics/eval_finetuned.json"]
    assert "dev_loss" in metrics["metrics/train.json"]
    assert "accuracy.diff" in metrics["metrics/compare.json"]
    assert "metrics/eval_base.json" not in metrics  # the base model did not change
    params = read_json_text(sh(["dvc", "params", "diff", "HEAD~1", "HEAD", "--json"], cwd=repo))
    change = params["params.yaml"]["train.seed"]
    assert (change["old"], change["new"]) == (42, seed)  # 42: params.yaml's, smoke.yaml keeps it
    out = sh(["dvc", "plots", "diff", "HEAD~1", "HEAD", "-o", "plots"], cwd=repo)
    page = (repo / "plots/index.html").read_text()
    assert "file://" in out or "index.html" in out
    assert "confusion" in page.lower() and "loss" in page
    # The comparison as a forest plot, and calibration, for both commits side by side.
    assert "Fine-tuned against base on the test set" in page and "Calibration, fine-tuned" in page
    forest = page[page.index('<div id = "eval_compare_intervals_json"') :].split("</div>")[0]
    assert '"rev": "HEAD~1"' in forest and '"rev": "HEAD"' in forest


def test_queued_experiments_run_to_completion(sweep_copy):
    """The seed sweep (`seed_sweep`: `dvc exp run --queue -S train.seed=0,1`, one queue
    worker): the queue says both succeeded, and `dvc exp show` lists each experiment with
    its own seed and the metrics of its own commit."""
    repo = sweep_copy
    status = sh(["dvc", "queue", "status"], cwd=repo)
    assert status.count("Success") == 2 and "Failed" not in status, status
    shown = shown_experiments(repo)
    assert len(shown) == 2 and all(name in status for name in shown), status
    seeds = []
    for rev in shown.values():
        data = rev["data"]
        seeds.append(data["params"]["params.yaml"]["data"]["train"]["seed"])
        accuracy = data["metrics"]["metrics/eval_finetuned.json"]["data"]["accuracy"]
        committed = committed_json(repo, rev["rev"], "metrics/eval_finetuned.json")
        assert accuracy == committed["accuracy"]
    assert sorted(seeds) == [0, 1]


def test_seed_sweep_summary_equals_the_experiments_metrics_files(sweep_copy):
    repo = sweep_copy
    revs = experiment_revs(repo)
    assert len(revs) == 2
    seeds = {name: committed_json_params(repo, rev)["train"]["seed"] for name, rev in revs.items()}
    assert sorted(seeds.values()) == [0, 1]
    (group,) = json.loads(
        sh(["pubmedqa-gpt2", "summary", "--over", "train.seed", "--json"], cwd=repo)
    )
    assert group["n"] == 2 and sorted(group["experiments"]) == sorted(revs)
    files = {
        name: {
            "eval": committed_json(repo, rev, "metrics/eval_finetuned.json"),
            "train": committed_json(repo, rev, "metrics/train.json"),
            "compare": committed_json(repo, rev, "metrics/compare.json"),
        }
        for name, rev in revs.items()
    }
    expected = {
        "accuracy": [f["eval"]["accuracy"] for f in files.values()],
        "macro_f1": [f["eval"]["macro_f1"] for f in files.values()],
        "dev_accuracy": [f["train"]["dev_accuracy"] for f in files.values()],
        "accuracy_diff": [f["compare"]["accuracy"]["diff"] for f in files.values()],
        "mcnemar_p": [f["compare"]["mcnemar"]["p"] for f in files.values()],
    }
    for column, values in expected.items():
        stats = group["metrics"][column]
        mean = sum(values) / 2
        sd = (sum((v - mean) ** 2 for v in values) / 1) ** 0.5  # n - 1
        assert stats["n"] == 2
        assert stats["mean"] == pytest.approx(mean)
        assert stats["sd"] == pytest.approx(sd)
        assert (stats["min"], stats["max"]) == pytest.approx((min(values), max(values)))
    assert len(set(expected["accuracy"])) > 1  # the seeds did change the runs
    table = sh(["pubmedqa-gpt2", "summary", "--over", "train.seed"], cwd=repo)
    assert "| metric | n | mean | sd | min | max |" in table and "| accuracy | 2 |" in table
    assert all(name in table for name in revs)  # each group names its experiments
    print(table)  # quoted in the issue note (pytest -s)


def test_the_readme_experiments_table_fits_100_columns(sweep_copy):
    """The README's `dvc exp show` line on the sweep's experiments: within 100 columns, nothing cut
    short, columns in reading order (value, change, interval, p), accuracy to 3 significant
    digits and McNemar's p to 2; and plain `dvc exp show` names no experiment at 160 columns,
    as the README says."""
    repo = sweep_copy
    shown = sh(readme_line("dvc exp show --csv"), cwd=repo, env={"COLUMNS": "100"})
    print(shown)  # quoted in the issue note (pytest -s)
    lines = [line for line in shown.splitlines() if line.strip()]
    assert max(len(line) for line in lines) <= 100, shown
    assert "…" not in shown, shown  # no column cut short
    header = lines[0].split()
    order = ["accuracy.tuned", "accuracy.diff", "accuracy.low", "accuracy.high", "mcnemar.p"]
    assert header == ["Experiment", "rev", *order], header
    revs = experiment_revs(repo)
    for name, rev in revs.items():
        (row,) = [line.split() for line in lines if line.startswith(name + " ")]
        compare = committed_json(repo, rev, "metrics/compare.json")
        accuracy, p = compare["accuracy"], compare["mcnemar"]["p"]
        assert p == float(f"{p:.2g}"), p  # stored to 2 significant digits
        expected = [accuracy[k] for k in ("tuned", "diff", "low", "high")] + [p]
        assert [float(cell) for cell in row[2:]] == [float(f"{v:.3g}") for v in expected], row
    plain = sh(["dvc", "exp", "show", "--no-pager"], cwd=repo, env={"COLUMNS": "160"})
    assert not any(name in plain for name in revs), plain  # the README's reason to use --keep

    # `dvc metrics diff` of the baseline commit and an experiment, as the README writes it.
    name = experiment_that_moved_accuracy(repo, revs)
    command = readme_line("dvc metrics diff").replace("lr-1e-5", name)
    diff = sh(command, cwd=repo, env={"COLUMNS": "100"})
    print(diff)
    assert "failed to load" not in diff and "accuracy.diff" in diff, diff
    assert max(len(line) for line in diff.splitlines()) <= 100, diff
    plots = sh(readme_line("dvc plots diff").replace("lr-1e-5", name), cwd=repo)
    assert "failed to load" not in plots and "index.html" in plots, plots

    # `summary`'s text: within 120 columns, naming each group's experiments.
    text = sh(["pubmedqa-gpt2", "summary", "--over", "train.seed"], cwd=repo)
    print(text)
    assert max(len(line) for line in text.splitlines()) <= 120, text
    assert "2 experiments: " in text and all(name in text for name in revs), text
    assert "| accuracy | 2 |" in text, text


# ---- Training learns: 450 questions, a small model, through the pipeline ----


def test_training_on_the_real_questions_learns_what_a_small_model_can(smoke, tmp_path):
    """A random-init GPT-2 (2 layers, 128 wide) fine-tuned on all 450 training questions for
    2 epochs:
    test accuracy at least the majority-class rate (276/500), and the reference long answers
    at least 10x more likely (perplexity) than before. A broken objective (the notebook's
    misaligned labels) or evaluation fails this."""
    repo = copy_of(smoke[0], tmp_path / "repo")
    settings = {
        "model.overrides.n_embd": "128",
        "prepare.max_train_samples": "null",
        "train.epochs": "2",
        "train.learning_rate": "2e-3",
        "train.warmup_ratio": "0.05",
    }
    flags = [arg for key, value in settings.items() for arg in ("-S", f"{key}={value}")]
    output = sh(["dvc", "exp", "run", "--name", "learns", *flags], cwd=repo)
    assert "Ran experiment(s): learns" in output
    assert read_json(repo / "metrics/train.json")["train_examples"] == 450
    base = read_json(repo / "metrics/eval_base.json")
    tuned = read_json(repo / "metrics/eval_finetuned.json")
    assert tuned["accuracy"] >= 276 / 500, tuned
    assert base["perplexity"] >= 10 * tuned["perplexity"], (base["perplexity"], tuned)
    print(  # the figures quoted in the issue note (pytest -s)
        f"accuracy {base['accuracy']} -> {tuned['accuracy']}, perplexity "
        f"{base['perplexity']:.0f} -> {tuned['perplexity']:.0f};",
        (repo / "eval/compare.txt").read_text(),
    )
