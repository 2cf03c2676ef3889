"""The evaluate stage: input checks, the pieces, and whole runs on a tiny random GPT-2."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from pubmedqa_gpt2.core import paths
from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.data.token_files import check_fits
from pubmedqa_gpt2.evaluation import answers, testset
from pubmedqa_gpt2.evaluation.evaluate import confusion_rows, evaluate_model
from pubmedqa_gpt2.evaluation.testset import read_test
from pubmedqa_gpt2.model.loading import build_model
from pubmedqa_gpt2.prompt import LABELS
from stages import evaluate as stage

from .committed import committed_params
from .conftest import EVAL_TEST_FILE, write_prepared_test_split

PERF_KEYS = {
    "device",
    "dtype",
    "runtime_s",
    "scoring_s",
    "perplexity_s",
    "generation_s",
    "scoring_examples_per_s",
    "perplexity_examples_per_s",
    "generation_examples_per_s",
    "decode_step",
    "generation_batch_size",
    "decode_steps",
    "decode_step_ms",
}


def run(monkeypatch, which: str) -> dict:
    """Run the stage's main() for `which` in the current directory; its metrics file."""
    monkeypatch.setattr(sys, "argv", ["evaluate", which])
    stage.main()
    return json.loads(Path(f"metrics/eval_{which}.json").read_text())


def read_json(path: str):
    return json.loads(Path(path).read_text())


def without_perf(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if key != "perf"}


# ---- Pieces ----


def test_parse_which() -> None:
    assert stage.parse_which(["base"]) == "base"
    assert stage.parse_which(["finetuned"]) == "finetuned"
    for argv in ([], ["tuned"], ["base", "finetuned"]):
        with pytest.raises(StageError, match=r"usage: python -m stages.evaluate base\|finetuned"):
            stage.parse_which(argv)


def test_confusion_rows_by_hand() -> None:
    rows = confusion_rows(["yes", "no", "maybe"], ["yes", "yes", "no"])
    assert rows == [
        {"actual": "yes", "predicted": "yes"},
        {"actual": "no", "predicted": "yes"},
        {"actual": "maybe", "predicted": "no"},
    ]


def test_decision_ids_are_the_decision_text(tokenizer) -> None:
    # " yes." is " yes" (3763) then "." (13): the label token, then the full stop.
    assert answers.decision_ids(tokenizer) == {
        "yes": [3763, 13],
        "no": [645, 13],
        "maybe": [3863, 13],
    }


def test_decision_ids_hold_no_special_token_from_a_tokenizer_that_adds_one(tokenizer_dir) -> None:
    """A tokenizer that starts every text with <|endoftext|> (50256, add_bos_token): " yes."
    still follows the prompt as 3763, 13 alone (vocab.json): it comes after the prompt."""
    from pubmedqa_gpt2.model.loading import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    tok.add_bos_token = True
    assert tok(" yes.")["input_ids"] == [50256, 3763, 13]
    assert answers.decision_ids(tok) == {"yes": [3763, 13], "no": [645, 13], "maybe": [3863, 13]}


def test_read_test_accepts_what_prepare_writes(tmp_path, tokenizer) -> None:
    rows = write_prepared_test_split(tmp_path / "test.parquet", tokenizer, 4)
    examples = read_test(tmp_path / "test.parquet")
    assert [ex.pmid for ex in examples] == [row["pmid"] for row in rows]
    assert examples[1].completion_ids == rows[1]["completion_ids"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda rows: [{k: v for k, v in r.items() if k != "long_answer"} for r in rows],
         "missing column"),
        (lambda rows: [rows[0], {**rows[1], "decision": "Yes"}], r"row 1 \(pmid 2007\): decision"),
        (lambda rows: [rows[0], {**rows[1], "pmid": rows[0]["pmid"]}], "appears twice"),
        (lambda rows: [{**rows[0], "prompt_ids": []}], "prompt_ids is empty"),
        (lambda rows: [], "no examples"),
    ],
)  # fmt: skip
def test_read_test_refuses_bad_input(tmp_path, tokenizer, change, message) -> None:
    path = tmp_path / "test.parquet"
    rows = change(write_prepared_test_split(path, tokenizer, 2))
    schema = pq.read_schema(path)
    if rows and "long_answer" not in rows[0]:
        schema = schema.remove(schema.get_field_index("long_answer"))
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    with pytest.raises(StageError, match=message):
        read_test(path)


def test_read_test_names_a_missing_file(tmp_path) -> None:
    with pytest.raises(StageError, match="file not found; run the prepare stage first"):
        read_test(tmp_path / "nope.parquet")


