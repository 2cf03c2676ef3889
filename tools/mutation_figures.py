"""The mutation-testing figures per library module, from what `make mutate` left in `mutants/`.

    python -m tools.mutation_figures            # the markdown table of docs/TESTING.md
    python -m tools.mutation_figures --survivors  # the survivors not listed as equivalent

Reads each module's `.meta` file (mutmut 3.8.1 keeps one verdict, an exit code, per mutant) and
`tests/mutmut_equivalents.txt` (a surviving mutant listed there is counted as equivalent, not as
a survivor). "detected" is killed + timeout out of the decided mutants that are not equivalent;
a module with mutants not run yet is marked "partial"; mutants with no test reaching them count
against the module (they are neither killed nor equivalent).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"
EQUIVALENTS = ROOT / "tests" / "mutmut_equivalents.txt"

COLUMNS = ["killed", "timeout", "survived", "equivalent", "no tests", "not run"]


def equivalents(path: Path = EQUIVALENTS) -> set[str]:
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            names.add(line.split()[0])
    return names


def verdict(code: int | None) -> str:
    """mutmut's name for an exit code, "not run" for none yet."""
    return "not run" if code is None else status_by_exit_code[code]


def verdicts(mutants: Path = MUTANTS) -> dict[str, dict[str, str]]:
    """{module: {mutant name: verdict}} for every mutated module of the package."""
    out: dict[str, dict[str, str]] = {}
    for meta in sorted((mutants / "pubmedqa_gpt2").rglob("*.py.meta")):
        codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
        if not codes:
            continue
        module = ".".join(
            meta.relative_to(mutants / "pubmedqa_gpt2").with_suffix("").with_suffix("").parts
        )
        out[module] = {name: verdict(code) for name, code in codes.items()}
    return out


def count(by_name: dict[str, str], equivalent: set[str]) -> Counter:
    counts: Counter = Counter()
    for name, verdict in by_name.items():
        counts["equivalent" if verdict == "survived" and name in equivalent else verdict] += 1
    counts["mutants"] = len(by_name)
    return counts


def detected(counts: Counter) -> str:
    decided = counts["killed"] + counts["timeout"] + counts["survived"] + counts["no tests"]
    if not decided:
        return "-"
    share = 100 * (counts["killed"] + counts["timeout"]) / decided
    return f"{share:.1f}%" + (" (partial)" if counts["not run"] else "")


def table(mutants: Path = MUTANTS, equivalent_file: Path = EQUIVALENTS) -> str:
    equivalent = equivalents(equivalent_file)
    rows = ["| module | mutants | " + " | ".join(COLUMNS) + " | detected of non-equivalent |"]
    rows.append("|---" * (len(COLUMNS) + 3) + "|")
    total: Counter = Counter()
    for module, by_name in verdicts(mutants).items():
        counts = count(by_name, equivalent)
        total += counts
        cells = [module, str(counts["mutants"]), *(str(counts[c]) for c in COLUMNS)]
        rows.append("| " + " | ".join(cells) + f" | {detected(counts)} |")
    cells = ["all", str(total["mutants"]), *(str(total[c]) for c in COLUMNS)]
    rows.append("| " + " | ".join(cells) + f" | {detected(total)} |")
    return "\n".join(rows)


def survivors(mutants: Path = MUTANTS, equivalent_file: Path = EQUIVALENTS) -> list[str]:
    equivalent = equivalents(equivalent_file)
    return [
        name
        for by_name in verdicts(mutants).values()
        for name, verdict in by_name.items()
        if verdict == "survived" and name not in equivalent
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survivors", action="store_true", help="list the survivors instead")
    args = parser.parse_args(argv)
    if not MUTANTS.is_dir():
        raise SystemExit("error: no mutants/ folder: run `make mutate` first")
    print("\n".join(survivors()) if args.survivors else table())


if __name__ == "__main__":
    main()
