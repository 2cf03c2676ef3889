"""What every stage reads: the params and their validation (`config.py`), the one-line errors a
stage exits with (`errors.py`), the files it reads and writes (`paths.py`) and how it writes
them atomically (`io.py`)."""
