"""The results table: generated from the metrics files, and the README's copy kept in step."""

from __future__ import annotations

import json

import pytest

from pubmedqa_gpt2.core.config import load_params
from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.core.paths import REFERENCE_FILE, RESULTS_FILE
from pubmedqa_gpt2.evaluation import report

from .committed import committed_params
from .conftest import ROOT


def test_the_readme_table_is_what_the_committed_metrics_give(monkeypatch):
    monkeypatch.chdir(ROOT)
    table = report.results_table(load_params(ROOT / "params.yaml"))
    readme = (ROOT / "README.md").read_text()
    between_markers = readme.split(report.BEGIN)[1].split(report.END)[0].removeprefix("\n")
    assert between_markers == table, "run `python -m stages.report --readme`"
    assert (ROOT / RESULTS_FILE).read_text() == table


def write(path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_rows_show_the_figures_with_their_intervals_and_sources(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports").mkdir()
    (tmp_path / REFERENCE_FILE).write_text(
        "- {model: always yes, accuracy: 55.2, macro_f1: 23.71, source: counted}\n"
        "- {model: a big model, accuracy: 74.4, macro_f1: null, source: a paper}\n"
    )
    ci = {"accuracy": {"low": 0.41, "high": 0.502}, "macro_f1": {"low": 0.3, "high": 0.36}}
    base = {"accuracy": 0.458, "macro_f1": 0.331, "rougeL": 0.0, "meteor": 0.0225, "ci95": ci}
    write(tmp_path / "metrics/eval_base.json", base)
    model = {"name": "gpt2", "init": "random", "overrides": {"n_layer": 2}}
    params = committed_params({"model": model, "train": {"epochs": 2}})
    table = report.results_table(params)
    lines = table.splitlines()
    assert lines[2] == (
        "| gpt2, base | `gpt2` (random init, n_layer=2); 450 questions x 2 epochs, lr 2e-05; "
        "dev fold 0 | 45.8 (41.0–50.2) | 33.1 (30.0–36.0) | 0.0 | 2.2 | `metrics/eval_base.json` |"
    )
    assert lines[3].startswith("| gpt2, fine-tuned |") and "not run yet" in lines[3]
    assert lines[4] == "| always yes | published | 55.2 | 23.71 | | | counted |"
    assert lines[5] == "| a big model | published | 74.4 |  | | | a paper |"
    assert "Paired comparison" not in table
    compare = {
        "n_test": 500,
        "accuracy": {"base": 0.458, "tuned": 0.434, "diff": -0.024, "low": -0.076,
                     "high": 0.03},
        "mcnemar": {"fixed": 83, "broken": 95, "p": 0.4097},
    }  # fmt: skip
    write(tmp_path / "metrics/compare.json", compare)
    assert (
        "Paired comparison (`metrics/compare.json`): fine-tuning changed accuracy by -2.4 points "
        "(95% CI -7.6 to +3.0; McNemar exact p = 0.41; 83 questions fixed, 95 broken; "
        "500 test questions)." in report.results_table(params)
    )


def test_readme_markers_are_required():
    with pytest.raises(StageError, match="needs the markers"):
        report.replace_block("no markers here", "table")
    text = f"a\n{report.BEGIN}\nold\n{report.END}\nb"
    assert report.replace_block(text, "new\n") == f"a\n{report.BEGIN}\nnew\n{report.END}\nb"


def test_the_closing_hint_names_every_file_git_keeps_of_a_run():
    """Every `cache: false` output of dvc.yaml (metrics, perf, reports), dvc.lock and
    params.yaml are under a path of the report stage's `git add` hint."""
    import yaml

    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    kept = {"dvc.lock", "params.yaml"}
    for stage in pipeline["stages"].values():
        stage = stage.get("do", stage)
        for entry in stage.get("outs", []) + stage.get("metrics", []):
            if isinstance(entry, dict):
                ((path, options),) = entry.items()
                if options.get("cache") is False:
                    kept.add(path.replace("${key}", "base"))
    assert len(kept) > 10
    hint = report.commit_hint()
    (add,) = [line.strip() for line in hint.splitlines() if "git add" in line]
    named = add.removeprefix("git add ").split()
    for path in sorted(kept):
        assert any(path == n or path.startswith(n + "/") for n in named), (path, add)


@pytest.mark.repo_files
def test_dvc_stages_dvc_lock_itself_so_its_own_hint_is_off():
    """DVC's own closing hint (dvc.lock alone) is off: .dvc/config stages dvc.lock itself
    (core.autostage), and the report stage's hint names the rest."""
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc/config")
    assert config["core"]["autostage"] == "true"


def test_a_fine_tuned_row_a_lora_run_and_missing_figures(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports").mkdir()
    (tmp_path / REFERENCE_FILE).write_text("")  # no published rows
    write(tmp_path / "metrics/eval_finetuned.json", {"accuracy": 0.5, "macro_f1": 0.25})
    model = {"name": "gpt2", "init": "random", "overrides": {"n_layer": 2, "n_embd": 64}}
    params = committed_params(
        {"model": model, "train": {"epochs": 1, "lora": {"enabled": True}},
         "prepare": {"max_train_samples": 8, "fold": 3}}
    )  # fmt: skip
    lines = report.results_table(params).splitlines()
    setup = "`gpt2` (random init, n_layer=2, n_embd=64); 8 questions x 1 epochs, lr 2e-05, LoRA; dev fold 3"  # noqa: E501
    assert lines[2] == f"| gpt2, base | {setup} | not run yet | | | | |"
    assert (
        lines[3]
        == f"| gpt2, fine-tuned | {setup} | 50.0 | 25.0 |  |  | `metrics/eval_finetuned.json` |"
    )  # noqa: E501
    assert lines[4] == ""


def test_broken_inputs_are_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports").mkdir()
    (tmp_path / REFERENCE_FILE).write_text("- {model: m, accuracy: 1, source: s}\n")
    with pytest.raises(StageError) as error:
        report.read_reference()
    assert str(error.value) == f"{REFERENCE_FILE}: row 1 (m): no 'macro_f1'"
    (tmp_path / REFERENCE_FILE).write_text(
        "- {model: a, accuracy: 1, macro_f1: null, source: s}\n- {accuracy: 1}\n"
    )
    with pytest.raises(StageError) as error:
        report.read_reference()
    assert str(error.value) == f"{REFERENCE_FILE}: row 2 (None): no 'model'"
    write(tmp_path / "metrics/eval_base.json", {})
    (tmp_path / "metrics/eval_base.json").write_text("{")
    with pytest.raises(StageError) as error:
        report.read_metrics("eval_base")
    assert str(error.value) == (
        "metrics/eval_base.json: not JSON (Expecting property name enclosed in double quotes)"
    )
    for text in (f"{report.BEGIN}\nno end", f"no begin\n{report.END}"):
        with pytest.raises(StageError, match="needs the markers"):
            report.replace_block(text, "table")
