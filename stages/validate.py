"""Stage `validate`: params.yaml checked before any other stage runs.

DVC deletes a stage's outputs right before running its command, so a bad value found by the
stage itself (`dvc exp run -S train.learning_rate=abc`) would cost the previous run's model
and metrics. Every other stage depends on this stage's output, and this stage depends on every
param: a change to params.yaml runs it first, and a wrong type, an out-of-range value, an
unknown or a missing key stops the pipeline here with one `error:` line, before anything is
deleted. Its output (`reports/params.checked`, persisted) says the same whatever the params,
so that a valid change reruns only the stages whose own params changed.
"""

from __future__ import annotations

from pubmedqa_gpt2.core.config import load_params
from pubmedqa_gpt2.core.errors import run_stage
from pubmedqa_gpt2.core.paths import PARAMS_CHECKED, PARAMS_FILE

NOTE = (
    "params.yaml was valid when the `validate` stage last ran (python -m stages.validate).\n"
    "This text never changes: the stages that depend on it rerun only for their own params.\n"
)


def main() -> None:
    load_params(PARAMS_FILE)
    if not PARAMS_CHECKED.is_file() or PARAMS_CHECKED.read_text(encoding="utf-8") != NOTE:
        PARAMS_CHECKED.parent.mkdir(parents=True, exist_ok=True)
        PARAMS_CHECKED.write_text(NOTE, encoding="utf-8")
    print(f"validate: {PARAMS_FILE} is valid")


if __name__ == "__main__":
    run_stage(main)
