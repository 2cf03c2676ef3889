"""Stage `prepare`: raw records -> the official split -> token ids under `prepare.max_length`
(`pubmedqa_gpt2/data/prepare.py`) -> `data/prepared/{train,dev,test,artificial}.parquet` and
`metrics/data.json` (counts, labels, token lengths, shortened examples per split)."""

from __future__ import annotations

from pubmedqa_gpt2.core.config import load_params
from pubmedqa_gpt2.core.errors import run_stage
from pubmedqa_gpt2.core.io import atomic_dir, write_json
from pubmedqa_gpt2.core.paths import DATA_METRICS, PREPARED_DIR, RAW_ARTIFICIAL, RAW_LABELED
from pubmedqa_gpt2.data.prepare import assemble_splits, data_summary, write_splits
from pubmedqa_gpt2.data.records import iter_jsonl
from pubmedqa_gpt2.model.loading import load_tokenizer


def main() -> None:
    params = load_params()
    settings = params.prepare
    labeled = list(iter_jsonl(RAW_LABELED))
    artificial = iter_jsonl(RAW_ARTIFICIAL) if RAW_ARTIFICIAL.is_file() else None
    splits, dropped = assemble_splits(
        labeled, artificial, settings.seed, settings.fold, settings.max_train_samples
    )
    tokenizer = load_tokenizer(params.model.tokenizer_source)
    with atomic_dir(PREPARED_DIR) as out:
        stats = write_splits(out, splits, tokenizer, settings.max_length)
    write_json(DATA_METRICS, data_summary(stats, dropped, settings.max_length))


if __name__ == "__main__":
    run_stage(main)
