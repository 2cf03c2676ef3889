"""prepare: the official split, the prompt template, the token budget, data metrics."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pyarrow.parquet as pq
import pytest

from pubmedqa_gpt2.core.paths import SPLITS
from pubmedqa_gpt2.data.records import Record
from pubmedqa_gpt2.data.split import official_split, overlapping_pmids
from pubmedqa_gpt2.prompt import LABELS, encode_example

from .conftest import needs_pubmedqa, needs_tokenizer
from .official_split_script import official_folds
from .test_ingest import assert_clean_failure, run_stage

# Dev PMIDs of two folds, as PubMedQA's own split script writes them (pqal_fold0/dev_set.json
# and pqal_fold7/dev_set.json): printed by tests/official_split_script.py, whose test set is
# checked against the official test_ground_truth.json below.
FOLD_DEV_PMIDS = {
    0: """10354335 11247896 11729377 11882828 12607666 12626177 12836106 15530261 15879722
        16100194 16249670 17113061 17444776 17593459 17704864 18534072 18670651 18832500
        18843057 19058191 19155657 19925761 20156655 20338971 20363841 21865668 21873082
        21904069 22211919 22303473 22706226 23337545 23588461 23719685 23774337 23791827
        24160268 25070942 25156467 25228241 25251991 25336163 26063028 26485091 27491658
        27554179 27581329 8422202 9347843 9363529""".split(),
    7: """10759659 11296674 11566686 11776681 12690589 15141797 15483019 15588538 15800018
        16216859 16253970 16361634 16414216 16428354 16968183 17096624 17105833 17279467
        17295865 17559449 18269157 18575014 18948835 19712912 20304513 21618245 21739621
        21979183 22428608 23240452 23449952 24235894 24433626 24606627 24684514 24748473
        24946973 25034219 25168472 25218577 25592625 25691513 25735444 26133538 26175531
        26363639 27928673 8017535 8111516 8262881""".split(),
}


@pytest.fixture(scope="module")
def official(pubmedqa_dir):
    return json.loads((pubmedqa_dir / "ori_pqal.json").read_text())


@needs_pubmedqa
def test_test_split_is_the_official_test_set(official, pubmedqa_dir):
    truth = json.loads((pubmedqa_dir / "test_ground_truth.json").read_text())
    split = official_split([(p, r["final_decision"]) for p, r in official.items()], seed=0)
    assert len(split.test) == 500
    assert {p: official[p]["final_decision"] for p in split.test} == truth


@needs_pubmedqa
def test_the_restated_split_script_gives_the_official_test_set_and_the_pinned_folds(
    official, pubmedqa_dir
):
    truth = json.loads((pubmedqa_dir / "test_ground_truth.json").read_text())
    test, folds = official_folds(official)
    assert sorted(test) == sorted(truth)
    for fold, pmids in FOLD_DEV_PMIDS.items():
        assert sorted(folds[fold]) == sorted(pmids)


@needs_pubmedqa
@pytest.mark.parametrize("fold", sorted(FOLD_DEV_PMIDS))
def test_folds_are_the_official_script_folds(official, fold):
    split = official_split([(p, r["final_decision"]) for p, r in official.items()], seed=0)
    train, dev = split.train_dev(fold)
    assert sorted(dev) == sorted(FOLD_DEV_PMIDS[fold])
    _, folds = official_folds(official)
    others = [pmid for i, part in enumerate(folds) if i != fold for pmid in part]
    assert sorted(train) == sorted(others) and len(train) == 450


@needs_pubmedqa
def test_fold_zero_label_counts(official):
    split = official_split([(p, r["final_decision"]) for p, r in official.items()], seed=0)
    train, dev = split.train_dev(0)

    def count(pmids):
        labels = Counter(official[p]["final_decision"] for p in pmids)
        return [labels[label] for label in ("yes", "no", "maybe")]

    assert (len(train), len(dev)) == (450, 50)
    assert count(train) == [249, 152, 49]
    assert count(dev) == [27, 17, 6]


@needs_pubmedqa
def test_every_fold_partitions_the_cv_half(official):
    split = official_split([(p, r["final_decision"]) for p, r in official.items()], seed=0)
    cv = [p for fold in split.folds for p in fold]
    assert len(cv) == len(set(cv)) == 500
    assert not set(cv) & set(split.test)
    for fold in range(10):
        train, dev = split.train_dev(fold)
        assert sorted(train + dev) == sorted(cv) and len(dev) == 50


def test_too_few_records_to_split_is_an_error():
    with pytest.raises(ValueError, match="too few"):
        official_split([(str(i), LABELS[i % 3]) for i in range(12)])


def test_overlapping_pmids_are_reported():
    assert overlapping_pmids({"train": ["1", "2"], "dev": ["3"], "test": ["2"]}) == [
        ("2", "train", "test")
    ]
    assert overlapping_pmids({"train": ["1"], "dev": ["2"], "test": ["3"]}) == []


@needs_tokenizer
def test_prompt_has_question_and_context_but_never_the_long_answer(tokenizer):
    enc = encode_example(
        tokenizer, "Is X safe?", ["X was given."], ["METHODS"], "no", "X was not safe."
    )
    prompt = tokenizer.decode(enc.prompt_ids)
    completion = tokenizer.decode(enc.completion_ids)
    assert prompt == "Question: Is X safe?\nContext: METHODS: X was given.\nAnswer:"
    assert "Is X safe?" in prompt and "METHODS: X was given." in prompt
    assert "not safe" not in prompt
    assert completion == " no. X was not safe.<|endoftext|>"
    # The first completion token is the decision, scored at the last prompt position: " no" is
    # 645 in GPT-2's vocabulary (its vocab.json), not whatever label_token_ids says.
    assert enc.completion_ids[0] == 645
    assert enc.completion_ids[-1] == tokenizer.eos_token_id


@needs_tokenizer
def test_only_the_context_is_shortened_to_fit_the_budget(tokenizer):
    long_context = ["word " * 2000]
    enc = encode_example(tokenizer, "Is it?", long_context, [], "yes", "Because.", max_length=128)
    assert enc.shortened
    assert len(enc.prompt_ids) + len(enc.completion_ids) == 128
    prompt = tokenizer.decode(enc.prompt_ids)
    assert prompt.startswith("Question: Is it?\nContext: word") and prompt.endswith("\nAnswer:")
    assert tokenizer.decode(enc.completion_ids) == " yes. Because.<|endoftext|>"
    short = encode_example(tokenizer, "Is it?", ["word"], [], "yes", "Because.", max_length=128)
    assert not short.shortened


def write_raw(workdir, records: list[Record]) -> None:
    from pubmedqa_gpt2.data.records import write_jsonl

    (workdir / "data/raw").mkdir(parents=True)
    write_jsonl(workdir / "data/raw/pqa_labeled.jsonl", records)


def tokenizer_params(tokenizer_dir, **prepare) -> dict:
    return {"model": {"tokenizer": str(tokenizer_dir)}, "prepare": prepare}


def prepare_official(workdir, pubmedqa_dir, tokenizer_dir, child=False, **prepare) -> None:
    """Run the prepare stage on the 1,000 official records with these `prepare` params (in
    this process, or with `child` as DVC runs it)."""
    from pubmedqa_gpt2.data.records import read_official_json

    if not (workdir / "data/raw").exists():
        write_raw(workdir, read_official_json(pubmedqa_dir / "ori_pqal.json"))
    proc = run_stage(workdir, "prepare", tokenizer_params(tokenizer_dir, **prepare), child=child)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.child_process
@needs_pubmedqa
@needs_tokenizer
def test_prepare_stage_writes_splits_and_data_metrics(tmp_path, pubmedqa_dir, tokenizer_dir):
    prepare_official(tmp_path, pubmedqa_dir, tokenizer_dir, child=True, max_length=512)
    tables = {
        s: pq.read_table(tmp_path / f"data/prepared/{s}.parquet") for s in ("train", "dev", "test")
    }
    assert {s: t.num_rows for s, t in tables.items()} == {"train": 450, "dev": 50, "test": 500}
    metrics = json.loads((tmp_path / "metrics/data.json").read_text())
    assert metrics["dev"]["labels"] == {"yes": 27, "no": 17, "maybe": 6}
    for split, table in tables.items():
        lengths = [
            len(p) + len(c)
            for p, c in zip(
                table["prompt_ids"].to_pylist(), table["completion_ids"].to_pylist(), strict=True
            )
        ]
        assert max(lengths) <= 512
        assert metrics[split]["tokens"]["max"] == max(lengths)
        assert metrics[split]["shortened"] == sum(table["shortened"].to_pylist()) > 0


@pytest.mark.child_process
@needs_pubmedqa
@needs_tokenizer
def test_a_context_longer_than_the_model_is_shortened_without_a_warning(
    tmp_path, pubmedqa_dir, tokenizer_dir
):
    """A record whose abstract is some 6,000 tokens (GPT-2 reads 1,024): prepare shortens it on
    purpose, so transformers' "Token indices sequence length is longer than the specified
    maximum sequence length" warning would only alarm; the stage, run as DVC runs it, prints
    nothing on stderr."""
    import dataclasses

    from pubmedqa_gpt2.data.records import read_official_json

    records = read_official_json(pubmedqa_dir / "ori_pqal.json")
    long = dataclasses.replace(records[0], contexts=[" ".join(records[0].contexts)] * 30)
    write_raw(tmp_path, [long, *records[1:]])
    proc = run_stage(
        tmp_path, "prepare", tokenizer_params(tokenizer_dir, max_length=1024), child=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    shortened = json.loads((tmp_path / "metrics/data.json").read_text())
    assert sum(shortened[split]["shortened"] for split in ("train", "dev", "test")) == 1


@needs_tokenizer
def test_prepare_refuses_a_question_too_long_for_the_budget(tmp_path, tokenizer_dir):
    records = [
        Record(str(i), "Why " * (300 if i == 7 else 1) + "?", ["ctx"], [], [], "ans", label)
        for i, label in zip(range(1, 301), LABELS * 100, strict=False)
    ]
    write_raw(tmp_path, records)
    proc = run_stage(tmp_path, "prepare", tokenizer_params(tokenizer_dir, max_length=128))
    assert_clean_failure(proc, "record 7", "prepare.max_length=128")
    assert not (tmp_path / "data/prepared").exists()


@needs_pubmedqa
@needs_tokenizer
def test_max_train_samples_keeps_a_seeded_sample(tmp_path, pubmedqa_dir, tokenizer_dir):
    train_file = tmp_path / "data/prepared/train.parquet"
    prepare_official(tmp_path, pubmedqa_dir, tokenizer_dir, max_train_samples=40)
    first = pq.read_table(train_file, columns=["pmid", "decision"]).to_pydict()
    assert len(first["pmid"]) == 40 and set(first["decision"]) == set(LABELS)
    shutil.rmtree(tmp_path / "data/prepared")
    prepare_official(tmp_path, pubmedqa_dir, tokenizer_dir, max_train_samples=40)
    assert pq.read_table(train_file)["pmid"].to_pylist() == first["pmid"]


@needs_pubmedqa
@pytest.mark.parametrize("n", [40, 7, 1])
def test_max_train_samples_keeps_each_decision_s_share_of_the_training_split(official, n):
    """A seeded sample of the fold's training questions, stratified by decision: each label's
    count is its share of the 450 training questions times n, rounded (largest remainder),
    so the smoke run's 40 keep their "maybe" questions; other seeds draw other questions."""
    from pubmedqa_gpt2.data.prepare import split_records

    labeled = [
        Record(pmid, r["QUESTION"], r["CONTEXTS"], r["LABELS"], r.get("MESHES", []),
               r["LONG_ANSWER"], r["final_decision"])
        for pmid, r in official.items()
    ]  # fmt: skip
    full = Counter(r.final_decision for r in split_records(labeled, 0, 0, None)["train"])
    assert sum(full.values()) == 450
    samples = {}
    for seed in (0, 1, 2):
        train = split_records(labeled, seed, 0, n)["train"]
        assert split_records(labeled, seed, 0, n)["train"] == train  # seeded
        assert len(train) == n and len({r.pmid for r in train}) == n
        counts = Counter(r.final_decision for r in train)
        for label in LABELS:
            assert abs(counts[label] - n * full[label] / 450) < 1, (seed, label, counts)
        samples[seed] = {r.pmid for r in train}
    if n > 1:
        assert samples[0] != samples[1] and samples[1] != samples[2]
    # The sample is of the training questions only (seed 0: the official fold-0 split).
    _, folds = official_folds(official)
    training = {pmid for i, part in enumerate(folds) if i != 0 for pmid in part}
    assert samples[0] <= training


