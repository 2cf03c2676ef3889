"""`pubmedqa-gpt2 summary`: experiments from `dvc exp show --json`, grouped and described."""

from __future__ import annotations

import json
import re
import statistics as py_stats
import sys

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
    out = capsys.readouterr().out
    assert [g["n"] for g in json.loads(out)] == [3, 2]
    # Indented by two spaces a level, for a person to read: the first group's params first.
    assert out.startswith('[\n  {\n    "params": {\n      "train.learning_rate": 0.001\n    },\n')


def test_without_input_the_cli_reads_dvc_s_experiments(tmp_path, capsys, monkeypatch):
    """No --input: the experiments `dvc exp show --json` lists (stood in for here)."""
    monkeypatch.setattr(summary, "exp_show_json", lambda: EXP_SHOW)
    cli.main(["summary", "--over", "train.seed", "--json"])
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
    # One group, nothing sets it apart: a bare heading. The names fill the width, not 70.
    assert "## Group 1" in text.splitlines(), text
    named = [line for line in text.splitlines() if "seed-sweep-run-" in line]
    assert len(named) > 1 and all(len(line) > 100 for line in named[:-1]), text


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


def entry(name, params: dict, metrics: dict | None, error=None, rev="f" * 40) -> dict:
    """A `dvc exp show --json` rev with the given params.yaml tree and metrics files."""
    files = {path: {"data": data} for path, data in (metrics or {}).items()}
    return {"rev": rev, "name": name, "error": error,
            "data": {"params": {"params.yaml": {"data": params}}, "metrics": files}}  # fmt: skip


def tuned(accuracy: float) -> dict:
    return {"metrics/eval_finetuned.json": {"accuracy": accuracy}}


def test_experiments_whose_params_differ_in_which_keys_they_have():
    """A param only some experiments have (LoRA's rank, added later) sets them apart: the
    others count as lacking it (None), and grouping never mixes the two."""
    plain = {"train": {"seed": 0, "learning_rate": 1e-3}}
    with_rank = {"train": {"seed": 0, "learning_rate": 1e-3, "lora": {"r": 8}}}
    exp_show = [{"rev": "abc", "experiments": [{"revs": [
        entry("p0", plain, tuned(0.5)),
        entry("p1", {"train": {**plain["train"], "seed": 1}}, tuned(0.7)),
        entry("r0", with_rank, tuned(0.9)),
        entry("r1", {"train": {**with_rank["train"], "seed": 1}}, tuned(0.8)),
        # a param tree without the swept key: in its own group, and --over still accepted
        entry("noseed", {"train": {"learning_rate": 5e-4}}, tuned(0.1)),
    ]}]}]  # fmt: skip
    groups = summary.summarize(summary.experiments_of(exp_show), ["train.seed"])
    assert [(g["params"], g["experiments"], g["n"]) for g in groups] == [
        ({"train.learning_rate": 1e-3, "train.lora.r": None}, ["p0", "p1"], 2),
        ({"train.learning_rate": 1e-3, "train.lora.r": 8}, ["r0", "r1"], 2),
        ({"train.learning_rate": 5e-4, "train.lora.r": None}, ["noseed"], 1),
    ]
    assert groups[0]["swept"] == {"train.seed": ["0", "1"]}
    assert groups[2]["swept"] == {"train.seed": ["null"]}
    assert groups[1]["metrics"]["accuracy"] == pytest.approx(
        {"mean": 0.85, "sd": 0.0707107, "min": 0.8, "max": 0.9, "n": 2}, abs=1e-6
    )  # sd by hand: |0.9 - 0.8| / sqrt(2)
    assert groups[2]["metrics"]["accuracy"] == {"mean": 0.1, "sd": None, "min": 0.1,
                                                "max": 0.1, "n": 1}  # fmt: skip
    text = summary.markdown(groups, ["train.seed"])
    assert (
        "## Group 1: train.learning_rate=0.001, train.lora.r=None\n\n2 experiments: p0, p1\n"
        in text
    )
    # sd by hand: |0.7 - 0.5| / sqrt(2) = 0.1414
    assert "| accuracy | 2 | 0.6000 | 0.1414 | 0.5000 | 0.7000 |" in text
    assert (
        "## Group 2: train.learning_rate=0.001, train.lora.r=8\n\n2 experiments: r0, r1\n" in text
    )
    assert (
        "## Group 3: train.learning_rate=0.0005, train.lora.r=None\n\n1 experiment: noseed\n"
        in text
    )
    assert text.endswith("| accuracy | 1 | 0.1000 |  | 0.1000 | 0.1000 |")  # one run: no sd


