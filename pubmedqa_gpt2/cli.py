"""`pubmedqa-gpt2`: ask a saved model a PubMedQA question; summarize a sweep of experiments.

    pubmedqa-gpt2 ask --question "Do statins reduce ...?" --context "BACKGROUND: ..."
    pubmedqa-gpt2 ask --question "Do statins reduce ...?" --no-context   # no abstract, knowingly
    pubmedqa-gpt2 ask --pmid 12377809          # a question of data/prepared/test.parquet
    pubmedqa-gpt2 ask --model DIR ... --json   # one JSON object, for machines
    pubmedqa-gpt2 summary --over train.seed    # mean, sd, min, max of each group of runs
    pubmedqa-gpt2 summary --over train.seed --plot sweep.html   # and as a plot
    pubmedqa-gpt2 slurm submit -S train.seed=0,1,2   # a sweep as one SLURM job array
    pubmedqa-gpt2 slurm status                 # its experiments: pending, running, done, failed

`ask` prints the decision with the probabilities of yes / no / maybe, then the greedy long
answer; `--json` prints one object with the same keys whatever the input (`ANSWER_KEYS`, null
where the input has none, e.g. no gold decision for --question). It goes through the code the
evaluate stage uses (template, scoring, generation), so a question gets the answer it gets
there; its decoding settings are params.yaml's `evaluate` section (`--params`), each one
overridable by its flag. `summary` is described in `pubmedqa_gpt2/summary.py`, `slurm` in
`pubmedqa_gpt2/slurm/` and docs/CLUSTER.md.
Bad input is a one-line `error: ...` and exit 1, and so is usage that would silently answer
something else than asked: --question without --context (the model reads an abstract; say
--no-context to ask without one), or --context beside --pmid (whose context is the test set's).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pubmedqa_gpt2.core.config import EvaluateParams, load_section
from pubmedqa_gpt2.core.errors import StageError, run_stage
from pubmedqa_gpt2.core.paths import FINETUNED, PARAMS_FILE, TEST_FILE
from pubmedqa_gpt2.slurm import commands as slurm_commands

DECODING = ("max_new_tokens", "repetition_penalty", "no_repeat_ngram_size")
SAVED_FILES = ("config.json", "tokenizer_config.json")  # what save_pretrained writes
ANSWER_KEYS = (
    "pmid", "question", "gold_decision", "reference_answer", "context_shortened",
    "decision", "probabilities", "long_answer",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pubmedqa-gpt2", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ask = commands.add_parser("ask", help="answer one question with a saved model")
    ask.add_argument("--model", type=Path, default=FINETUNED, help="a from_pretrained dir")
    ask.add_argument("--question", help="the question (with --context or --no-context)")
    ask.add_argument("--context", help="the abstract the question is about")
    ask.add_argument("--no-context", action="store_true", help="ask --question without an abstract")
    ask.add_argument("--pmid", help="take question and prompt from the prepared test set")
    ask.add_argument("--data", type=Path, default=TEST_FILE, help="where --pmid is looked up")
    ask.add_argument(
        "--params", type=Path, default=PARAMS_FILE, help="decoding settings: its `evaluate`"
    )
    ask.add_argument("--max-new-tokens", type=int, help="default: evaluate.max_new_tokens")
    ask.add_argument("--repetition-penalty", type=float, help="default: its evaluate value")
    ask.add_argument("--no-repeat-ngram-size", type=int, help="default: its evaluate value")
    ask.add_argument("--json", action="store_true", help="print one JSON object")
    summary = commands.add_parser("summary", help="statistics of groups of DVC experiments")
    summary.add_argument(
        "--over",
        nargs="+",
        required=True,
        metavar="PARAM",
        help="the swept params, e.g. train.seed",
    )
    summary.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    summary.add_argument(
        "--input", type=Path, help="a saved `dvc exp show --json` instead of running it"
    )
    summary.add_argument(
        "--plot",
        type=Path,
        metavar="PAGE",
        help="also write the sweep as a plot to this HTML page (each run a point, each "
        "group's mean with its 95%% interval)",
    )
    slurm_commands.add_parser(commands)
    return parser


def settings_from(args: argparse.Namespace) -> EvaluateParams:
    """The decoding settings: `--params`' evaluate section with the flags given on top,
    validated as params.yaml's `evaluate` section is."""
    from pydantic import ValidationError

    settings = load_section("evaluate", args.params)
    given = {key: getattr(args, key) for key in DECODING if getattr(args, key) is not None}
    try:
        return EvaluateParams.model_validate(settings.model_dump() | given)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise StageError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None


def find_test_example(path: Path, pmid: str):
    """The prepared test example with this PMID."""
    from pubmedqa_gpt2.evaluation.testset import read_test

    for example in read_test(path):
        if example.pmid == pmid.strip():
            return example
    raise StageError(f"--pmid {pmid}: not in {path}")


