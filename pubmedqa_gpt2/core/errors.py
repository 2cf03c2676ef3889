"""The one way a stage fails on bad input: a one-line message and a non-zero exit."""

from __future__ import annotations

import sys
from collections.abc import Callable


class StageError(Exception):
    """Bad input or params: the message names the file, record and field at fault."""


def one_line(exc: BaseException) -> str:
    """A library's message (YAML's, transformers' paragraphs) on one line, to quote in a
    StageError: its non-blank lines, stripped, joined by spaces."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's `main`; a StageError becomes `error: ...` on stderr and exit status 1."""
    try:
        main()
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