def test_reference_nll_is_the_long_answer_given_prompt_and_decision(
    tmp_path, tokenizer, tiny_model_params
) -> None:
    write_prepared_test_split(tmp_path / "test.parquet", tokenizer, 5)
    examples = read_test(tmp_path / "test.parquet")
    model = build_model(tiny_model_params)
    nll, tokens = answers.reference_nll(model, tokenizer, examples, batch_size=2, progress=None)
    # By hand: the decision text " yes." is 2 tokens, the rest (answer + eos) is scored.
    total, count = 0.0, 0
    with torch.no_grad():
        for i, ex in enumerate(examples):
            ids = torch.tensor([ex.prompt_ids + ex.completion_ids])
            logits = model(ids).logits[0]
            start = len(ex.prompt_ids) + 2
            target = ids[0, start:]
            by_hand = torch.nn.functional.cross_entropy(
                logits[start - 1 : -1], target, reduction="sum"
            ).item()
            assert nll[i] == pytest.approx(by_hand, rel=1e-4)
            assert tokens[i] == len(target)
            total += by_hand
            count += len(target)
    assert answers.perplexity(nll, tokens) == pytest.approx(math.exp(total / count), rel=1e-4)
    assert examples[0].completion_ids[-1] == tokenizer.eos_token_id  # the eos is scored too


def test_reference_nll_scores_in_the_batches_it_is_given_under_its_progress_bar(
    tmp_path, tokenizer, tiny_model_params, monkeypatch, capsys
) -> None:
    """5 answers in batches of 2: 3 batches on a progress bar named as asked; in batches of 5,
    one; with no name, no bar."""
    write_prepared_test_split(tmp_path / "test.parquet", tokenizer, 5)
    examples = read_test(tmp_path / "test.parquet")
    model = build_model(tiny_model_params)
    answers.reference_nll(model, tokenizer, examples, batch_size=2, progress="base: perplexity")
    assert "base: perplexity: 100%" in (err := capsys.readouterr().err) and " 3/3 " in err
    answers.reference_nll(model, tokenizer, examples, batch_size=5, progress="again")
    assert "again: 100%" in (err := capsys.readouterr().err) and " 1/1 " in err
    answers.reference_nll(model, tokenizer, examples, batch_size=5, progress=None)
    assert capsys.readouterr().err == ""


def test_reference_perplexity_refuses_a_completion_without_the_decision(
    tmp_path, tokenizer, tiny_model_params
) -> None:
    write_prepared_test_split(tmp_path / "test.parquet", tokenizer, 1)
    (example,) = read_test(tmp_path / "test.parquet")
    bad = testset.TestExample(**{**example.__dict__, "decision": "maybe"})  # its text says " yes."
    with pytest.raises(StageError, match="do not start with the tokens of ' maybe.'"):
        answers.reference_nll(build_model(tiny_model_params), tokenizer, [bad], 1, None)


def test_evaluate_model_without_generation(tmp_path, tokenizer, tiny_model_params) -> None:
    write_prepared_test_split(tmp_path / "test.parquet", tokenizer, 4)
    examples = read_test(tmp_path / "test.parquet")
    settings = committed_params({"evaluate": {"generate_examples": 0}}).evaluate
    result = evaluate_model(build_model(tiny_model_params), tokenizer, examples, settings)
    assert result.metrics["n_generated"] == 0
    assert "rouge1" not in result.metrics and "bleu" not in result.metrics
    assert set(result.metrics["ci95"]) == {"accuracy", "macro_f1", "ece"}
    assert "generation_examples_per_s" not in result.details["perf"]
    assert all(sample["generated_answer"] is None for sample in result.samples)


# ---- Whole runs ----


