"""docs/CLI.md, the reference of `pubmedqa-gpt2`'s commands and options, is what the parser
takes: every command with its help line, every option with its value's name and its help (read
from the parser's actions, not from argparse's formatting, which changes between Pythons)."""

from __future__ import annotations

import argparse
import re

import pytest

from pubmedqa_gpt2 import cli

from .conftest import ROOT

REFERENCE = ROOT / "docs" / "CLI.md"


def value_name(action: argparse.Action) -> str:
    """What follows the option on a command line: nothing for a flag, else its metavar (the
    destination in capitals by default), `NAME [NAME ...]` for one or more."""
    if action.nargs == 0:
        return ""
    name = action.metavar or action.dest.upper()
    return f"{name} [{name} ...]" if action.nargs == "+" else name


def parser_rows(parser: argparse.ArgumentParser) -> list[tuple[str, ...]]:
    """(command, option or subcommand, value name, help as shown) for every action but -h;
    the command as its usage line names it (`pubmedqa-gpt2 slurm submit`)."""
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            rows += [(parser.prog, c.dest, "", c.help) for c in action._choices_actions]
            for sub in action.choices.values():
                rows += parser_rows(sub)
            continue
        shown = (action.help or "").replace("%%", "%")  # argparse's escape of a percent sign
        rows.append((parser.prog, ", ".join(action.option_strings), value_name(action), shown))
    return rows


def reference_rows() -> list[tuple[str, ...]]:
    """The rows of docs/CLI.md's table: | `command` | `option` | `VALUE` | help |."""
    rows = []
    for line in REFERENCE.read_text().splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows.append(tuple(c[1:-1] if c.startswith("`") and c.endswith("`") else c
                              for c in cells[:3]) + (cells[3].replace("\\|", "|"),))  # fmt: skip
    return rows


def test_the_reference_lists_every_command_and_option_as_the_parser_takes_it():
    parser = cli.build_parser()
    assert parser.prog == "pubmedqa-gpt2"
    assert parser.description == (
        "`pubmedqa-gpt2`: ask a saved model a PubMedQA question; summarize a sweep of experiments."
    )
    assert parser_rows(parser) == reference_rows()


def test_every_option_has_a_help_line():
    assert all(row[3] for row in parser_rows(cli.build_parser()))
    assert not [r for r in reference_rows() if not r[3] or re.search(r"\bXX", r[3])]


def parsed(*argv: str) -> dict:
    return vars(cli.build_parser().parse_args(argv))


def test_each_command_line_parses_to_the_values_and_types_its_command_reads():
    """Every option, spelled out by hand: paths as Path, counts as int, a penalty as float;
    an option not given is its documented default (None: "the settings file's", which an
    option must not override, e.g. `requeue`)."""
    from pathlib import Path

    assert parsed("ask") == {
        "command": "ask", "model": Path("models/finetuned"), "question": None, "context": None,
        "no_context": False, "pmid": None, "data": Path("data/prepared/test.parquet"),
        "params": Path("params.yaml"), "max_new_tokens": None, "repetition_penalty": None,
        "no_repeat_ngram_size": None, "json": False,
    }  # fmt: skip
    assert parsed(
        "ask", "--model", "m", "--question", "Q?", "--no-context", "--pmid", "7", "--data",
        "d.parquet", "--params", "p.yaml", "--max-new-tokens", "5", "--repetition-penalty", "1.5",
        "--no-repeat-ngram-size", "3", "--json",
    ) == {
        "command": "ask", "model": Path("m"), "question": "Q?", "context": None,
        "no_context": True, "pmid": "7", "data": Path("d.parquet"), "params": Path("p.yaml"),
        "max_new_tokens": 5, "repetition_penalty": 1.5, "no_repeat_ngram_size": 3, "json": True,
    }  # fmt: skip
    assert parsed("summary", "--over", "train.seed", "train.lr", "--plot", "p.html") == {
        "command": "summary", "over": ["train.seed", "train.lr"], "json": False, "input": None,
        "plot": Path("p.html"),
    }  # fmt: skip
    unset = {
        "workspaces": None, "git_remote": None, "partition": None, "account": None,
        "gpus_per_task": None, "cpus_per_task": None, "mem": None, "time": None, "nodes": None,
        "max_parallel": None, "signal_seconds": None,
    }  # fmt: skip
    assert parsed("slurm", "submit") == {
        "command": "slurm", "slurm_command": "submit", "set_param": [], "dry_run": False,
        "settings": Path("slurm.local.yaml"), **unset, "sbatch": None, "requeue": None,
    }  # fmt: skip
    given = {
        "workspaces": Path("/shared/ws"), "git_remote": "cluster", "partition": "gpu",
        "account": "lab", "gpus_per_task": 2, "cpus_per_task": 16, "mem": "64G",
        "time": "12:00:00", "nodes": 1, "max_parallel": 4, "signal_seconds": 600,
    }  # fmt: skip
    options = [f"--{key.replace('_', '-')}={value}" for key, value in given.items()]
    assert parsed(
        "slurm", "submit", "-S", "train.seed=0,1", "--set-param", "train.lr=1", "--dry-run",
        "--settings", "s.yaml", *options, "--sbatch=--qos=high", "--sbatch=--exclusive",
        "--no-requeue",
    ) == {
        "command": "slurm", "slurm_command": "submit", "set_param": ["train.seed=0,1",
        "train.lr=1"], "dry_run": True, "settings": Path("s.yaml"), **given,
        "sbatch": ["--qos=high", "--exclusive"], "requeue": False,
    }  # fmt: skip
    assert parsed("slurm", "status", "--sweep", "sweep-1", "--json", *options) == {
        "command": "slurm", "slurm_command": "status", "sweep": "sweep-1", "json": True,
        "settings": Path("slurm.local.yaml"), **given,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "missing"),
    [([], "command"), (["slurm"], "slurm_command"), (["summary"], "--over")],
)
def test_a_command_line_without_its_command_is_refused_by_the_parser(argv, missing, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert f"error: the following arguments are required: {missing}" in capsys.readouterr().err
