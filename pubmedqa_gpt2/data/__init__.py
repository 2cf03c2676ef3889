"""PubMedQA from its sources to prepared token ids: download, records, the official split,
the prepared splits' format."""
