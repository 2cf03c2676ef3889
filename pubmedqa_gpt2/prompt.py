"""The prompt template: the one place that turns a PubMedQA record into model tokens.

Reasoning-required setting: the input is the question and the abstract's contexts, never the
long answer. The completion is the decision, then the long answer, then end-of-text:

    Question: <question>
    Context: BACKGROUND: <text> METHODS: <text> ...
    Answer: yes. <long answer><|endoftext|>

" yes", " no" and " maybe" are single GPT-2 tokens, so the decision is read from the
logits at the last prompt position. train, evaluate and the CLI all encode through
`encode_example`/`encode_examples`, so they see exactly the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

LABELS = ("yes", "no", "maybe")

_HEAD = "Question: {question}\nContext:"
_TAIL = "\nAnswer:"


def format_context(contexts: Sequence[str], labels: Sequence[str] = ()) -> str:
    """The abstract's sections as one string, each preceded by its label when known."""
    if len(labels) == len(contexts):
        return "".join(f" {label}: {text}" for label, text in zip(labels, contexts, strict=True))
    return "".join(f" {text}" for text in contexts)


def decision_text(decision: str) -> str:
    """The completion's first part: the decision token and a full stop."""
    return f" {decision}."


def long_answer_text(long_answer: str) -> str:
    return f" {long_answer}"


@dataclass(frozen=True)
class Encoded:
    """One example as token ids: the model reads `prompt_ids`, learns `completion_ids`."""

    prompt_ids: list[int]
    completion_ids: list[int]
    shortened: bool
    """True when the context was cut to fit the token budget."""


class TooLongError(ValueError):
    """Question + completion alone exceed the budget: nothing can be shortened to fit."""

    def __init__(self, index: int, tokens: int, budget: int):
        super().__init__(f"example {index}: {tokens} tokens without context, budget {budget}")
        self.index = index


def label_token_ids(tokenizer) -> list[int]:
    """Token ids of " yes", " no", " maybe", in LABELS order; each must be a single token."""
    ids = []
    for label in LABELS:
        pieces = tokenizer(f" {label}", add_special_tokens=False)["input_ids"]
        if len(pieces) != 1:
            raise ValueError(f"tokenizer splits ' {label}' into {len(pieces)} tokens; need one")
        ids.append(pieces[0])
    return ids


def encode_examples(
    tokenizer,
    questions: Sequence[str],
    contexts: Sequence[Sequence[str]],
    labels: Sequence[Sequence[str]],
    decisions: Sequence[str | None],
    long_answers: Sequence[str | None],
    max_length: int,
) -> list[Encoded]:
    """Encode a batch of examples, shortening only the context so each fits `max_length`.

    A decision of None (an unanswered question, as in the CLI) gives an empty completion and
    reserves no room for one. Raises TooLongError (with the batch index) when the question
    and the completion alone exceed the budget.
    """
    n = len(questions)
    # verbose=False: no "Token indices sequence length is longer than the specified maximum"
    # warning for a long context, which is shortened below on purpose.
    encode = lambda texts: tokenizer(list(texts), add_special_tokens=False, verbose=False)[  # noqa: E731
        "input_ids"
    ]
    heads = encode(_HEAD.format(question=q) for q in questions)
    bodies = encode(format_context(c, lab) for c, lab in zip(contexts, labels, strict=True))
    tail = encode([_TAIL])[0]
    answered = [i for i in range(n) if decisions[i] is not None]
    completions: list[list[int]] = [[] for _ in range(n)]
    if answered:
        texts = [decision_text(decisions[i]) + long_answer_text(long_answers[i]) for i in answered]
        for i, ids in zip(answered, encode(texts), strict=True):
            completions[i] = ids + [tokenizer.eos_token_id]
    out = []
    for i in range(n):
        room = max_length - len(heads[i]) - len(tail) - len(completions[i])
        if room < 0:
            raise TooLongError(i, max_length - room, max_length)
        body = bodies[i][:room]
        out.append(Encoded(heads[i] + body + tail, completions[i], len(body) < len(bodies[i])))
    return out


def encode_example(
    tokenizer,
    question: str,
    contexts: Sequence[str],
    labels: Sequence[str] = (),
    decision: str | None = None,
    long_answer: str | None = None,
    max_length: int = 1024,
) -> Encoded:
    """Encode one example (the CLI's path); see `encode_examples`."""
    return encode_examples(
        tokenizer, [question], [contexts], [labels], [decision], [long_answer], max_length
    )[0]