def test_failed_and_unfinished_experiments_are_left_out():
    """A failed experiment is left out even when DVC shows metrics for it (those of the
    commit it started from); a queued one has none. A nameless one goes by its short rev."""
    params = {"train": {"seed": 0}}
    exp_show = [{"rev": "abc", "experiments": [
        {"revs": [entry("failed", params, tuned(0.9), error={"type": "failed"})]},
        {"revs": [entry("queued", params, None)]},
        {"revs": [entry(None, params, tuned(0.4), rev="1234567" + "0" * 33)]},
        {"revs": None},
    ]}, {"rev": "workspace", "experiments": None}]  # fmt: skip
    (only,) = summary.experiments_of(exp_show)
    assert only == summary.Experiment(
        name="1234567", params={"train.seed": 0}, metrics={"accuracy": 0.4}
    )


def test_headline_metrics_are_read_from_their_files_by_dotted_key():
    metrics = {
        "metrics/eval_finetuned.json": {"accuracy": 0.6, "macro_f1": 0.5, "rougeL": 0.2,
                                        "meteor": 0.3, "ci95": {"accuracy": 1}},
        "metrics/train.json": {"dev_accuracy": 0.7},
        "metrics/compare.json": {"accuracy": {"diff": 0.1}, "macro_f1": {"diff": -0.2},
                                 "mcnemar": {"p": 0.04}},
    }  # fmt: skip
    experiment = summary.read_experiment(entry("e", {"a": {"b": {}}}, metrics))
    assert experiment.metrics == {
        "accuracy": 0.6, "macro_f1": 0.5, "rougeL": 0.2, "meteor": 0.3, "dev_accuracy": 0.7,
        "accuracy_diff": 0.1, "macro_f1_diff": -0.2, "mcnemar_p": 0.04,
    }  # fmt: skip
    assert experiment.params == {"a.b": {}}  # an empty section is a value, not dropped
    assert summary.flatten({"a": {"b": 1, "c": {"d": None}}, "e": 2}) == {
        "a.b": 1, "a.c.d": None, "e": 2,
    }  # fmt: skip


def test_dvc_exp_show_output_is_read_after_any_warnings(monkeypatch):
    import subprocess

    calls = []
    shown = {"out": 'WARNING: something\n[{"rev": "x", "l": [1]}]\n'}

    def fake_run(args, **kwargs):
        calls.append((args, kwargs))
        return subprocess.CompletedProcess(args, 0, shown["out"], "")

    monkeypatch.setattr(summary.subprocess, "run", fake_run)
    assert summary.exp_show_json() == [{"rev": "x", "l": [1]}]
    assert calls[0] == (
        [sys.executable, "-m", "dvc", "exp", "show", "--json"],
        {"capture_output": True, "text": True},
    )
    for out, expected in (
        ('[{"rev": "y"}]', [{"rev": "y"}]),  # no warning before it
        ('note\n{"a": {"b": 1}}', {"a": {"b": 1}}),  # an object, nested
    ):
        shown["out"] = out
        assert summary.exp_show_json() == expected

    def failing(args, **kwargs):
        return subprocess.CompletedProcess(args, 255, "", "ERROR: first\nERROR: not a repo\n")

    monkeypatch.setattr(summary.subprocess, "run", failing)
    with pytest.raises(summary.StageError, match=r"^dvc exp show --json failed: ERROR: not a "):
        summary.exp_show_json()
    monkeypatch.setattr(
        summary.subprocess, "run", lambda a, **k: subprocess.CompletedProcess(a, 1, "", "")
    )
    with pytest.raises(summary.StageError, match=r"failed: \(no output\)$"):
        summary.exp_show_json()


