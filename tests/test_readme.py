"""The README stays a short page of what to type, and what it says to type is what CI runs.
(Its offline quickstart is run as written by the smoke fixture of tests/conftest.py; its
results table is checked by tests/test_report.py.)"""

from __future__ import annotations

import re

from .conftest import ROOT

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))


def fenced_blocks(text: str) -> list[str]:
    """The bodies of the ```bash blocks of a Markdown text."""
    return re.findall(r"^```bash\n(.*?)^```$", text, flags=re.S | re.M)


def section(text: str, heading: str) -> str:
    """The text under `## heading`, up to the next `## `."""
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_the_readme_is_short() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines: move detail to docs/"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    (block,) = fenced_blocks(section(README.read_text(), "Test"))
    commands = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line.strip()]
    assert block.strip() == "python -m pytest"
    assert commands[-1] == block.strip()


def test_the_cpu_build_of_torch_is_installed_before_the_project() -> None:
    (block,) = fenced_blocks(section(README.read_text(), "Install"))
    lines = block.splitlines()
    torch = next(i for i, line in enumerate(lines) if line.startswith("pip install torch"))
    project = next(i for i, line in enumerate(lines) if line.startswith('pip install -e ".[dev]"'))
    assert torch < project
    # The command .ci/run types, and PyTorch's CPU index where pip would bring the CUDA build.
    ci = (ROOT / ".ci/run").read_text()
    (pin,) = re.findall(r"torch==[\w.]+", lines[torch].split("#")[0])
    assert f"pip install --quiet {pin}\n" in ci, pin
    assert "--index-url https://download.pytorch.org/whl/cpu" in lines[torch]


def anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_of_the_readme_and_docs_resolves() -> None:
    for page in [README, *DOCS]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, fragment = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.relative_to(ROOT)}: {target}"
            if fragment:
                headings = re.findall(r"^#+ (.*)$", linked.read_text(), flags=re.M)
                assert fragment in {anchor(h) for h in headings}, f"{page.name}: {target}"


def test_no_docs_page_is_an_orphan() -> None:
    readme = README.read_text()
    for page in DOCS:
        assert f"(docs/{page.name}" in readme, f"README.md does not link {page.name}"


def test_the_readme_names_no_particular_machine() -> None:
    """Issue 20 found "here (CPU machine, 2 cores)" and "torch==2.13.0 here": facts about one
    machine belong in docs/ as measurements, said as such."""
    text = README.read_text()
    for phrase in ("here (", " here,", " here)", "this machine", "2 cores"):
        assert phrase not in text, phrase
