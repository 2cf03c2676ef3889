"""The prepared examples a phase trains on, checked, and their features for the Trainer."""

from __future__ import annotations

from pathlib import Path

from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.data.token_files import read_prepared
from pubmedqa_gpt2.prompt import Encoded

COLUMNS = ("pmid", "prompt_ids", "completion_ids", "shortened")
IGNORE_INDEX = -100  # label of a position that does not count in the loss


def read_split(path: Path, label_ids: list[int]) -> list[Encoded]:
    """The examples of a prepared parquet file, checked row by row.

    Every completion must start with one of the decision tokens (" yes", " no", " maybe"),
    since dev accuracy reads the gold decision from it.
    """
    table = read_prepared(path, COLUMNS)
    examples = []
    rows = zip(*(table.column(c).to_pylist() for c in COLUMNS), strict=True)
    for i, (pmid, prompt, completion, shortened) in enumerate(rows):
        where = f"{path}: row {i} (pmid {pmid})"
        if not prompt:
            raise StageError(f"{where}: prompt_ids is empty")
        if not completion or completion[0] not in label_ids:
            raise StageError(
                f"{where}: completion_ids must start with a decision token {label_ids}, "
                f"got {completion[:1]}"
            )
        examples.append(Encoded(prompt, completion, shortened))
    return examples


def to_features(example: Encoded, loss_on: str) -> dict[str, list[int]]:
    """input_ids and labels of one example; with loss_on=completion the prompt is not learnt."""
    input_ids = example.prompt_ids + example.completion_ids
    if loss_on == "all":
        return {"input_ids": input_ids, "labels": list(input_ids)}
    masked = [IGNORE_INDEX] * len(example.prompt_ids)
    return {"input_ids": input_ids, "labels": masked + example.completion_ids}
