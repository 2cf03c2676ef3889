"""A model's answers to prompts, the way the evaluate stage and the CLI both get them: the
decision by label likelihood (`pubmedqa_gpt2/model/scoring.py`), the long answer by greedy
generation after it (`pubmedqa_gpt2/model/generate.py`), and the reference answer's NLL."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pubmedqa_gpt2.core.config import EvaluateParams
from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.core.paths import TEST_FILE
from pubmedqa_gpt2.evaluation.testset import TestExample
from pubmedqa_gpt2.model.generate import generate_greedy
from pubmedqa_gpt2.model.scoring import continuation_nll, score_decisions
from pubmedqa_gpt2.prompt import LABELS, decision_text, label_token_ids


def decision_ids(tokenizer) -> dict[str, list[int]]:
    """The tokens of each label's `decision_text` (" yes." and so on): what follows the prompt."""
    return {
        label: tokenizer(decision_text(label), add_special_tokens=False)["input_ids"]
        for label in LABELS
    }


def decide(
    model, tokenizer, prompts: Sequence[Sequence[int]], batch_size: int, progress: str | None
) -> tuple[list[str], list[dict[str, float]]]:
    """Each prompt's predicted label and the probabilities of the three labels."""
    probabilities = score_decisions(
        model,
        prompts,
        label_token_ids(tokenizer),
        batch_size=batch_size,
        pad_id=tokenizer.pad_token_id,
        progress=progress,
    )
    labels = [LABELS[i] for i in probabilities.argmax(dim=1).tolist()]
    return labels, [dict(zip(LABELS, row, strict=True)) for row in probabilities.tolist()]


def generate_answers(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    decisions: Sequence[str],
    settings: EvaluateParams,
    progress: str | None,
    stats: dict | None = None,
) -> list[str]:
    """The greedy long answer after each prompt and its decision's text, as the template goes;
    `stats` receives how the decoding ran (`generate_greedy`)."""
    follow = decision_ids(tokenizer)
    tokens = generate_greedy(
        model,
        [list(p) + follow[d] for p, d in zip(prompts, decisions, strict=True)],
        max_new_tokens=settings.max_new_tokens,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        batch_size=settings.generation_batch_size,
        repetition_penalty=settings.repetition_penalty,
        no_repeat_ngram_size=settings.no_repeat_ngram_size,
        progress=progress,
        decode_step=settings.decode_step,
        stats=stats,
    )
    return [
        tokenizer.decode(t, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()
        for t in tokens
    ]


def reference_nll(
    model, tokenizer, examples: Sequence[TestExample], batch_size: int, progress: str | None
) -> tuple[list[float], list[int]]:
    """Per example, the summed NLL (nats) of the reference long answer and its end-of-text
    token given the prompt and the gold decision's text (the tokens that follow the decision
    in training), and how many tokens that is."""
    follow = decision_ids(tokenizer)
    prompts, answers = [], []
    for ex in examples:
        head = follow[ex.decision]
        if ex.completion_ids[: len(head)] != head:
            raise StageError(
                f"{TEST_FILE}: pmid {ex.pmid}: completion_ids do not start with the tokens of "
                f"{decision_text(ex.decision)!r}"
            )
        prompts.append(ex.prompt_ids + head)
        answers.append(ex.completion_ids[len(head) :])
    nll = continuation_nll(
        model,
        prompts,
        answers,
        batch_size=batch_size,
        pad_id=tokenizer.pad_token_id,
        progress=progress,
    )
    return nll.tolist(), [len(a) for a in answers]


def perplexity(nll: Sequence[float], tokens: Sequence[int]) -> float:
    """exp(mean NLL per token) over all the tokens of all the examples."""
    return math.exp(sum(nll) / sum(tokens))
