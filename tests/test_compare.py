"""The compare stage and the statistics behind every interval: checked against hand counts,
scikit-learn and exact binomial sums, and run as DVC runs it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.core.paths import COMPARE_METRICS, COMPARE_PLOT, COMPARE_SENTENCE, samples_file
from pubmedqa_gpt2.evaluation import compare as stage
from pubmedqa_gpt2.evaluation import statistics
from pubmedqa_gpt2.prompt import LABELS

from .committed import write_params
from .conftest import ROOT


def test_vectorized_macro_f1_is_scikit_learn_s():
    rng = np.random.default_rng(0)
    for n in (1, 5, 40, 500):
        gold, pred = rng.integers(0, 3, (2, n))
        if n == 5:
            pred[:] = 0  # one label never predicted, one perhaps never gold
        expected = f1_score(gold, pred, labels=[0, 1, 2], average="macro", zero_division=0)
        assert statistics.macro_f1(gold, pred) == pytest.approx(expected)
    # Along an axis: one figure per row, as the bootstrap passes its resamples.
    gold, pred = rng.integers(0, 3, (2, 4, 30))
    rows = statistics.macro_f1(gold, pred, axis=-1)
    for i in range(4):
        expected = f1_score(gold[i], pred[i], labels=[0, 1, 2], average="macro", zero_division=0)
        assert rows[i] == pytest.approx(expected)


def exact_two_sided_p(fixed: int, broken: int) -> float:
    """The exact McNemar p-value by hand: twice the binomial tail of the smaller count."""
    n, k = fixed + broken, min(fixed, broken)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize(("fixed", "broken"), [(41, 25), (3, 0), (10, 10), (0, 0)])
def test_mcnemar_exact_by_hand(fixed, broken):
    base = [False] * fixed + [True] * broken + [True] * 7 + [False] * 5
    tuned = [True] * fixed + [False] * broken + [True] * 7 + [False] * 5
    result = statistics.mcnemar_exact(base, tuned)
    assert (result["fixed"], result["broken"]) == (fixed, broken)
    assert result["p"] == pytest.approx(exact_two_sided_p(fixed, broken) if fixed + broken else 1.0)


def test_paired_interval_of_a_known_difference():
    """Tuned fixes 30 of 200 questions and breaks none: the difference is +0.15, and the
    interval's width is that of the mean of the per-question differences (0 or 1), 2 x 1.96 x
    sqrt(0.15 x 0.85 / 200) = 0.099, not that of two independent accuracies (0.14)."""
    base = [i % 2 == 0 for i in range(200)]
    tuned = [b or i % 20 in (1, 3, 5) for i, b in enumerate(base)]
    assert sum(tuned) - sum(base) == 30
    ci = statistics.paired_difference_interval(base, tuned, 2000, 0)
    assert ci["low"] < 0.15 < ci["high"]
    se = math.sqrt(0.15 * 0.85 / 200)
    assert ci["high"] - ci["low"] == pytest.approx(2 * 1.96 * se, rel=0.15)


def samples(decisions: list[tuple[str, str]], scores: list[float] | None = None) -> list[dict]:
    out = []
    for i, (gold, pred) in enumerate(decisions):
        sample = {
            "pmid": str(100 + i),
            "gold_decision": gold,
            "predicted_decision": pred,
            "correct": gold == pred,
            "generated_answer": None,
        }
        if scores is not None:
            sample |= {"generated_answer": "text", "rouge1": scores[i], "rougeL": scores[i],
                       "meteor": scores[i]}  # fmt: skip
        out.append(sample)
    return out


def test_compare_by_hand():
    gold = [LABELS[i % 3] for i in range(30)]
    base = samples([(g, "yes") for g in gold], [0.1] * 30)
    # The tuned model is right on every "no" too, and one "yes" goes wrong.
    tuned_pred = ["no" if g == "no" else ("maybe" if i == 0 else "yes") for i, g in enumerate(gold)]
    tuned = samples(list(zip(gold, tuned_pred, strict=True)), [0.1 + 0.01 * i for i in range(30)])
    result = stage.compare(base, tuned, 1000, 0)
    assert result["n_test"] == 30 and result["n_generated"] == 30
    accuracy = result["accuracy"]
    assert (accuracy["base"], accuracy["tuned"]) == pytest.approx((10 / 30, 19 / 30), abs=1e-6)
    assert accuracy["diff"] == pytest.approx(9 / 30, abs=1e-6)
    assert accuracy["low"] < 9 / 30 < accuracy["high"]
    # 2 x (1 + 11) / 2^11 = 0.01171875, kept to 2 significant digits
    assert result["mcnemar"] == {"fixed": 10, "broken": 1, "p": 0.012}
    f1 = lambda p: f1_score(gold, p, labels=list(LABELS), average="macro", zero_division=0)  # noqa: E731
    macro = result["macro_f1"]
    assert macro["base"] == pytest.approx(f1(["yes"] * 30), abs=1e-6)
    assert macro["diff"] == pytest.approx(f1(tuned_pred) - f1(["yes"] * 30), abs=1e-6)
    assert result["rougeL"]["diff"] == pytest.approx(0.01 * 29 / 2, abs=1e-6)
    sentence = stage.sentence(result)
    assert sentence.startswith("fine-tuning changed accuracy by +30.0 points (95% CI +")
    assert "McNemar exact p = 0.012; 10 questions fixed, 1 broken; 30 test questions)" in sentence


def interval_figures(result: dict) -> dict[str, dict]:
    """The compared figures that carry an interval (accuracy, macro-F1, the answer scores)."""
    return {
        key: value for key, value in result.items() if isinstance(value, dict) and "low" in value
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_interval_holds_its_difference_and_swapping_the_models_negates_it(seed):
    """A paired interval is of tuned - base: it holds the point difference, and base and
    fine-tuned swapped give the negated difference and interval (high and low swapped)."""
    rng = np.random.default_rng(seed)
    gold = [LABELS[i] for i in rng.integers(0, 3, 200)]
    base = samples(
        [(g, LABELS[i]) for g, i in zip(gold, rng.integers(0, 3, 200), strict=True)],
        list(rng.uniform(0.1, 0.3, 200)),
    )
    guesses = rng.integers(0, 3, 200)
    better = [g if rng.random() < 0.5 else LABELS[i] for g, i in zip(gold, guesses, strict=True)]
    tuned = samples(list(zip(gold, better, strict=True)), list(rng.uniform(0.2, 0.5, 200)))
    forward = interval_figures(stage.compare(base, tuned, 1000, seed))
    backward = interval_figures(stage.compare(tuned, base, 1000, seed))
    assert set(forward) == {"accuracy", "macro_f1", "rouge1", "rougeL", "meteor"}
    for key, figure in forward.items():
        assert figure["diff"] == pytest.approx(figure["tuned"] - figure["base"], abs=2e-6), key
        assert figure["diff"] > 0, key  # the tuned model is better on each, by construction
        assert figure["low"] <= figure["diff"] <= figure["high"], (key, figure)
        swapped = backward[key]
        assert (swapped["base"], swapped["tuned"]) == (figure["tuned"], figure["base"]), key
        assert swapped["diff"] == pytest.approx(-figure["diff"], abs=1e-6), key
        assert (swapped["low"], swapped["high"]) == pytest.approx(
            (-figure["high"], -figure["low"]), abs=1e-6
        ), key


def test_identical_models_differ_by_nothing():
    both = samples([(LABELS[i % 3], LABELS[(i * 7) % 3]) for i in range(50)], [0.3] * 50)
    result = stage.compare(both, [dict(s) for s in both], 1000, 0)
    for key in ("accuracy", "macro_f1", "rouge1"):
        assert result[key]["diff"] == 0
        assert (result[key]["low"], result[key]["high"]) == (0.0, 0.0)
    assert result["mcnemar"] == {"fixed": 0, "broken": 0, "p": 1.0}


def test_the_forest_plot_rows_hold_both_models_and_their_difference():
    """`eval/compare_intervals.json`: per plotted figure, base, fine-tuned (each with its own
    percentile bootstrap interval, computed here with scipy) and the paired difference (the
    metrics file's figure); figures a run lacks are left out."""
    import numpy as np
    from scipy import stats

    gold = [LABELS[i % 3] for i in range(30)]
    base = samples([(g, "yes") for g in gold], [0.1 + 0.02 * (i % 4) for i in range(30)])
    tuned_pred = ["no" if g == "no" else "yes" for g in gold]
    tuned = samples(list(zip(gold, tuned_pred, strict=True)), [0.2 + 0.01 * i for i in range(30)])
    for sample in base + tuned:
        del sample["meteor"]  # a run scored without METEOR
    result = stage.compare(base, tuned, 500, 0)
    rows = stage.interval_rows(base, tuned, result, 500, 0)
    assert [(r["metric"], r["series"]) for r in rows] == [
        (metric, series)
        for metric in ("accuracy", "macro-F1", "ROUGE-L")  # no METEOR: left out
        for series in ("base", "fine-tuned", "difference")
    ]

    def percentile(values):
        ci = stats.bootstrap((np.asarray(values, dtype=float),), np.mean, n_resamples=500,
                             method="percentile", rng=np.random.default_rng(0))  # fmt: skip
        return pytest.approx([ci.confidence_interval.low, ci.confidence_interval.high], abs=1e-6)

    by = {(r["metric"], r["series"]): r for r in rows}
    assert by["accuracy", "base"]["value"] == pytest.approx(10 / 30, abs=1e-6)
    assert by["accuracy", "fine-tuned"]["value"] == pytest.approx(20 / 30, abs=1e-6)
    assert [by["accuracy", "base"]["low"], by["accuracy", "base"]["high"]] == percentile(
        [s["correct"] for s in base]
    )
    assert [by["ROUGE-L", "fine-tuned"]["low"], by["ROUGE-L", "fine-tuned"]["high"]] == (
        percentile([s["rougeL"] for s in tuned])
    )
    for metric, key in (("accuracy", "accuracy"), ("macro-F1", "macro_f1"), ("ROUGE-L", "rougeL")):
        difference = by[metric, "difference"]
        figure = result[key]
        assert (difference["value"], difference["low"], difference["high"]) == (
            figure["diff"],
            figure["low"],
            figure["high"],
        )
        assert by[metric, "base"]["value"] == figure["base"]
        assert by[metric, "fine-tuned"]["value"] == figure["tuned"]
        for series in ("base", "fine-tuned"):
            row = by[metric, series]
            assert row["low"] <= row["value"] <= row["high"], row


def test_both_models_own_intervals_are_drawn_with_the_given_seed():
    """Scores without ties (so that another seed moves the percentiles): the base's and the
    fine-tuned model's own ROUGE-L intervals are scipy's percentile bootstrap drawn with
    default_rng(seed), the seed given."""
    import numpy as np
    from scipy import stats

    gold = [LABELS[i % 3] for i in range(20)]
    scores = np.random.default_rng(5).random((2, 20)).round(6).tolist()
    base = samples([(g, "yes") for g in gold], scores[0])
    tuned = samples([(g, g) for g in gold], scores[1])
    rows = stage.interval_rows(base, tuned, stage.compare(base, tuned, 200, 3), 200, 3)
    by = {(r["metric"], r["series"]): r for r in rows}
    for series, values in (("base", scores[0]), ("fine-tuned", scores[1])):
        ci = stats.bootstrap((np.asarray(values),), np.mean, n_resamples=200,
                             method="percentile", rng=np.random.default_rng(3))  # fmt: skip
        expected = [ci.confidence_interval.low, ci.confidence_interval.high]
        assert [by["ROUGE-L", series]["low"], by["ROUGE-L", series]["high"]] == pytest.approx(
            expected, abs=1e-6
        )


def test_forest_rows_skip_a_middle_figure_and_keep_six_places():
    """A run scored without ROUGE-L (but with METEOR): its rows skip it and go on; every
    interval is stored to 6 places, as the metrics files are."""
    gold = [LABELS[i % 3] for i in range(12)]
    base = samples([(g, "yes") for g in gold], [0.1 + 0.013 * i for i in range(12)])
    tuned = samples([(g, g if i % 2 else "no") for i, g in enumerate(gold)],
                    [0.3 - 0.011 * i for i in range(12)])  # fmt: skip
    for sample in base + tuned:
        del sample["rougeL"]
    rows = stage.interval_rows(base, tuned, stage.compare(base, tuned, 300, 1), 300, 1)
    assert [r["metric"] for r in rows][::3] == ["accuracy", "macro-F1", "METEOR"]
    for row in rows:
        for key in ("value", "low", "high"):
            assert row[key] == round(row[key], 6), row


def test_one_generated_answer_gets_its_scores_point_interval():
    one = samples([("yes", "yes"), ("no", "yes"), ("maybe", "no")], [0.2, 0.3, 0.4])
    for sample in one[1:]:
        sample["generated_answer"] = None
    intervals = statistics.figure_intervals(one, 100, 0)
    assert intervals["rougeL"] == {"low": 0.2, "high": 0.2}  # one score: the point


def write_samples(folder: Path, model: str, rows: list[dict]) -> None:
    path = folder / samples_file(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def run_compare(folder: Path) -> subprocess.CompletedProcess:
    write_params(folder, {"evaluate": {"bootstrap_samples": 200}})
    return subprocess.run(
        [sys.executable, "-m", "stages.compare"], cwd=folder, capture_output=True, text=True,
        env=os.environ | {"PYTHONPATH": str(ROOT)}, timeout=120,
    )  # fmt: skip


@pytest.mark.child_process
def test_the_stage_writes_the_metrics_and_the_sentence(tmp_path):
    rows = samples([(LABELS[i % 3], "yes") for i in range(20)])
    write_samples(tmp_path, "base", rows)
    write_samples(tmp_path, "finetuned", list(reversed(rows)))  # order does not matter
    proc = run_compare(tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / COMPARE_METRICS).read_text())
    assert result["accuracy"]["diff"] == 0 and "rouge1" not in result
    # Questions are paired by PMID, not by line: the same answers, nothing fixed or broken.
    assert (result["mcnemar"]["fixed"], result["mcnemar"]["broken"]) == (0, 0)
    assert "ci_method" not in result  # a sentence, not a metric: eval/compare.txt says it
    text = (tmp_path / COMPARE_SENTENCE).read_text()
    assert text == proc.stdout and text.startswith("fine-tuning changed accuracy by +0.0 points")
    assert text.splitlines()[1] == (
        "intervals: paired 95% percentile bootstrap (scipy.stats.bootstrap) over the 20 test "
        "questions, 200 resamples, seed 0"
    )
    # Reading order, which `dvc exp show` keeps: accuracy (value, change, interval, base),
    # then McNemar's p, then the other figures.
    keys = list(result)
    assert keys[:3] == ["accuracy", "mcnemar", "macro_f1"]
    assert list(result["accuracy"]) == ["tuned", "diff", "low", "high", "base"]
    assert list(result["mcnemar"]) == ["p", "fixed", "broken"]
    rows = json.loads((tmp_path / COMPARE_PLOT).read_text())
    assert [(r["metric"], r["series"]) for r in rows[:3]] == [
        ("accuracy", "base"), ("accuracy", "fine-tuned"), ("accuracy", "difference")
    ]  # fmt: skip
    assert len(rows) == 6  # accuracy and macro-F1: these samples have no generated answers


@pytest.mark.child_process
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda rows: rows[:-1], "do not hold the same questions"),
        (lambda rows: [{**rows[0], "gold_decision": "no"}, *rows[1:]],
         "pmid 100: gold_decision differs"),
        (lambda rows: [{k: v for k, v in rows[0].items() if k != "correct"}, *rows[1:]],
         "line 1 (pmid 100): field 'correct' is missing"),
        (lambda rows: [{**rows[0], "predicted_decision": "Yes"}, *rows[1:]],
         "line 1 (pmid 100): predicted_decision 'Yes' is not one of"),
        (lambda rows: [], "no questions"),
    ],
)  # fmt: skip
def test_bad_samples_fail_with_one_line_and_write_nothing(tmp_path, change, message):
    rows = samples([(LABELS[i % 3], "yes") for i in range(6)])
    write_samples(tmp_path, "base", rows)
    write_samples(tmp_path, "finetuned", change(rows))
    proc = run_compare(tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not (tmp_path / COMPARE_METRICS).exists()
    assert not (tmp_path / COMPARE_SENTENCE).exists()
    assert not (tmp_path / COMPARE_PLOT).exists()


@pytest.mark.child_process
def test_missing_and_broken_sample_files(tmp_path):
    proc = run_compare(tmp_path)
    assert proc.returncode == 1 and "samples.jsonl: file not found; run the evaluate" in proc.stderr
    write_samples(tmp_path, "base", samples([("yes", "yes")]))
    (tmp_path / samples_file("finetuned")).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / samples_file("finetuned")).write_text('{"pmid": "100"\n')
    proc = run_compare(tmp_path)
    assert proc.returncode == 1 and "finetuned/samples.jsonl: line 1: not JSON" in proc.stderr