def test_base_run_writes_every_output_consistently(eval_workdir, monkeypatch) -> None:
    metrics = run(monkeypatch, "base")
    rows = pq.read_table(EVAL_TEST_FILE).to_pylist()
    gold = {row["pmid"]: row["decision"] for row in rows}

    # predictions.json: exactly the official format, {pmid: label} over exactly the test PMIDs.
    predictions = read_json("eval/base/predictions.json")
    assert set(predictions) == set(gold) and len(predictions) == len(rows)
    assert all(isinstance(k, str) and v in LABELS for k, v in predictions.items())

    probabilities = read_json("eval/base/probabilities.json")
    assert set(probabilities) == set(gold)
    for pmid, probs in probabilities.items():
        assert set(probs) == set(LABELS)
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert max(probs, key=probs.get) == predictions[pmid]

    # The decision metrics, recomputed from the files alone, equal the metrics file.
    pmids = sorted(gold)
    y_true, y_pred = [gold[p] for p in pmids], [predictions[p] for p in pmids]
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert metrics["macro_f1"] == pytest.approx(
        f1_score(y_true, y_pred, labels=list(LABELS), average="macro", zero_division=0)
    )
    details = read_json("eval/base/details.json")
    assert sum(c["support"] for c in details["per_class"].values()) == len(rows)

    confusion = read_json("eval/base/confusion.json")
    assert confusion == [
        {"actual": row["decision"], "predicted": predictions[row["pmid"]]} for row in rows
    ]

    samples = [
        json.loads(line) for line in Path("eval/base/samples.jsonl").read_text().splitlines()
    ]
    assert [s["pmid"] for s in samples] == [row["pmid"] for row in rows]
    assert [s["reference_answer"] for s in samples] == [row["long_answer"] for row in rows]
    generated = [s["generated_answer"] for s in samples]
    assert all(isinstance(g, str) for g in generated[:5]) and generated[5:] == [None] * 7

    assert metrics["n_test"] == 12 and metrics["n_generated"] == 5
    assert {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu"} <= set(metrics)
    assert "meteor" in metrics and details["meteor_wordnet"].startswith("wordnet-3.0")
    assert metrics["perplexity"] > 1.0
    assert "perf" not in metrics and set(details["perf"]) == PERF_KEYS
    assert details["perf"]["device"] == "cpu" and details["perf"]["dtype"] == "float32"
    # 5 answers in 2 batches of 3 with 8 new tokens at most (conftest's params), `auto` on a
    # CPU: the dynamic cache; each batch decodes at most 7 steps after the prompts' own pass.
    assert details["perf"]["decode_step"] == "dynamic"
    assert details["perf"]["generation_batch_size"] == 3
    assert 1 <= details["perf"]["decode_steps"] <= 2 * 7


def test_runs_are_deterministic_and_base_equals_its_saved_copy(eval_workdir, monkeypatch) -> None:
    # models/finetuned holds the base model saved with save_pretrained: loading it must give
    # the same figures as building it, and a second run the same figures as the first.
    base = run(monkeypatch, "base")
    first = Path("eval/base/predictions.json").read_bytes()
    assert without_perf(run(monkeypatch, "base")) == without_perf(base)
    assert Path("eval/base/predictions.json").read_bytes() == first
    finetuned = run(monkeypatch, "finetuned")
    assert without_perf(finetuned) == without_perf(base)
    assert read_json("eval/finetuned/predictions.json") == read_json("eval/base/predictions.json")


def test_finetuned_without_a_trained_model_is_a_clear_error(eval_workdir, monkeypatch) -> None:
    import shutil

    shutil.rmtree("models")
    monkeypatch.setattr(sys, "argv", ["evaluate", "finetuned"])
    with pytest.raises(StageError, match="models/finetuned: not found; run the train stage"):
        stage.main()
    assert not Path("eval").exists() and not Path("metrics").exists()


def test_prompts_too_long_for_the_model_are_refused(eval_workdir, tokenizer) -> None:
    examples = read_test(EVAL_TEST_FILE)
    longest = max(len(ex.prompt_ids) + len(ex.completion_ids) for ex in examples)
    check_fits(examples, longest, EVAL_TEST_FILE)
    with pytest.raises(StageError) as err:
        check_fits(examples, longest - 1, EVAL_TEST_FILE)
    assert str(err.value).endswith(
        f"{longest} tokens, over the model's {longest - 1} positions; lower prepare.max_length"
    )


# ---- Wiring, seen from outside: a model that always says one thing ----


def biased_model(params, token_id: int):
    """A tiny GPT-2 whose every position predicts `token_id` by a wide margin: the final layer
    norm outputs one fixed vector, and only that token's (tied) embedding points along it."""
    model = build_model(params)
    with torch.no_grad():
        width = model.config.n_embd
        direction = torch.zeros(width)
        direction[0] = 10.0
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(direction)
        model.transformer.wte.weight[:, 0] = 0.0
        model.transformer.wte.weight[token_id, 0] = 5.0  # logit 50 here, 0 everywhere else
    return model


@pytest.mark.parametrize("label", LABELS)
def test_a_model_biased_toward_one_label_predicts_it_and_generates_after_it(
    eval_workdir, monkeypatch, tokenizer, tiny_model_params, label
) -> None:
    # The label's token in GPT-2's vocabulary (vocab.json), not from the code under test.
    token = {"yes": 3763, "no": 645, "maybe": 3863}[label]
    assert tokenizer.decode([token]) == f" {label}"
    biased_model(tiny_model_params, token).save_pretrained(paths.FINETUNED)
    prompts_generated: list[list[int]] = []
    real_generate = answers.generate_greedy

    def spy(model, prompts, *args, **kwargs):
        prompts_generated.extend(list(p) for p in prompts)
        return real_generate(model, prompts, *args, **kwargs)

    monkeypatch.setattr(answers, "generate_greedy", spy)
    metrics = run(monkeypatch, "finetuned")

    rows = pq.read_table(EVAL_TEST_FILE).to_pylist()
    assert {r["decision"] for r in rows} == set(LABELS)  # the gold labels vary
    predictions = read_json("eval/finetuned/predictions.json")
    assert set(predictions.values()) == {label}
    assert metrics["accuracy"] == pytest.approx(sum(r["decision"] == label for r in rows) / 12)
    # Each long answer is generated after the prompt and the PREDICTED decision's text.
    follow = tokenizer(f" {label}.", add_special_tokens=False)["input_ids"]
    assert len(prompts_generated) == 5  # params: generate_examples 5
    for row, prompt in zip(rows, prompts_generated, strict=False):
        assert prompt == row["prompt_ids"] + follow
    samples = [json.loads(line) for line in Path("eval/finetuned/samples.jsonl").open()]
    assert samples[0]["generated_answer"].startswith(label)  # the model repeats its token


def test_the_cli_prompt_holds_the_question_and_the_given_context(
    eval_workdir, capsys, monkeypatch, tokenizer
) -> None:
    from pubmedqa_gpt2 import cli

    seen: list[list[int]] = []
    real_decide = answers.decide

    def spy(model, tok, prompts, *args, **kwargs):
        seen.extend(list(p) for p in prompts)
        return real_decide(model, tok, prompts, *args, **kwargs)

    monkeypatch.setattr(answers, "decide", spy)
    question = "Do statins reduce mortality?"
    context = "BACKGROUND: We followed 200 patients. RESULTS: Fewer died."
    cli.main(["ask", "--question", question, "--context", context, "--max-new-tokens", "2"])
    assert "Decision:" in capsys.readouterr().out
    (prompt,) = seen
    assert tokenizer.decode(prompt) == f"Question: {question}\nContext: {context}\nAnswer:"


def test_every_aggregate_recomputes_from_the_samples_file_alone(eval_workdir, monkeypatch) -> None:
    """accuracy, macro-F1, perplexity, ROUGE, METEOR, BLEU and their 95% intervals, from
    samples.jsonl with scikit-learn, sacrebleu and scipy: nothing else is needed."""
    import numpy as np
    import sacrebleu
    from scipy import stats

    metrics = run(monkeypatch, "base")
    samples = [json.loads(line) for line in Path("eval/base/samples.jsonl").open()]
    gold = [s["gold_decision"] for s in samples]
    pred = [s["predicted_decision"] for s in samples]
    assert [s["correct"] for s in samples] == [g == p for g, p in zip(gold, pred, strict=True)]
    assert metrics["accuracy"] == pytest.approx(accuracy_score(gold, pred))
    macro = lambda g, p: f1_score(g, p, labels=list(LABELS), average="macro", zero_division=0)  # noqa: E731
    assert metrics["macro_f1"] == pytest.approx(macro(gold, pred))
    nll = sum(s["reference_nll"] for s in samples)
    assert metrics["perplexity"] == pytest.approx(
        math.exp(nll / sum(s["reference_tokens"] for s in samples))
    )
    generated = [s for s in samples if s["generated_answer"] is not None]
    assert len(generated) == metrics["n_generated"] == 5
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum", "meteor"):
        assert metrics[key] == pytest.approx(sum(s[key] for s in generated) / 5)
    bleu = sacrebleu.corpus_bleu(
        [s["generated_answer"] for s in generated], [[s["reference_answer"] for s in generated]]
    )
    assert metrics["bleu"] == pytest.approx(min(bleu.score / 100, 1.0))

    # The intervals: scipy's percentile bootstrap with the params' resamples and seed, said
    # in details.json; the metrics file holds numbers only (`dvc metrics diff` stays narrow).
    assert read_json("eval/base/details.json")["ci_method"] == (
        "95% percentile bootstrap (scipy.stats.bootstrap) over the 12 test questions, "
        "1000 resamples, seed 0"
    )
    assert "ci_method" not in metrics
    numbers = [v for k, v in metrics.items() if k != "ci95"] + [
        v for ci in metrics["ci95"].values() for v in ci.values()
    ]
    assert all(isinstance(v, int | float) for v in numbers), metrics

    def interval(data, statistic, vectorized=True):
        result = stats.bootstrap(
            data, statistic, paired=True, vectorized=vectorized, n_resamples=1000,
            method="percentile", rng=np.random.default_rng(0),
        )  # fmt: skip
        return pytest.approx(
            [result.confidence_interval.low, result.confidence_interval.high], abs=1e-6
        )

    ci = metrics["ci95"]
    assert [ci["accuracy"]["low"], ci["accuracy"]["high"]] == interval(
        (np.array([s["correct"] for s in samples], dtype=float),), np.mean
    )
    codes = {label: i for i, label in enumerate(LABELS)}
    g, p = np.array([codes[x] for x in gold]), np.array([codes[x] for x in pred])
    assert [ci["macro_f1"]["low"], ci["macro_f1"]["high"]] == interval(
        (g, p), lambda a, b: macro([LABELS[i] for i in a], [LABELS[i] for i in b]), False
    )
    for key in ("rouge1", "rougeL", "meteor"):
        values = np.array([s[key] for s in generated])
        assert [ci[key]["low"], ci[key]["high"]] == interval((values,), np.mean)
    assert ci["accuracy"]["low"] <= metrics["accuracy"] <= ci["accuracy"]["high"]

    # Calibration: the confidence is the predicted label's probability; ten bins of width
    # 0.1, each (lo, hi]; ECE = sum of |right - confidence| per bin over all questions.
    confidence = [s["probabilities"][s["predicted_decision"]] for s in samples]
    bins: dict[int, list[tuple[float, bool]]] = {}
    for c, s in zip(confidence, samples, strict=True):
        bins.setdefault(min(math.ceil(c * 10) - 1, 9), []).append((c, s["correct"]))
    ece = sum(abs(sum(r - c for c, r in members)) for members in bins.values()) / len(samples)
    assert metrics["ece"] == pytest.approx(ece, abs=1e-6)
    rows = read_json("eval/base/calibration.json")
    assert [r["count"] for r in rows] == [len(bins[k]) for k in sorted(bins)]
    assert sum(r["count"] for r in rows) == 12
    for row, k in zip(rows, sorted(bins), strict=True):
        assert row["bin"] == f"{k / 10:.1f}-{(k + 1) / 10:.1f}"
        assert row["confidence"] == pytest.approx(sum(c for c, _ in bins[k]) / len(bins[k]))
        assert row["accuracy"] == pytest.approx(sum(r for _, r in bins[k]) / len(bins[k]))
    conf, right = np.array(confidence), np.array([s["correct"] for s in samples], dtype=float)

    def ece_of(c, r, axis=-1):  # the same bins, written here, vectorized for scipy
        index = np.minimum(np.ceil(c * 10) - 1, 9)
        return (
            sum(np.abs(np.sum(np.where(index == k, r - c, 0), axis=axis)) for k in range(10))
            / c.shape[axis]
        )

    assert [ci["ece"]["low"], ci["ece"]["high"]] == interval((conf, right), ece_of)


def test_cuda_out_of_memory_in_evaluation_is_one_line_with_advice(
    eval_workdir, monkeypatch, capsys
) -> None:
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 6.14 GiB. GPU 0 has a total capacity of "
            "15.77 GiB of which 2.50 GiB is free."
        )

    monkeypatch.setattr(stage, "evaluate_model", out_of_memory)
    monkeypatch.setattr(sys, "argv", ["evaluate", "base"])
    with pytest.raises(SystemExit) as exit_info:
        stage.run_stage(stage.main)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: CUDA out of memory, tried to allocate 6.14 GiB, 2.50 GiB free of 15.77 GiB; "
        "to fit: lower evaluate.batch_size and evaluate.generation_batch_size, "
        "or prepare.max_length"
    )
    assert not Path("eval").exists() and not Path("metrics").exists()