def test_a_stratified_sample_keeps_shares_and_order_and_follows_its_seed():
    from pubmedqa_gpt2.data.prepare import stratified_sample

    labels = ["yes"] * 30 + ["no"] * 15 + ["maybe"] * 5  # interleaved below
    records = [
        Record(str(i), "q?", ["c"], ["L"], [], "a.", label)
        for i, label in enumerate(labels[0::2] + labels[1::2])
    ]
    draws = {seed: stratified_sample(records, 10, seed) for seed in range(4)}
    for drawn in draws.values():
        # 10 x 30/50, 10 x 15/50, 10 x 5/50: 6 yes, 3 no, 1 maybe; in the records' order.
        assert Counter(r.final_decision for r in drawn) == {"yes": 6, "no": 3, "maybe": 1}
        assert drawn == sorted(drawn, key=records.index)
    assert len({tuple(r.pmid for r in drawn) for drawn in draws.values()}) == 4
    # 7 of 50: quotas 4.2, 2.1, 0.7; largest remainder gives the 7th to maybe.
    assert Counter(r.final_decision for r in stratified_sample(records, 7, 0)) == {
        "yes": 4,
        "no": 2,
        "maybe": 1,
    }
    # 3 of 50: quotas 1.8, 0.9, 0.3, floors 1, 0, 0; the two left go to the largest
    # remainders, no (0.9) and yes (0.8), not maybe (0.3).
    assert Counter(r.final_decision for r in stratified_sample(records, 3, 0)) == {
        "yes": 2,
        "no": 1,
    }


