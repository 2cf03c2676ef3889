"""The `pubmedqa-gpt2 ask` console script, on a tiny random GPT-2 saved as a model directory."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pubmedqa_gpt2 import cli
from pubmedqa_gpt2.prompt import LABELS
from stages import evaluate as stage

from .conftest import EVAL_MODEL_DIR, EVAL_TEST_FILE, ROOT


def ask(capsys, *args: str) -> str:
    """Run `pubmedqa-gpt2 ask ARGS` in-process; its stdout."""
    cli.main(["ask", *args])
    return capsys.readouterr().out


def failure(capsys, *args: str) -> str:
    """Run a failing `ask`; check the exit status and return its single stderr line."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["ask", *args])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    return err


def test_question_and_context_are_answered(eval_workdir, capsys) -> None:
    out = ask(
        capsys,
        "--model", str(EVAL_MODEL_DIR),
        "--question", "Do statins reduce mortality?",
        "--context", "BACKGROUND: We followed 200 patients. RESULTS: Fewer died.",
        "--max-new-tokens", "5",
    )  # fmt: skip
    lines = out.splitlines()
    assert lines[0] == "Question: Do statins reduce mortality?"
    decision = lines[1].split()[1]
    assert decision in LABELS
    assert all(f"{label} 0." in lines[1] for label in LABELS)
    assert lines[2].startswith("Answer:")


def test_json_answer_is_the_evaluate_stage_answer(eval_workdir, capsys, monkeypatch) -> None:
    # Same model, same prompt, same decoding settings (params.yaml: max_new_tokens 8):
    # the CLI answers a test question as the evaluate stage did.
    monkeypatch.setattr(sys, "argv", ["evaluate", "finetuned"])
    stage.main()
    capsys.readouterr()
    sample = json.loads(Path("eval/finetuned/samples.jsonl").read_text().splitlines()[0])
    out = ask(capsys, "--pmid", sample["pmid"], "--json", "--max-new-tokens", "8")
    answer = json.loads(out)
    assert answer["pmid"] == sample["pmid"]
    assert answer["question"] == sample["question"]
    assert answer["gold_decision"] == sample["gold_decision"]
    assert answer["reference_answer"] == sample["reference_answer"]
    assert answer["decision"] == sample["predicted_decision"]
    assert answer["probabilities"] == pytest.approx(sample["probabilities"], abs=1e-5)
    assert answer["long_answer"] == sample["generated_answer"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--model", "no/such/dir", "--question", "Why?", "--no-context"],
            "--model no/such/dir: no such directory",
        ),
        (["--question", "   ", "--context", "Some text."], "--question is empty"),
        (["--pmid", "1"], "--pmid 1: not in data/prepared/test.parquet"),
        (["--model", ".", "--question", "Why?", "--no-context"], r"--model \.: no config\.json"),
        (
            ["--question", "Why?", "--no-context", "--max-new-tokens", "0"],
            "--max-new-tokens: .*greater than",
        ),
        (
            ["--question", "Why?", "--no-context", "--max-new-tokens", "1023"],
            "too long for the model's 1024",
        ),
    ],
)
def test_bad_input_is_a_one_line_error(eval_workdir, capsys, args, message) -> None:
    assert re.search(message, failure(capsys, *args))


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--context", "Text."], "give --question (with --context) or --pmid"),
        (["--question", "Why?", "--pmid", "2000"],
         "give either --question (with --context) or --pmid, not both"),
        # A question without its abstract is refused unless asked for by name.
        (["--question", "Why?"],
         "--question needs --context (the abstract it is about), or --no-context to ask "
         "without one"),
        (["--question", " ", "--no-context"], "--question is empty"),
        (["--question", "Why?", "--context", "Text.", "--no-context"],
         "give --context or --no-context, not both"),
        (["--question", "Why?", "--context", " "],
         "--context is empty (--no-context asks without one)"),
        (["--pmid", "2000", "--no-context"],
         "--pmid takes its context from the test set: drop --no-context"),
        (["--pmid", "2000", "--context", "Text."],
         "--pmid takes its context from the test set: drop --context"),
    ],
)  # fmt: skip
def test_each_refused_combination_of_flags_is_told_in_its_own_words(
    eval_workdir, capsys, args, line
) -> None:
    """The whole line, as docs/CLI.md's user reads it: what to give instead."""
    assert failure(capsys, *args) == f"error: {line}\n"


def test_an_unloadable_model_is_named_by_its_flag(eval_workdir, capsys) -> None:
    """A weights file cut short (a copy interrupted) is one line naming --model, as a missing
    one is; not safetensors' traceback."""
    import shutil

    broken = Path("broken-model")
    shutil.copytree(EVAL_MODEL_DIR, broken)
    weights = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    err = failure(capsys, "--model", str(broken), "--question", "Why?", "--no-context")
    assert err.startswith("error: --model broken-model: cannot load a model from 'broken-model': ")
    (broken / "model.safetensors").unlink()
    err = failure(capsys, "--model", str(broken), "--question", "Why?", "--no-context")
    assert err == (
        "error: --model broken-model: cannot load a model from 'broken-model': Error no file "
        "named model.safetensors found in directory broken-model.\n"
    )


