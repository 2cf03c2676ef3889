"""`pubmedqa-gpt2 summary`: experiments from `dvc exp show --json`, grouped and described."""

from __future__ import annotations

import json
import re
import statistics as py_stats

import pytest

from pubmedqa_gpt2 import cli, summary


def experiment(name: str, lr: float, seed: int, accuracy: float | None, error=None) -> dict:
    """One experiment as `dvc exp show --json` lists it (DVC 3's layout)."""
    metrics = {}
    if accuracy is not None:
        evaluation = {"accuracy": accuracy, "macro_f1": accuracy / 2}
        compare = {"accuracy": {"diff": accuracy - 0.5}, "mcnemar": {"p": 0.5}}
        metrics = {
            "metrics/eval_finetuned.json": {"data": evaluation},
            "metrics/compare.json": {"data": compare},
        }
    params = {"params.yaml": {"data": {"train": {"learning_rate": lr, "seed": seed}}}}
    rev = {"rev": name.ljust(40, "0"), "name": name, "error": error,
           "data": {"params": params, "metrics": metrics}}  # fmt: skip
    return {"revs": [rev], "name": name, "executor": None}


EXP_SHOW = [
    {"rev": "workspace", "name": None, "data": {}, "experiments": None},
    {
        "rev": "abc",
        "name": "main",
        "data": {},
        "experiments": [
            experiment("a0", 1e-3, 0, 0.50),
            experiment("a1", 1e-3, 1, 0.56),
            experiment("a2", 1e-3, 2, 0.53),
            experiment("b0", 5e-4, 0, 0.60),
            experiment("b1", 5e-4, 1, 0.62),
            experiment("failed", 5e-4, 2, None, error={"type": "failed"}),
        ],
    },
]


def test_groups_by_every_param_but_the_swept_ones():
    groups = summary.summarize(summary.experiments_of(EXP_SHOW), ["train.seed"])
    assert [(g["params"], g["experiments"]) for g in groups] == [
        ({"train.learning_rate": 1e-3}, ["a0", "a1", "a2"]),
        ({"train.learning_rate": 5e-4}, ["b0", "b1"]),
    ]
    first = groups[0]["metrics"]["accuracy"]
    assert first["n"] == 3
    assert first["mean"] == pytest.approx(py_stats.mean([0.50, 0.56, 0.53]))
    assert first["sd"] == pytest.approx(py_stats.stdev([0.50, 0.56, 0.53]))  # n - 1
    assert (first["min"], first["max"]) == (0.50, 0.56)
    assert groups[1]["metrics"]["accuracy_diff"]["mean"] == pytest.approx(0.11)
    assert groups[1]["metrics"]["mcnemar_p"]["sd"] == 0.0
    assert "dev_accuracy" not in groups[0]["metrics"]  # absent from these experiments
    # Sweeping both params makes one group of all five.
    (together,) = summary.summarize(
        summary.experiments_of(EXP_SHOW), ["train.seed", "train.learning_rate"]
    )
    assert together["n"] == 5 and together["params"] == {}


def test_markdown_and_json_through_the_cli(tmp_path, capsys):
    saved = tmp_path / "exp.json"
    saved.write_text(json.dumps(EXP_SHOW))
    cli.main(["summary", "--over", "train.seed", "--input", str(saved)])
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "Experiments over train.seed, grouped by every other param"
    assert table[2:7] == [
        "## Group 1: train.learning_rate=0.001",
        "",
        "3 experiments: a0, a1, a2",
        "",
        "| metric | n | mean | sd | min | max |",
    ]
    assert "| accuracy | 3 | 0.5300 | 0.0300 | 0.5000 | 0.5600 |" in table
    assert "## Group 2: train.learning_rate=0.0005" in table and "2 experiments: b0, b1" in table
    assert max(len(line) for line in table) <= 120
    cli.main(["summary", "--over", "train.seed", "--input", str(saved), "--json"])
    assert [g["n"] for g in json.loads(capsys.readouterr().out)] == [3, 2]


def test_the_text_fits_120_columns_however_many_experiments():
    names = [f"seed-sweep-run-{i}" for i in range(40)]
    many = [
        {"rev": "c0", "experiments": [experiment(n, 1e-3, i, 0.5) for i, n in enumerate(names)]}
    ]
    (group,) = summary.summarize(summary.experiments_of(many), ["train.seed"])
    text = summary.markdown([group], ["train.seed"])
    assert max(len(line) for line in text.splitlines()) <= 120, text
    assert re.findall(r"seed-sweep-run-\d+", text) == names  # every experiment, named once


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--over", "train.sed"], "--over train.sed: not a param of these experiments"),
        (
            ["--over", "train.seed", "--input", "missing.json"],
            "--input missing.json: not a readable",
        ),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.json").write_text(json.dumps(EXP_SHOW))
    if "--input" not in args:
        args = [*args, "--input", "exp.json"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["summary", *args])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_no_finished_experiments_is_an_error(tmp_path, capsys):
    saved = tmp_path / "exp.json"
    saved.write_text(json.dumps(EXP_SHOW[:1]))
    with pytest.raises(SystemExit):
        cli.main(["summary", "--over", "train.seed", "--input", str(saved)])
    assert "no finished experiments" in capsys.readouterr().err
