"""Stage `compare`: the fine-tuned model against the base model on the same test questions
(`pubmedqa_gpt2/evaluation/compare.py`) -> `metrics/compare.json`, `eval/compare.txt` (the
sentence and the method of its intervals), `eval/compare_intervals.json` (the forest plot's
rows: each figure of both models and their difference, with intervals)."""

from __future__ import annotations

from pubmedqa_gpt2.core.config import load_params
from pubmedqa_gpt2.core.errors import run_stage
from pubmedqa_gpt2.core.io import atomic_file, write_json
from pubmedqa_gpt2.core.paths import (
    COMPARE_METRICS,
    COMPARE_PLOT,
    COMPARE_SENTENCE,
    EVALUATED,
    samples_file,
)
from pubmedqa_gpt2.evaluation.compare import (
    compare,
    interval_rows,
    method,
    pair_samples,
    read_samples,
    sentence,
)


def main() -> None:
    settings = load_params().evaluate
    base, tuned = pair_samples(*(read_samples(samples_file(m)) for m in EVALUATED))
    n, seed = settings.bootstrap_samples, settings.bootstrap_seed
    result = compare(base, tuned, n, seed)
    text = sentence(result) + "\n" + method(n, seed, len(base))
    rows = interval_rows(base, tuned, result, n, seed)
    write_json(COMPARE_METRICS, result, sort_keys=False)  # reading order, for `dvc exp show`
    write_json(COMPARE_PLOT, rows, sort_keys=False)
    with atomic_file(COMPARE_SENTENCE) as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    run_stage(main)