def test_the_data_metrics_of_a_split_by_hand(capsys):
    """Lengths 10, 20, 31: mean 20.333 -> 20.3; numpy's linear percentiles: p50 20.0, p95 at
    index 0.95 x 2 = 1.9, 20 + 0.9 x 11 = 29.9; max 31. PQA-A's entry adds its dropped count,
    said once on the console."""
    from pubmedqa_gpt2.core.paths import ARTIFICIAL
    from pubmedqa_gpt2.data.prepare import Dropped, SplitStats, data_summary

    stats = SplitStats(["1", "2", "3"], Counter({"yes": 2, "maybe": 1}), [10, 20, 31], 2)
    expected = {
        "examples": 3,
        "labels": {"yes": 2, "no": 0, "maybe": 1},
        "tokens": {"mean": 20.3, "p50": 20.0, "p95": pytest.approx(29.9), "max": 31},
        "shortened": 2,
    }
    assert stats.summary() == expected
    assert data_summary({"train": stats}, Dropped(0), 512) == {"max_length": 512, "train": expected}
    assert capsys.readouterr().out == ""
    summary = data_summary({"train": stats, ARTIFICIAL: stats}, Dropped(4), 256)
    assert summary == {
        "max_length": 256, "train": expected, ARTIFICIAL: expected | {"dropped_shared_pmid": 4},
    }  # fmt: skip
    assert capsys.readouterr().out == (
        f"prepare: {ARTIFICIAL}: 4 records dropped (PMID also in PQA-L)\n"
    )