# ---- In-process (the tests above that run the stage as a command are out of `make mutate`) ----


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"pmid": "1"'], "line 1: not JSON (Expecting ',' delimiter)"),
        (['{"pmid": "1", "gold_decision": "yes", "predicted_decision": "no", "correct": false}'],
         "line 1 (pmid 1): field 'generated_answer' is missing"),
        (['{"gold_decision": "yes"}'], "line 1 (pmid None): field 'pmid' is missing"),
        ([json.dumps(samples([("yes", "no")])[0]),
          json.dumps({**samples([("no", "no")])[0], "gold_decision": "No"})],
         "line 2 (pmid 100): gold_decision 'No' is not one of ['yes', 'no', 'maybe']"),
        ([json.dumps({**samples([("no", "no")])[0], "predicted_decision": None})],
         "line 1 (pmid 100): predicted_decision None is not one of ['yes', 'no', 'maybe']"),
        ([], "no questions"),
    ],
)  # fmt: skip
def test_read_samples_names_the_line_and_field(tmp_path, lines, message):
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(StageError) as error:
        stage.read_samples(path)
    assert str(error.value) == f"{path}: {message}"


def test_read_samples_reads_every_line_and_names_a_missing_file(tmp_path):
    path = tmp_path / "samples.jsonl"
    with pytest.raises(StageError) as error:
        stage.read_samples(path)
    assert str(error.value) == f"{path}: file not found; run the evaluate stage first (dvc repro)"
    rows = samples([("yes", "no"), ("maybe", "maybe")], [0.5, 0.25])
    write_samples(tmp_path, "base", rows)
    assert stage.read_samples(tmp_path / samples_file("base")) == rows