def check_question(args: argparse.Namespace) -> None:
    """Refuse a combination of --question, --context, --no-context and --pmid that would
    answer something other than what was meant."""
    if args.pmid is not None and args.question is not None:
        raise StageError("give either --question (with --context) or --pmid, not both")
    if args.pmid is None and args.question is None:
        raise StageError("give --question (with --context) or --pmid")
    if args.pmid is not None:
        if args.context is not None or args.no_context:
            given = "--context" if args.context is not None else "--no-context"
            raise StageError(f"--pmid takes its context from the test set: drop {given}")
        return
    if not args.question.strip():
        raise StageError("--question is empty")
    if args.context is not None and args.no_context:
        raise StageError("give --context or --no-context, not both")
    if args.context is None and not args.no_context:
        raise StageError(
            "--question needs --context (the abstract it is about), or --no-context to ask "
            "without one"
        )
    if args.context is not None and not args.context.strip():
        raise StageError("--context is empty (--no-context asks without one)")


def ask(args: argparse.Namespace) -> dict[str, Any]:
    """Answer the question `args` describe; the answer as a JSON-ready dict of ANSWER_KEYS."""
    check_question(args)
    if not args.model.is_dir():
        raise StageError(f"--model {args.model}: no such directory")
    for name in SAVED_FILES:
        if not (args.model / name).is_file():
            raise StageError(f"--model {args.model}: no {name}; not a saved model with tokenizer")
    settings = settings_from(args)

    from transformers.utils import logging

    from pubmedqa_gpt2.evaluation.answers import decide, decision_ids, generate_answers
    from pubmedqa_gpt2.model.loading import inference_dtype, load_model, load_tokenizer, pick_device
    from pubmedqa_gpt2.prompt import TooLongError, encode_example

    answer: dict[str, Any] = dict.fromkeys(ANSWER_KEYS)
    prompt = None
    if args.pmid is not None:
        example = find_test_example(args.data, args.pmid)
        prompt = example.prompt_ids
        answer.update(
            pmid=example.pmid,
            question=example.question,
            gold_decision=example.decision,
            reference_answer=example.long_answer,
            context_shortened=example.shortened,
        )
    logging.disable_progress_bar()  # "Loading weights" would go to the user's terminal
    device = pick_device()
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, dtype=inference_dtype(device), what=f"--model {args.model}")
    model.to(device)
    limit = model.config.n_positions
    decision_room = max(len(ids) for ids in decision_ids(tokenizer).values())
    if prompt is None:
        # Leave room for the decision's tokens and the whole answer in the model's positions.
        try:
            encoded = encode_example(
                tokenizer,
                args.question.strip(),
                [] if args.no_context else [args.context.strip()],
                max_length=limit - decision_room - settings.max_new_tokens,
            )
        except TooLongError:
            raise StageError(
                f"--question: too long for the model's {limit} positions "
                f"with --max-new-tokens {settings.max_new_tokens}"
            ) from None
        prompt = encoded.prompt_ids
        answer.update(question=args.question.strip(), context_shortened=encoded.shortened)
    elif len(prompt) + decision_room >= limit:
        raise StageError(f"--pmid {args.pmid}: the prompt leaves no room in {limit} positions")

    labels, probabilities = decide(model, tokenizer, [prompt], batch_size=1, progress=None)
    (long_answer,) = generate_answers(model, tokenizer, [prompt], labels, settings, progress=None)
    answer.update(decision=labels[0], probabilities=probabilities[0], long_answer=long_answer)
    return answer


def summarize_experiments(args: argparse.Namespace) -> str:
    """`summary`: the experiments of this repository (or of --input) grouped and described."""
    from pubmedqa_gpt2 import summary

    exp_show = None
    if args.input is not None:
        try:
            exp_show = json.loads(args.input.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise StageError(f"--input {args.input}: not a readable JSON file ({exc})") from None
    experiments, groups = summary.collect(args.over, exp_show)
    if args.plot is not None:
        from pubmedqa_gpt2 import summary_plot

        rows = summary_plot.plot_rows(groups, experiments)
        summary_plot.write_page(args.plot, summary_plot.spec(rows, args.over))
        print(f"wrote {args.plot}: open it in a browser", file=sys.stderr)
    return json.dumps(groups, indent=2) if args.json else summary.markdown(groups, args.over)


def answer_text(answer: dict[str, Any]) -> str:
    """The answer for a person to read."""
    probabilities = ", ".join(f"{label} {p:.3f}" for label, p in answer["probabilities"].items())
    lines = [f"Question: {answer['question']}"]
    if answer.get("context_shortened"):
        lines.append("(the context was shortened to fit the model)")
    lines += [
        f"Decision: {answer['decision']}  ({probabilities})",
        f"Answer: {answer['long_answer']}",
    ]
    if answer["gold_decision"] is not None:
        lines += [
            f"Gold decision: {answer['gold_decision']}",
            f"Reference answer: {answer['reference_answer']}",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """The console script `pubmedqa-gpt2`."""
    args = build_parser().parse_args(argv)

    def run() -> None:
        if args.command == "summary":
            print(summarize_experiments(args))
            return
        if args.command == "slurm":
            print(slurm_commands.run(args))
            return
        answer = ask(args)
        print(json.dumps(answer, ensure_ascii=False) if args.json else answer_text(answer))

    run_stage(run)


if __name__ == "__main__":
    main()