@needs_pubmedqa
@needs_tokenizer
def test_prepare_with_another_fold_writes_that_fold_and_never_shows_the_answer(
    tmp_path, pubmedqa_dir, tokenizer_dir, tokenizer, official
):
    """prepare.fold reaches the stage, and no prepared prompt carries its long answer."""
    prepare_official(tmp_path, pubmedqa_dir, tokenizer_dir, fold=7)
    tables = {s: pq.read_table(tmp_path / f"data/prepared/{s}.parquet") for s in SPLITS}
    assert sorted(tables["dev"]["pmid"].to_pylist()) == sorted(FOLD_DEV_PMIDS[7])
    _, folds = official_folds(official)
    others = [pmid for i, part in enumerate(folds) if i != 7 for pmid in part]
    assert sorted(tables["train"]["pmid"].to_pylist()) == sorted(others)
    for split, table in tables.items():
        for row in table.to_pylist():
            record = official[row["pmid"]]
            prompt = tokenizer.decode(row["prompt_ids"])
            assert row["long_answer"] == record["LONG_ANSWER"]
            assert record["LONG_ANSWER"] not in prompt, (split, row["pmid"])
            assert record["QUESTION"] in prompt, (split, row["pmid"])
            assert tokenizer.decode(row["completion_ids"]) == (
                f" {record['final_decision']}. {record['LONG_ANSWER']}<|endoftext|>"
            )