def test_pairing_is_by_pmid_and_refuses_other_questions_or_labels():
    base = samples([("yes", "yes"), ("no", "yes"), ("maybe", "no")])
    tuned = [base[2], base[0], {**base[1], "predicted_decision": "no", "correct": True}]
    paired_base, aligned = stage.pair_samples(base, tuned)
    assert paired_base == base
    assert [s["pmid"] for s in aligned] == ["100", "101", "102"]
    assert aligned[1]["correct"] is True
    same = "eval/base/samples.jsonl and eval/finetuned/samples.jsonl do not hold the same "
    for other in (tuned[:2], [*tuned, tuned[0]], [*tuned[:2], {**tuned[2], "pmid": "9"}]):
        with pytest.raises(StageError) as error:
            stage.pair_samples(base, other)
        assert str(error.value) == same + "questions; rerun both evaluations (dvc repro)"
    with pytest.raises(StageError) as error:
        stage.pair_samples(base, [tuned[0], tuned[1], {**tuned[2], "gold_decision": "yes"}])
    assert str(error.value) == "pmid 101: gold_decision differs between the two samples"


def test_figures_are_rounded_to_six_places_and_answer_scores_compared_where_both_have_them():
    assert stage.figure(0.1234564, 0.2000007, {"low": -0.00000049, "high": 1 / 3}) == {
        "base": 0.123456, "tuned": 0.200001, "diff": 0.076544, "low": -0.0, "high": 0.333333,
    }  # fmt: skip
    gold = [LABELS[i % 3] for i in range(12)]
    base = samples([(g, g) for g in gold], [0.2] * 12)
    tuned = samples([(g, g) for g in gold], [0.5] * 12)
    for rows in (base, tuned):
        rows[0]["generated_answer"] = None  # not generated: left out of the answer scores
        rows[0]["rouge1"] = 100.0
    base[1]["generated_answer"] = None
    for row in tuned:
        row["meteor_no_synonyms"] = 0.7
    result = stage.compare(base, tuned, 200, 0)
    assert result["n_generated"] == 10
    assert result["rouge1"] == {"base": 0.2, "tuned": 0.5, "diff": 0.3, "low": 0.3, "high": 0.3}
    assert {"rougeL", "meteor"} <= result.keys() and "meteor_no_synonyms" not in result
    assert result["macro_f1"] == {"base": 1.0, "tuned": 1.0, "diff": 0.0, "low": 0.0, "high": 0.0}
    assert stage.method(200, 0, result["n_test"]) == (
        "intervals: paired 95% percentile bootstrap (scipy.stats.bootstrap) over the 12 test "
        "questions, 200 resamples, seed 0"
    )
    assert stage.compare(base, tuned, 200, 0) == result  # the seed decides the resamples
    varied = samples(
        [(g, g if i % 2 else "yes") for i, g in enumerate(gold)], [0.1 * i for i in range(12)]
    )
    again = [stage.compare(base, varied, 200, 0) for _ in range(2)]
    assert again[0] == again[1] and again[0]["accuracy"]["low"] < again[0]["accuracy"]["high"]
    assert again[0]["macro_f1"]["low"] < again[0]["macro_f1"]["high"]
    none = stage.compare(samples([("yes", "yes")] * 3), samples([("yes", "no")] * 3), 200, 0)
    assert none["n_generated"] == 0 and "rouge1" not in none
    assert none["accuracy"] == {"base": 1.0, "tuned": 0.0, "diff": -1.0, "low": -1.0, "high": -1.0}