def after_loading(monkeypatch, change: Callable) -> None:
    """`ask`'s model passed to `change` as soon as it is loaded."""
    from pubmedqa_gpt2.model import loading

    real = loading.load_model

    def load(*args, **kwargs):
        model = real(*args, **kwargs)
        change(model)
        return model

    monkeypatch.setattr(loading, "load_model", load)


def generation_settings_seen(monkeypatch) -> list:
    """The decoding settings each `generate_answers` call of `ask` runs with, in order."""
    from pubmedqa_gpt2.evaluation import answers

    seen = []
    real = answers.generate_answers

    def spy(model, tokenizer, prompts, labels, settings, **kwargs):
        seen.append(settings)
        return real(model, tokenizer, prompts, labels, settings, **kwargs)

    monkeypatch.setattr(answers, "generate_answers", spy)
    return seen


def test_the_model_runs_on_the_device_picked_in_its_inference_dtype(
    eval_workdir, capsys, monkeypatch
) -> None:
    """`ask` loads the model in `inference_dtype` of the device `pick_device` gives (bf16 here
    stands in for a GPU's) and moves it there before scoring."""
    import torch

    from pubmedqa_gpt2.evaluation import answers
    from pubmedqa_gpt2.model import loading

    picked = torch.device("cpu", 0)  # told from a bare "cpu" (and from None) by its index
    monkeypatch.setattr(loading, "pick_device", lambda: picked)
    monkeypatch.setattr(loading, "inference_dtype", lambda device: torch.bfloat16)
    moved, scored = [], []
    real_decide = answers.decide

    def record_moves(model) -> None:
        real_to = model.to
        model.to = lambda device: (moved.append(device), real_to(device))[1]

    def decide(model, *args, **kwargs):
        scored.append({p.dtype for p in model.parameters()})
        return real_decide(model, *args, **kwargs)

    after_loading(monkeypatch, record_moves)
    monkeypatch.setattr(answers, "decide", decide)
    ask(capsys, "--question", "Why?", "--no-context", "--max-new-tokens", "2")
    assert moved == [picked]
    assert scored == [{torch.bfloat16}]


def prompt_room(tokenizer) -> int:
    """The positions the longest decision (" maybe." and the like) takes after a prompt."""
    return max(
        len(tokenizer(f" {label}.", add_special_tokens=False)["input_ids"]) for label in LABELS
    )


def with_positions(monkeypatch, n_positions: int) -> None:
    """`ask`'s model, told it has `n_positions` positions (its weights keep 1,024)."""
    after_loading(monkeypatch, lambda model: setattr(model.config, "n_positions", n_positions))


def test_a_question_fits_when_prompt_decision_and_answer_fill_the_positions_exactly(
    eval_workdir, capsys, monkeypatch, tokenizer
) -> None:
    from pubmedqa_gpt2.prompt import encode_example

    question, new = "Do statins reduce mortality?", 4
    length = len(encode_example(tokenizer, question, [], max_length=1024).prompt_ids)
    room = prompt_room(tokenizer)
    with_positions(monkeypatch, length + room + new)
    out = ask(capsys, "--question", question, "--no-context", "--max-new-tokens", str(new))
    assert out.startswith(f"Question: {question}\n")
    with_positions(monkeypatch, length + room + new - 1)
    assert failure(capsys, "--question", question, "--no-context", "--max-new-tokens",
                   str(new)) == (
        f"error: --question: too long for the model's {length + room + new - 1} positions "
        f"with --max-new-tokens {new}\n"
    )  # fmt: skip


def test_a_test_question_needs_room_for_its_decision_and_one_more_token(
    eval_workdir, capsys, monkeypatch, tokenizer
) -> None:
    import pyarrow.parquet as pq

    row = pq.read_table(EVAL_TEST_FILE).to_pylist()[0]
    length, room = len(row["prompt_ids"]), prompt_room(tokenizer)
    with_positions(monkeypatch, length + room + 1)
    assert json.loads(ask(capsys, "--pmid", row["pmid"], "--json"))["pmid"] == row["pmid"]
    with_positions(monkeypatch, length + room)
    assert failure(capsys, "--pmid", row["pmid"]) == (
        f"error: --pmid {row['pmid']}: the prompt leaves no room in {length + room} positions\n"
    )


def test_the_json_answer_keeps_non_ascii_text_as_it_is(eval_workdir, capsys) -> None:
    out = ask(capsys, "--question", "Does β-blockade lower mortality?", "--no-context", "--json")
    assert '"question": "Does β-blockade lower mortality?"' in out


def test_the_decoding_settings_come_from_the_params_file_given(eval_workdir, capsys, monkeypatch):
    import yaml

    seen = generation_settings_seen(monkeypatch)
    other = yaml.safe_load(Path("params.yaml").read_text())
    other["evaluate"] |= {"max_new_tokens": 3, "repetition_penalty": 1.5}
    Path("other.yaml").write_text(yaml.safe_dump(other))
    ask(capsys, "--question", "Why?", "--no-context", "--params", "other.yaml")
    assert (seen[0].max_new_tokens, seen[0].repetition_penalty) == (3, 1.5)