def test_contexts_are_joined_with_their_labels_only_when_every_one_has_one():
    from pubmedqa_gpt2.prompt import format_context

    assert format_context(["a b.", "c."], ["AIMS", "RESULTS"]) == " AIMS: a b. RESULTS: c."
    assert format_context(["a b.", "c."], ["AIMS"]) == " a b. c."
    assert format_context(["a b.", "c."]) == " a b. c."


@needs_tokenizer
def test_the_budget_is_met_exactly_and_one_token_less_is_refused(tokenizer):
    from pubmedqa_gpt2.prompt import TooLongError, encode_examples

    def count(text: str) -> int:  # by the tokenizer itself, not the code under test
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    fixed = count("Question: Is it?\nContext:") + count("\nAnswer:") + count(" yes. Because.") + 1
    args = (["Is it?", "Is it?"], [["word"], ["word " * 50]], [[], []], ["yes", "yes"],
            ["Because.", "Because."])  # fmt: skip
    exact, cut = encode_examples(tokenizer, *args, max_length=fixed + count(" word"))
    assert len(exact.prompt_ids) + len(exact.completion_ids) == fixed + 1 and not exact.shortened
    assert len(cut.prompt_ids) + len(cut.completion_ids) == fixed + 1 and cut.shortened
    (no_context,) = encode_examples(tokenizer, *(a[1:] for a in args), max_length=fixed)
    assert no_context.shortened and tokenizer.decode(no_context.prompt_ids).endswith(
        "Context:\nAnswer:"
    )
    with pytest.raises(TooLongError) as error:
        encode_examples(tokenizer, *args, max_length=fixed - 1)
    assert str(error.value) == f"example 0: {fixed} tokens without context, budget {fixed - 1}"
    assert error.value.index == 0
    with pytest.raises(ValueError):  # a batch whose lists disagree
        encode_examples(tokenizer, args[0], args[1], [[]], *args[3:], max_length=100)


@needs_tokenizer
def test_the_default_budget_is_gpt2_s_1024_positions(tokenizer):
    enc = encode_example(tokenizer, "Is it?", ["word " * 2000], [], "yes", "Because.")
    assert enc.shortened and len(enc.prompt_ids) + len(enc.completion_ids) == 1024


def test_a_label_that_is_not_one_token_is_refused():
    from pubmedqa_gpt2.prompt import label_token_ids

    def splitting_tokenizer(text, add_special_tokens):
        return {"input_ids": [7] * len(text.split("a"))}  # " maybe" -> 2 pieces

    with pytest.raises(ValueError) as error:
        label_token_ids(splitting_tokenizer)
    assert str(error.value) == "tokenizer splits ' maybe' into 2 tokens; need one"


@needs_tokenizer
def test_label_token_ids_are_gpt2_s(tokenizer):
    from pubmedqa_gpt2.prompt import label_token_ids

    assert label_token_ids(tokenizer) == [3763, 645, 3863]  # " yes", " no", " maybe" in vocab.json


@pytest.fixture
def bos_tokenizer(tokenizer_dir):
    """GPT-2's tokenizer made to start every text with <|endoftext|> (50256), as the tokenizers
    of some causal LMs do (`model.name` takes any)."""
    from pubmedqa_gpt2.model.loading import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    tok.add_bos_token = True
    assert tok(" yes")["input_ids"] == [50256, 3763]  # it does add one
    return tok