def test_the_table_leaves_out_a_metric_a_group_lacks_and_names_every_swept_param():
    exp_show = [{"rev": "abc", "experiments": [{"revs": [
        entry("a", {"train": {"seed": 0, "lr": 1}, "prepare": {"fold": 0}, "m": "gpt2"},
              tuned(0.5)),  # m: the same in every experiment, so not a column
        entry("b", {"train": {"seed": 0, "lr": 2}, "prepare": {"fold": 0}, "m": "gpt2"},
              {**tuned(0.6), "metrics/train.json": {"dev_accuracy": 0.7}}),
    ]}]}]  # fmt: skip
    over = ["train.seed", "prepare.fold"]
    table = summary.run(over, as_json=False, exp_show=exp_show).split("\n\n")
    head = "| metric | n | mean | sd | min | max |\n|---|---|---|---|---|---|\n"
    assert table == [
        "Experiments over train.seed, prepare.fold, grouped by every other param",
        "## Group 1: train.lr=1",  # m is the same in every experiment: it sets none apart
        "1 experiment: a",
        head + "| accuracy | 1 | 0.5000 |  | 0.5000 | 0.5000 |",  # no dev_accuracy row
        "## Group 2: train.lr=2",
        "1 experiment: b",
        head
        + "| accuracy | 1 | 0.6000 |  | 0.6000 | 0.6000 |\n"
        + "| dev_accuracy | 1 | 0.7000 |  | 0.7000 | 0.7000 |",
    ]
    text = summary.run(over, as_json=True, exp_show=exp_show)
    assert text.startswith('[\n  {\n    "params": {\n      "train.lr": 1\n    },')
    with pytest.raises(summary.StageError) as error:
        summary.summarize(summary.experiments_of(exp_show), ["train.sed", "prepare.fld"])
    assert str(error.value) == "--over prepare.fld, train.sed: not a param of these experiments"


def test_run_reads_dvc_only_without_given_experiments(monkeypatch):
    monkeypatch.setattr(summary, "exp_show_json", lambda: EXP_SHOW)
    assert summary.run(["train.seed"], as_json=False) == summary.run(
        ["train.seed"], as_json=False, exp_show=EXP_SHOW
    )
    monkeypatch.setattr(summary, "exp_show_json", lambda: [])
    assert summary.run(["train.seed"], as_json=True, exp_show=EXP_SHOW).startswith("[")
    with pytest.raises(summary.StageError) as error:
        summary.run(["train.seed"], as_json=False)
    assert str(error.value) == "no finished experiments; run some with `dvc exp run` first"


def test_an_experiment_without_params_yaml_has_no_params():
    rev = {"rev": "a" * 40, "name": "e", "data": {"params": {"other.yaml": {"data": {"x": 1}}},
           "metrics": {"metrics/train.json": {"data": {"dev_accuracy": 0.5}}}}}  # fmt: skip
    assert summary.read_experiment(rev) == summary.Experiment("e", {}, {"dev_accuracy": 0.5})
    rev["data"]["params"] = None
    assert summary.read_experiment(rev).params == {}


def test_a_param_one_experiment_lacks_never_matches_another_s_value():
    """{a: 1} and {b: 1}: not one group, though both list one param set to 1."""
    exp_show = [{"rev": "abc", "experiments": [{"revs": [
        entry("only_a", {"seed": 0, "a": 1}, tuned(0.5)),
        entry("only_b", {"seed": 1, "b": 1}, tuned(0.6)),
    ]}]}]  # fmt: skip
    groups = summary.summarize(summary.experiments_of(exp_show), ["seed"])
    assert [(g["params"], g["experiments"]) for g in groups] == [
        ({"a": 1, "b": None}, ["only_a"]),
        ({"a": None, "b": 1}, ["only_b"]),
    ]
