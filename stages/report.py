"""Stage `report`: the results table from the metrics files (`pubmedqa_gpt2/evaluation/report.py`).

python -m stages.report             # writes reports/results.md
python -m stages.report --readme    # also puts the table into README.md between its markers

The last stage, so it closes `dvc repro` with the hint naming every file git keeps of the run
(.dvc/config's core.autostage stages dvc.lock and silences DVC's own hint, which named it alone).
"""

from __future__ import annotations

import sys

from pubmedqa_gpt2.core.config import load_params
from pubmedqa_gpt2.core.errors import run_stage
from pubmedqa_gpt2.core.io import atomic_file
from pubmedqa_gpt2.core.paths import README, RESULTS_FILE
from pubmedqa_gpt2.evaluation.report import commit_hint, replace_block, results_table


def main() -> None:
    table = results_table(load_params())
    with atomic_file(RESULTS_FILE) as f:
        f.write(table)
    if "--readme" in sys.argv[1:]:
        updated = replace_block(README.read_text(encoding="utf-8"), table)
        with atomic_file(README) as f:
            f.write(updated)
    print(table)
    print(commit_hint())


if __name__ == "__main__":
    run_stage(main)
