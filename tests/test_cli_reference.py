"""docs/CLI.md, the reference of `pubmedqa-gpt2`'s commands and options, is what the parser
takes: every command with its help line, every option with its value's name and its help (read
from the parser's actions, not from argparse's formatting, which changes between Pythons)."""

from __future__ import annotations

import argparse
import re

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