def test_label_token_ids_hold_no_token_the_tokenizer_adds(bos_tokenizer):
    """Still GPT-2's single tokens (vocab.json), not 50256 before each (then two pieces)."""
    from pubmedqa_gpt2.prompt import label_token_ids

    assert label_token_ids(bos_tokenizer) == [3763, 645, 3863]


def test_encoded_examples_hold_no_token_the_tokenizer_adds(bos_tokenizer):
    """The same text as with GPT-2's own tokenizer: no 50256 before the question, the context,
    "\nAnswer:" or the decision; the completion's one end-of-text is its last token."""
    enc = encode_example(
        bos_tokenizer, "Is X safe?", ["X was given."], ["METHODS"], "no", "X was not safe."
    )
    prompt = "Question: Is X safe?\nContext: METHODS: X was given.\nAnswer:"
    assert bos_tokenizer.decode(enc.prompt_ids) == prompt
    assert bos_tokenizer.decode(enc.completion_ids) == " no. X was not safe.<|endoftext|>"
    assert 50256 not in enc.prompt_ids and enc.completion_ids.count(50256) == 1


def test_a_context_too_long_for_the_model_is_shortened_without_the_tokenizer_s_warning(
    tokenizer_dir, caplog, monkeypatch
):
    """2000 words (2000 tokens, " word" is one) are over GPT-2's 1024 positions: the tokenizer
    would warn "Token indices sequence length is longer than the specified maximum" (once per
    tokenizer, hence a fresh one); encode_example shortens the context on purpose and must not
    set it off. Encoding the same text directly afterwards does warn: the capture works."""
    import logging

    from pubmedqa_gpt2.model.loading import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    monkeypatch.setattr(logging.getLogger("transformers"), "propagate", True)
    caplog.set_level(logging.WARNING)
    warning = "Token indices sequence length is longer"
    enc = encode_example(tok, "Is it?", ["word " * 2000], [], "yes", "Because.")
    assert enc.shortened
    assert warning not in caplog.text
    tok("word " * 2000)
    assert warning in caplog.text


@needs_tokenizer
def test_splits_that_share_a_pmid_are_refused_naming_the_first(tmp_path, tokenizer, capsys):
    """train 1, 2, 3 and dev 3, 2: two shared PMIDs, 3 met first (dev lists it first); each
    split written says its count; the error names PMID 3 and both splits."""
    from pubmedqa_gpt2.core.errors import StageError
    from pubmedqa_gpt2.data.prepare import write_splits

    def record(pmid: str) -> Record:
        return Record(pmid, "Is it?", ["It is."], ["RESULTS"], [], "Yes.", "yes")

    splits = {"train": [record(p) for p in "123"], "dev": [record(p) for p in "32"]}
    with pytest.raises(StageError) as err:
        write_splits(tmp_path, splits, tokenizer, 256)
    assert str(err.value) == (
        "record 3: PMID is in both train and dev (2 shared PMIDs); refusing to write "
        "overlapping splits"
    )
    assert capsys.readouterr().out == "prepare: train: 3 examples\nprepare: dev: 2 examples\n"


@needs_pubmedqa
def test_the_split_follows_the_seed_as_the_official_script_does(official):
    """split_records with seed 1 gives the official script's seed-1 split (split.py, checked
    against the restated script above), not seed 0's."""
    from pubmedqa_gpt2.data.prepare import split_records

    labeled = [
        Record(pmid, r["QUESTION"], r["CONTEXTS"], r["LABELS"], [], r["LONG_ANSWER"],
               r["final_decision"])
        for pmid, r in official.items()
    ]  # fmt: skip
    pairs = [(r.pmid, r.final_decision) for r in labeled]
    for seed in (0, 1):
        split = official_split(pairs, seed)
        out = split_records(labeled, seed, 3, None)
        assert [r.pmid for r in out["test"]] == list(split.test)
        assert ([r.pmid for r in out["train"]], [r.pmid for r in out["dev"]]) == tuple(
            map(list, split.train_dev(3))
        )
    assert official_split(pairs, 1).test != official_split(pairs, 0).test