def test_the_evaluate_stage_claims_one_free_gpu_of_its_own_before_cuda(tmp_path, monkeypatch):
    """On a machine with 3 GPUs, GPU 0 held by another run: evaluate locks GPU 1 and sees only
    it before it picks its device, one GPU whatever train.num_processes (2) says."""
    import fcntl
    import os

    from pubmedqa_gpt2 import gpu_claims

    from .committed import write_params

    write_params(tmp_path, {"train": {"num_processes": 2}})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gpu_claims, "physical_gpus", lambda: ["0", "1", "2"])
    monkeypatch.setenv(gpu_claims.LOCK_DIR_ENV, str(tmp_path / "locks"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # so that the claim's own setting is undone
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")  # (delenv of an unset variable records nothing)
    (tmp_path / "locks").mkdir()
    other_run = os.open(tmp_path / "locks/gpu-0.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(other_run, fcntl.LOCK_EX | fcntl.LOCK_NB)
    monkeypatch.setattr(stage, "read_test", lambda path: [])
    seen = {}

    class Stop(Exception):
        pass

    def pick_device():
        seen["visible"] = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise Stop

    monkeypatch.setattr(stage, "pick_device", pick_device)
    monkeypatch.setattr(sys, "argv", ["evaluate", "base"])
    try:
        with pytest.raises(Stop):
            stage.main()
        assert seen == {"visible": "1"}
        with pytest.raises(BlockingIOError):  # held by this process until it ends
            fcntl.flock(
                os.open(tmp_path / "locks/gpu-1.lock", os.O_RDWR), fcntl.LOCK_EX | fcntl.LOCK_NB
            )
    finally:
        gpu_claims.release_gpus()
        os.close(other_run)


# ---- evaluate_model's wiring: progress labels, timings, figures, decide and generate stubbed ----


class FakeClock:
    """perf_counter for the evaluate module alone: it moves only when a phase says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


# What the generate stand-in reports of its decoding (as generate_greedy fills `stats`).
DECODING = {
    "decode_step": "static",
    "generation_batch_size": 3,
    "decode_steps": 7,
    "decode_s": 0.0864197523,
    "decode_step_ms": 12.3456789,
    "fallback": "CUDA graph capture failed (out of memory)",
}


def run_wired(monkeypatch, tmp_path, tokenizer, tiny_model_params, name):
    """evaluate_model on 3 questions (gold yes, no, maybe) with the committed settings
    (generate_examples null: all of them). decide is a stand-in that says yes 0.9, yes 0.6,
    no 0.4; generate_answers one that answers each question with its reference and reports
    DECODING; reference_nll is the real one. By the evaluate module's clock, decide takes
    0.7654321 s, the perplexity 1.7654321 s, the generation 2.3456789 s.
    (result, the progress label each phase got)."""
    from pubmedqa_gpt2.evaluation import evaluate as module

    write_prepared_test_split(tmp_path / "test.parquet", tokenizer, 3)
    examples = read_test(tmp_path / "test.parquet")
    assert [ex.decision for ex in examples] == ["yes", "no", "maybe"]
    settings = committed_params().evaluate
    assert settings.generate_examples is None  # committed: every question gets an answer
    clock, labels = FakeClock(), {}
    monkeypatch.setattr(module, "time", clock)

    def decide(model, tok, prompts, batch_size, progress):
        labels["decide"] = progress
        clock.now += 0.7654321
        probabilities = [
            {"yes": 0.9, "no": 0.05, "maybe": 0.05},
            {"yes": 0.6, "no": 0.3, "maybe": 0.1},
            {"yes": 0.3, "no": 0.4, "maybe": 0.3},
        ]
        return ["yes", "yes", "no"], probabilities

    def reference_nll(model, tok, examples, batch_size, progress):
        labels["perplexity"] = progress
        clock.now += 1.7654321
        return answers.reference_nll(model, tok, examples, batch_size, progress)

    def generate_answers(model, tok, prompts, decisions, settings, progress, stats=None):
        labels["generate"] = progress
        clock.now += 2.3456789
        stats.update(DECODING)
        return [ex.long_answer for ex in examples[: len(prompts)]]

    monkeypatch.setattr(module, "decide", decide)
    monkeypatch.setattr(module, "reference_nll", reference_nll)
    monkeypatch.setattr(module, "generate_answers", generate_answers)
    model = build_model(tiny_model_params)
    return evaluate_model(model, tokenizer, examples, settings, name=name), labels


def test_evaluate_model_labels_each_progress_bar_with_the_model_and_the_phase(
    tmp_path, monkeypatch, tokenizer, tiny_model_params
) -> None:
    _, labels = run_wired(monkeypatch, tmp_path, tokenizer, tiny_model_params, "base")
    assert labels == {
        "decide": "base: decide",
        "perplexity": "base: perplexity",
        "generate": "base: generate",
    }


def test_evaluate_model_without_a_name_shows_no_progress_bar(
    tmp_path, monkeypatch, tokenizer, tiny_model_params
) -> None:
    result, labels = run_wired(monkeypatch, tmp_path, tokenizer, tiny_model_params, None)
    assert labels == {"decide": None, "perplexity": None, "generate": None}  # None, not 0

    # generate_examples null: all 3 questions get a long answer.
    assert result.metrics["n_generated"] == 3
    assert [s["generated_answer"] for s in result.samples] == [
        "Treatment 0 had no clear effect.",
        "Treatment 1 had an effect.",
        "Treatment 2 had no clear effect.",
    ]

    # Timings by the fake clock, to 3 places: 0.7654321 s, 1.7654321 s, 2.3456789 s for
    # 3 questions; 3 / 0.7654321 = 3.91935..., 3 / 1.7654321 = 1.69930...,
    # 3 / 2.3456789 = 1.27894... questions a second. The decoding as the generation said,
    # its 12.3456789 ms a step to 3 places.
    assert result.details["perf"] == {
        "scoring_s": 0.765,
        "perplexity_s": 1.765,
        "generation_s": 2.346,
        "scoring_examples_per_s": 3.919,
        "perplexity_examples_per_s": 1.699,
        "generation_examples_per_s": 1.279,
        "decode_step": "static",
        "generation_batch_size": 3,
        "decode_steps": 7,
        "decode_step_ms": 12.346,
        "decode_fallback": "CUDA graph capture failed (out of memory)",
    }

    # Gold yes, no, maybe; predicted yes, yes, no. Rows gold, columns predicted, in the
    # order yes, no, maybe: yes->yes, no->yes, maybe->no.
    assert result.details["confusion_matrix"] == [[1, 0, 0], [1, 0, 0], [0, 1, 0]]

    # ECE: confidences 0.9 (right), 0.6 (wrong), 0.4 (wrong), each alone in its bin
    # ((0.8, 0.9], (0.5, 0.6], (0.3, 0.4]): (0.1 + 0.6 + 0.4) / 3 = 0.3666..., to 6 places.
    assert result.metrics["ece"] == 0.366667


def test_load_evaluated_builds_the_base_model_in_the_given_dtype(
    tmp_path, monkeypatch, tiny_model_params
) -> None:
    from pubmedqa_gpt2.evaluation.evaluate import load_evaluated

    monkeypatch.chdir(tmp_path)  # no models/finetuned here: base needs none
    model, tokenizer = load_evaluated("base", tiny_model_params, dtype=torch.bfloat16)
    assert model.config.n_layer == 2 and model.dtype == torch.bfloat16
    assert tokenizer.eos_token_id == 50256  # GPT-2's <|endoftext|>


def test_load_evaluated_loads_the_finetuned_model_in_the_given_dtype(
    eval_workdir, tiny_model_params
) -> None:
    from pubmedqa_gpt2.evaluation.evaluate import load_evaluated

    model, tokenizer = load_evaluated("finetuned", tiny_model_params, dtype=torch.bfloat16)
    assert model.config.n_layer == 2 and model.dtype == torch.bfloat16  # saved in float32
    assert tokenizer.eos_token_id == 50256


def test_load_evaluated_names_the_finetuned_folder_it_cannot_load(
    tmp_path, monkeypatch, tiny_model_params
) -> None:
    from pubmedqa_gpt2.evaluation.evaluate import load_evaluated

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models/finetuned").mkdir(parents=True)  # there, but empty
    with pytest.raises(
        StageError, match=r"^models/finetuned: cannot load a model from 'models/finetuned': "
    ):
        load_evaluated("finetuned", tiny_model_params)


def test_confusion_rows_refuses_lists_of_unequal_length() -> None:
    with pytest.raises(ValueError, match="zip"):
        confusion_rows(["yes", "no"], ["yes"])


def test_write_outputs_writes_samples_as_utf8_text(tmp_path, monkeypatch) -> None:
    from pubmedqa_gpt2.evaluation.evaluate import Evaluation, write_outputs

    monkeypatch.chdir(tmp_path)
    sample = {"pmid": "1", "question": "Do β-blockers help after an infarct?", "correct": True}
    evaluation = Evaluation(
        predictions={"1": "yes"},
        probabilities={"1": {"yes": 1.0, "no": 0.0, "maybe": 0.0}},
        samples=[sample],
        confusion=[{"actual": "yes", "predicted": "yes"}],
        reliability=[],
        metrics={"accuracy": 1.0},
        details={"perf": {}},
    )
    write_outputs("base", evaluation)
    # One line, the β as its UTF-8 bytes (0xCE 0xB2), not the escape \u03b2.
    text = (tmp_path / "eval/base/samples.jsonl").read_bytes().decode("utf-8")
    assert text == (
        '{"pmid": "1", "question": "Do β-blockers help after an infarct?", "correct": true}\n'
    )
    assert "\\u03b2" not in text
    assert json.loads((tmp_path / "metrics/eval_base.json").read_text()) == {"accuracy": 1.0}


# ---- decide and generate_answers, called directly ----


def test_decide_scores_in_the_batches_it_is_given_padded_with_the_pad_token(
    tokenizer, tiny_model_params, capsys
) -> None:
    """5 prompts of different lengths in batches of 2: 3 batches on a progress bar named as
    asked; in batches of 5, one; with no name, no bar. The model reads the shorter prompts of
    a batch padded with the tokenizer's pad token, <|endoftext|> (50256 in vocab.json)."""
    prompts = [tokenizer("Question:" + " Is it?" * i + "\nAnswer:")["input_ids"] for i in range(5)]
    model = build_model(tiny_model_params)
    fed: list[tuple[torch.Tensor, torch.Tensor]] = []

    def record(module, args, kwargs):
        fed.append((kwargs["input_ids"].clone(), kwargs["attention_mask"].clone()))

    model.base_model.register_forward_pre_hook(record, with_kwargs=True)
    labels, probabilities = answers.decide(model, tokenizer, prompts, 2, progress="base: decide")
    assert "base: decide: 100%" in (err := capsys.readouterr().err) and " 3/3 " in err
    assert len(labels) == len(probabilities) == 5 and len(fed) == 3
    padded = torch.cat([ids[mask == 0] for ids, mask in fed])
    assert padded.numel() > 0 and set(padded.tolist()) == {50256}
    answers.decide(model, tokenizer, prompts, 5, progress="again")
    assert "again: 100%" in (err := capsys.readouterr().err) and " 1/1 " in err
    answers.decide(model, tokenizer, prompts, 5, progress=None)
    assert capsys.readouterr().err == ""


def test_generate_answers_decodes_as_the_settings_say(
    tokenizer, tiny_model_params, monkeypatch, capsys
) -> None:
    """Every decoding setting reaches generate_greedy, with GPT-2's end-of-text (50256 in
    vocab.json) as the end and the padding; the progress bar has the name asked for and
    `stats` says how the decoding ran (static steps, batches of 2)."""
    settings = committed_params(
        {
            "evaluate": {
                "max_new_tokens": 3,
                "generation_batch_size": 2,
                "repetition_penalty": 1.3,
                "no_repeat_ngram_size": 2,
                "decode_step": "static",
            }
        }
    ).evaluate
    calls: list[dict] = []
    real_generate = answers.generate_greedy

    def spy(model, prompts, **kwargs):
        calls.append(kwargs)
        return real_generate(model, prompts, **kwargs)

    monkeypatch.setattr(answers, "generate_greedy", spy)
    prompts = [tokenizer("Question: Is it?\nAnswer:")["input_ids"]] * 3
    stats: dict = {}
    generated = answers.generate_answers(
        build_model(tiny_model_params), tokenizer, prompts, ["yes", "no", "maybe"], settings,
        "base: generate", stats,
    )  # fmt: skip
    assert len(generated) == 3
    (kwargs,) = calls
    assert kwargs == {
        "max_new_tokens": 3,
        "eos_id": 50256,
        "pad_id": 50256,
        "batch_size": 2,
        "repetition_penalty": 1.3,
        "no_repeat_ngram_size": 2,
        "progress": "base: generate",
        "decode_step": "static",
        "stats": stats,
    }
    assert stats["decode_step"] == "static" and stats["generation_batch_size"] == 2
    assert "base: generate: 100%" in (err := capsys.readouterr().err) and " 3/3 " in err


def test_generate_answers_refuses_decisions_that_are_not_one_a_prompt(tokenizer) -> None:
    """Two prompts and one decision (or the reverse): a ValueError before any decoding."""
    prompts = [tokenizer("Answer:")["input_ids"]] * 2
    settings = committed_params().evaluate
    with pytest.raises(ValueError, match="shorter"):
        answers.generate_answers(None, tokenizer, prompts, ["yes"], settings, None)
    with pytest.raises(ValueError, match="longer"):
        answers.generate_answers(None, tokenizer, prompts[:1], ["yes", "no"], settings, None)


def test_a_generated_answer_keeps_its_spaces_before_punctuation(
    tokenizer_dir, tiny_model_params
) -> None:
    """A model that always says " ." (764 in vocab.json): 3 new tokens are " . . .", stripped
    ". . .", even from a tokenizer told to clean up spaces before punctuation (which would
    make it "...")."""
    from pubmedqa_gpt2.model.loading import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    tok.clean_up_tokenization_spaces = True
    tok.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output = True
    settings = committed_params({"evaluate": {"max_new_tokens": 3}}).evaluate
    prompts = [tok("Question: Is it?\nAnswer:")["input_ids"]]
    model = biased_model(tiny_model_params, 764)
    assert answers.generate_answers(model, tok, prompts, ["yes"], settings, None) == [". . ."]


def test_a_generated_answer_leaves_out_special_tokens(tokenizer_dir, tiny_model_params) -> None:
    """A tokenizer with one more special token, <|sep|> (id 50257, after GPT-2's 50257), and
    a model that always says it: 3 of them, all left out of the text, which is empty."""
    from pubmedqa_gpt2.model.loading import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<|sep|>"]})
    assert tok.convert_tokens_to_ids("<|sep|>") == 50257
    overrides = {**tiny_model_params.overrides, "vocab_size": 50258}
    params = tiny_model_params.model_copy(update={"overrides": overrides})
    settings = committed_params({"evaluate": {"max_new_tokens": 3}}).evaluate
    prompts = [tok("Question: Is it?\nAnswer:")["input_ids"]]
    model = biased_model(params, 50257)
    assert answers.generate_answers(model, tok, prompts, ["yes"], settings, None) == [""]