def test_no_context_asks_the_question_alone(eval_workdir, capsys) -> None:
    out = ask(capsys, "--question", "Do statins reduce mortality?", "--no-context")
    assert out.splitlines()[0] == "Question: Do statins reduce mortality?"
    assert out.splitlines()[1].startswith("Decision: ")


# Every key of `ask --json`, whatever the input (null where the input has none).
ANSWER_KEYS = {
    "pmid", "question", "gold_decision", "reference_answer", "context_shortened",
    "decision", "probabilities", "long_answer",
}  # fmt: skip


def test_json_has_the_same_keys_whatever_the_input(eval_workdir, capsys) -> None:
    import pyarrow.parquet as pq

    # The asked test question's context was shortened by prepare: --pmid reports it.
    table = pq.read_table(EVAL_TEST_FILE)
    rows = table.to_pylist()
    rows[0]["shortened"] = True
    pq.write_table(table.from_pylist(rows, schema=table.schema), EVAL_TEST_FILE)
    pmid = rows[0]["pmid"]
    by_pmid = json.loads(ask(capsys, "--pmid", pmid, "--json"))
    with_context = json.loads(ask(capsys, "--question", "Why?", "--context", "Text.", "--json"))
    alone = json.loads(ask(capsys, "--question", "Why?", "--no-context", "--json"))
    for answer in (by_pmid, with_context, alone):
        assert set(answer) == ANSWER_KEYS, answer
    assert by_pmid["pmid"] == pmid and by_pmid["context_shortened"] is True
    assert with_context["context_shortened"] is False and alone["context_shortened"] is False
    for key in ("pmid", "gold_decision", "reference_answer"):
        assert with_context[key] is None and alone[key] is None
    assert "(the context was shortened to fit the model)" in ask(capsys, "--pmid", pmid)


def test_the_text_answer_is_the_json_answer_written_for_a_person(eval_workdir, capsys) -> None:
    """`ask` prints, line by line, what `ask --json` holds for the same question (the model is
    deterministic): the question, the shortened-context line only when it was shortened, the
    decision with the three probabilities to 3 decimals in LABELS' order, the answer, and the
    gold decision and reference answer only for a test question."""
    import pyarrow.parquet as pq

    table = pq.read_table(EVAL_TEST_FILE)
    rows = table.to_pylist()
    rows[0]["shortened"] = True
    pq.write_table(table.from_pylist(rows, schema=table.schema), EVAL_TEST_FILE)
    for args in (["--pmid", rows[0]["pmid"]], ["--question", "Why?", "--no-context"]):
        answer = json.loads(ask(capsys, *args, "--json"))
        p = answer["probabilities"]
        expected = [f"Question: {answer['question']}"]
        if args[0] == "--pmid":
            expected.append("(the context was shortened to fit the model)")
        expected += [
            f"Decision: {answer['decision']}  "
            f"(yes {p['yes']:.3f}, no {p['no']:.3f}, maybe {p['maybe']:.3f})",
            f"Answer: {answer['long_answer']}",
        ]
        if args[0] == "--pmid":
            expected += [
                f"Gold decision: {rows[0]['decision']}",
                f"Reference answer: {rows[0]['long_answer']}",
            ]
        assert ask(capsys, *args).rstrip("\n") == "\n".join(expected)


def decoding_flags() -> dict[str, str]:
    """`ask`'s options named after a field of the `evaluate` section: {flag: field}."""
    from pubmedqa_gpt2.core.config import EvaluateParams

    (ask_parser,) = [
        action.choices["ask"] for action in cli.build_parser()._actions if action.dest == "command"
    ]
    return {
        action.option_strings[0]: action.dest
        for action in ask_parser._actions
        if action.dest in EvaluateParams.model_fields
    }


def test_every_decoding_flag_reaches_the_generation_settings(eval_workdir, capsys, monkeypatch):
    """Each flag, given alone with a value other than params.yaml's, is the value generation
    runs with; the other settings stay params.yaml's."""
    from pubmedqa_gpt2.core.config import load_section

    flags = decoding_flags()
    assert set(flags.values()) == {"max_new_tokens", "repetition_penalty", "no_repeat_ngram_size"}
    committed = load_section("evaluate", "params.yaml")
    seen = generation_settings_seen(monkeypatch)
    for flag, field in flags.items():
        value = getattr(committed, field) + 2  # valid for each (a count, a penalty)
        ask(capsys, "--model", str(EVAL_MODEL_DIR), "--question", "Q?", "--no-context",
            flag, str(value))  # fmt: skip
        settings = seen.pop()
        assert getattr(settings, field) == value, flag
        assert settings.model_dump() == committed.model_copy(update={field: value}).model_dump()


@pytest.mark.child_process
def test_console_entry_point_fails_without_a_traceback(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "pubmedqa_gpt2.cli", "ask", "--model", "missing",
         "--question", "Why?", "--no-context"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == "error: --model missing: no such directory\n"
    assert result.stdout == ""