def test_the_sentence_in_full():
    result = {
        "n_test": 500,
        "accuracy": {"diff": -0.0244, "low": -0.07601, "high": 0.0304},
        "mcnemar": {"fixed": 83, "broken": 95, "p": 0.40969},
    }
    assert stage.sentence(result) == (
        "fine-tuning changed accuracy by -2.4 points (95% CI -7.6 to +3.0; McNemar exact "
        "p = 0.41; 83 questions fixed, 95 broken; 500 test questions)"
    )


def test_mcnemar_refuses_answers_of_different_questions():
    with pytest.raises(ValueError) as error:
        statistics.mcnemar_exact([True, False], [True])
    assert str(error.value) == "2 base but 1 tuned answers"


def test_one_generated_answer_is_compared_alone():
    base = samples([("yes", "yes"), ("no", "yes")], [0.2, 0.3])
    tuned = samples([("yes", "yes"), ("no", "no")], [0.6, 0.9])
    base[1]["generated_answer"] = None
    result = stage.compare(base, tuned, 200, 0)
    assert result["n_generated"] == 1
    assert result["rouge1"] == {"base": 0.2, "tuned": 0.6, "diff": 0.4, "low": 0.4, "high": 0.4}


def test_constant_scores_give_the_rounded_point_as_their_interval():
    """Nothing varies (every question scores 1/3): no bootstrap, the point rounded to six
    places, for one question as for five."""
    for n in (1, 5):
        assert statistics.mean_interval([1 / 3] * n, 100, 0) == {"low": 0.333333, "high": 0.333333}
    varying = statistics.mean_interval([0.0, 1 / 3, 1 / 3, 1 / 3], 100, 0)
    assert varying["low"] < varying["high"]
