"""The prepared examples a phase trains on (`pubmedqa_gpt2/training/examples.py`): a bad row
or a missing file or column is a one-line error naming it."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.training.examples import read_split

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
    pq.write_table(pa.table({"prompt_ids": [[1]]}), path)
    with pytest.raises(StageError, match="missing column.*completion_ids"):
        read_split(path, LABEL_IDS)