def test_too_few_records_to_split_is_a_stage_error_naming_the_raw_data():
    from pubmedqa_gpt2.core.errors import StageError
    from pubmedqa_gpt2.data.prepare import split_records

    labeled = [Record(str(i), "q?", ["c"], ["L"], [], "a.", LABELS[i % 3]) for i in range(12)]
    with pytest.raises(StageError, match=r"^data/raw: .*too few"):
        split_records(labeled, 0, 0, None)


@needs_tokenizer
def test_a_split_is_streamed_in_batches_and_counted_per_label(tmp_path, tokenizer, monkeypatch):
    """write_split encodes BATCH records at a time, each batch one row group of the parquet file
    (PQA-A's 211k records are never held whole): 5 records in batches of 2 are 3 row groups of
    2, 2, 1 rows; its counts are the records' own: labels yes 3, no 1, maybe 1, PMIDs in order."""
    from pubmedqa_gpt2.data import prepare

    def record(pmid: str, label: str) -> Record:
        return Record(pmid, "Is it?", ["It is."], ["RESULTS"], [], "Yes.", label)

    monkeypatch.setattr(prepare, "BATCH", 2)
    given = [record("1", "yes"), record("2", "no"), record("3", "yes"), record("4", "maybe"),
             record("5", "yes")]  # fmt: skip
    stats = prepare.write_split(tmp_path / "s.parquet", (r for r in given), tokenizer, 256)
    parquet = pq.ParquetFile(tmp_path / "s.parquet")
    sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
    assert sizes == [2, 2, 1]
    assert stats.labels == Counter(yes=3, no=1, maybe=1)
    assert stats.pmids == ["1", "2", "3", "4", "5"]
    # Lengths and the shortened count are the file's own, summed over every batch.
    rows = parquet.read().to_pylist()
    assert stats.lengths == [len(r["prompt_ids"]) + len(r["completion_ids"]) for r in rows]
    assert stats.shortened == sum(r["shortened"] for r in rows) == 0


@needs_tokenizer
def test_contexts_shortened_in_every_batch_are_all_counted(tmp_path, tokenizer, monkeypatch):
    """Three records whose context (400 words) cannot fit 256 tokens, in batches of 2: all
    three are shortened and counted (2 in the first batch + 1 in the second); an empty split
    is refused naming it."""
    from pubmedqa_gpt2.core.errors import StageError
    from pubmedqa_gpt2.data import prepare

    monkeypatch.setattr(prepare, "BATCH", 2)
    given = [Record(str(i), "Is it?", ["word " * 400], ["RESULTS"], [], "Yes.", "yes")
             for i in range(3)]  # fmt: skip
    stats = prepare.write_split(tmp_path / "s.parquet", given, tokenizer, 256)
    assert stats.shortened == 3
    assert all(length <= 256 for length in stats.lengths)
    with pytest.raises(StageError) as err:
        prepare.write_split(tmp_path / "empty.parquet", [], tokenizer, 256)
    assert str(err.value) == "empty: the split is empty"


def test_json_files_are_written_with_sorted_keys(tmp_path):
    """metrics and perf files list their keys in order (stable diffs, `dvc metrics diff`)."""
    from pubmedqa_gpt2.core.io import write_json

    write_json(tmp_path / "m.json", {"b": 1, "a": {"d": 2, "c": 3}})
    text = (tmp_path / "m.json").read_text()
    assert text.index('"a"') < text.index('"b"') and text.index('"c"') < text.index('"d"')
    # Two spaces a level, text as it is in UTF-8 (a sample's "β-blocker"), one final newline:
    # the layout `git diff` and `dvc metrics diff` readers see, written out by hand.
    write_json(tmp_path / "s.json", {"z": ["β-blocker", 0.5], "a": None}, sort_keys=False)
    assert (tmp_path / "s.json").read_bytes() == (
        '{\n  "z": [\n    "β-blocker",\n    0.5\n  ],\n  "a": null\n}\n'.encode()
    )
