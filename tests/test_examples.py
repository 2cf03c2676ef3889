"""The prepared examples a phase trains on (`pubmedqa_gpt2/training/examples.py`): a bad row
or a missing file or column is a one-line error naming it."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.prompt import Encoded
from pubmedqa_gpt2.training.examples import read_split, to_features

from .training_helpers import LABEL_IDS


def test_read_split_names_the_bad_row(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(
        pa.table(
            {
                "pmid": ["1", "2"],
                "prompt_ids": [[1, 2], [3]],
                "completion_ids": [[3763, 13], [11, 645]],
                "shortened": [False, False],
            }
        ),
        path,
    )
    with pytest.raises(StageError, match=r"row 1 \(pmid 2\): completion_ids must start"):
        read_split(path, LABEL_IDS)


def test_read_split_missing_file_and_column(tmp_path):
    with pytest.raises(StageError, match="file not found; run the prepare stage"):
        read_split(tmp_path / "nope.parquet", LABEL_IDS)
    path = tmp_path / "dev.parquet"
    pq.write_table(pa.table({"prompt_ids": [[1]], "note": ["x"]}), path)
    with pytest.raises(StageError) as err:
        read_split(path, LABEL_IDS)
    assert str(err.value) == (
        f"{path}: missing column(s) pmid, completion_ids, shortened; has prompt_ids, note"
    )
    path.write_bytes(b"not parquet")
    with pytest.raises(StageError) as err:
        read_split(path, LABEL_IDS)
    assert str(err.value).startswith(f"{path}: not a readable parquet file: ")


def write_split(path, prompts, completions, shortened):
    """A prepared parquet file of these rows, pmids "1", "2", ..."""
    pq.write_table(
        pa.table(
            {
                "pmid": [str(i + 1) for i in range(len(prompts))],
                "prompt_ids": prompts,
                "completion_ids": completions,
                "shortened": shortened,
            }
        ),
        path,
    )


def test_read_split_gives_each_row_as_it_is_stored(tmp_path):
    """Two good rows come back as written, `shortened` included (True for the first)."""
    path = tmp_path / "train.parquet"
    write_split(path, [[1, 2], [7]], [[3763, 13], [3863]], [True, False])
    assert read_split(path, LABEL_IDS) == [
        Encoded([1, 2], [3763, 13], True),
        Encoded([7], [3863], False),
    ]


def test_read_split_names_an_empty_prompt_and_a_wrong_first_token(tmp_path):
    """An empty prompt, and a completion that starts with 11 (no decision token): each error
    names the file, the row and its pmid, and shows the first completion token only."""
    path = tmp_path / "train.parquet"
    write_split(path, [[1], []], [[645], [645]], [False, False])
    with pytest.raises(StageError, match=r"train\.parquet: row 1 \(pmid 2\): prompt_ids is empty$"):
        read_split(path, LABEL_IDS)
    write_split(path, [[1], [2]], [[645], [11, 645, 13]], [False, False])
    with pytest.raises(StageError) as error:
        read_split(path, LABEL_IDS)
    assert str(error.value).endswith(
        "row 1 (pmid 2): completion_ids must start with a decision token [3763, 645, 3863], "
        "got [11]"
    )


def test_features_learn_every_token_or_the_completion_only():
    """prompt [1, 2] + completion [3763, 13]: the input is the four ids; with loss_on all the
    labels are the same four, with completion the prompt's two are -100 (not learnt)."""
    example = Encoded([1, 2], [3763, 13], False)
    assert to_features(example, "all") == {
        "input_ids": [1, 2, 3763, 13],
        "labels": [1, 2, 3763, 13],
    }
    assert to_features(example, "completion") == {
        "input_ids": [1, 2, 3763, 13],
        "labels": [-100, -100, 3763, 13],
    }
