"""How a stage ends (`pubmedqa_gpt2/core/errors.py`): bad input is one `error:` line and status 1;
Ctrl-C is one line and the shell's 128 + SIGINT."""

from __future__ import annotations

import pytest

from pubmedqa_gpt2.core.errors import StageError, run_stage


def ending(capsys, main) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        run_stage(main)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_bad_input_is_one_error_line_and_status_1(capsys):
    def main():
        raise StageError("params.yaml: train.epochs: bad")

    assert ending(capsys, main) == (1, "", "error: params.yaml: train.epochs: bad\n")


def test_an_interrupt_is_one_line_and_status_130(capsys):
    def main():
        raise KeyboardInterrupt

    assert ending(capsys, main) == (130, "", "interrupted\n")


def test_a_stage_that_ends_well_just_returns(capsys):
    run_stage(lambda: print("done"))
    assert capsys.readouterr().out == "done\n"


def test_a_library_s_paragraphs_are_quoted_on_one_line():
    from pubmedqa_gpt2.core.errors import one_line

    exc = ValueError(
        "while parsing a flow node\nexpected the node content\n  in line 1:\n\n    a: [\n"
    )
    assert one_line(exc) == "while parsing a flow node expected the node content in line 1: a: ["
