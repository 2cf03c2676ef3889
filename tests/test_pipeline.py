"""The pipeline through real git and real dvc, in temporary clones of this repository: a fresh
clone against the committed lock and the official data, the README's quickstart run from nothing
(every output, then nothing to rerun), what a param change reruns or refuses, a killed training
resumed, and the CLI on the model it made.

These tests run `dvc` as a user would, offline: the official data comes from PUBMEDQA_DIR,
and the model is the smoke configuration (a 2-layer random GPT-2 with the real tokenizer).
Their helpers are in `tests/e2e.py`, the shared runs (`source`, `smoke`) in `tests/conftest.py`;
experiments are tested in `test_experiments.py`, remotes in `test_remotes.py`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from . import e2e
from .conftest import ROOT, TOKENIZER_DIR, needs_pubmedqa, needs_tokenizer, write_synthetic_pqa_a
from .e2e import (
    AFTER_TRAIN,
    ALL_STAGES,
    OFFLINE,
    SET_PARAM,
    clone,
    copy_of,
    metrics_of,
    output_bytes,
    ran_stages,
    read_json,
    read_json_text,
    seed_hub_cache,
    set_params,
    sh,
)

pytestmark = [needs_pubmedqa, needs_tokenizer, pytest.mark.e2e]


# ---- A fresh clone: the committed lock, the official data, offline ----


def test_fresh_clone_reproduces_the_committed_lock(source, tmp_path, tokenizer_dir):
    """dvc.lock on main is what download/ingest/prepare really produce from the committed params."""
    repo = clone(source, tmp_path / "repo")
    env = seed_hub_cache(tmp_path / "hub", tokenizer_dir)
    first = sh(["dvc", "repro", "prepare"], cwd=repo, env=env)
    # download verifies the local copy (persisted, so not deleted) instead of downloading.
    assert ran_stages(first) == ["download", "ingest", "prepare"]
    assert "local copy, md5 05b2b70949907e260d2aa82bc5d20c6f verified" in first
    assert sh(["git", "status", "--porcelain"], cwd=repo) == "", "dvc.lock or metrics changed"
    assert "up to date" in sh(["dvc", "status", "prepare"], cwd=repo, env=env)
    assert ran_stages(sh(["dvc", "repro", "prepare"], cwd=repo, env=env)) == []


def test_a_changed_official_file_is_an_error(source, tmp_path):
    repo = clone(source, tmp_path / "repo")
    with (repo / "data/external/ori_pqal.json").open("a") as f:
        f.write(" ")
    out = sh(["dvc", "repro", "download"], cwd=repo, check=False)
    assert "not the official ori_pqal.json" in out


def test_offline_without_the_local_copy_fails_at_once_pointing_to_make_offline_data(
    source, tmp_path
):
    """`dvc repro` offline (HF_HUB_OFFLINE=1) in a fresh clone without `make offline-data`:
    it fails within seconds with one line naming `make offline-data` and HF_HUB_OFFLINE,
    without trying the network (here an address that never answers)."""
    repo = tmp_path / "repo"
    sh(["git", "clone", "--quiet", str(source), str(repo)], cwd=tmp_path)
    sh([sys.executable, "-c", SET_PARAM, "data.url", "http://10.255.255.1/ori_pqal.json"], cwd=repo)
    started = time.monotonic()
    output = sh(["dvc", "repro"], cwd=repo, check=False)
    elapsed = time.monotonic() - started
    print(f"{elapsed:.1f} s:", output)  # quoted in the issue note (pytest -s)
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert "no local copy, and HF_HUB_OFFLINE is set" in errors[0]
    assert "make offline-data" in errors[0]
    assert "Traceback" not in output and elapsed < 30, (elapsed, output)


# ---- The smoke run (the README's quickstart): its outputs, what a change reruns ----


def test_repro_from_nothing_produces_every_output_then_runs_nothing(smoke, pubmedqa_dir, tmp_path):
    output = smoke[1]
    repo = copy_of(smoke[0], tmp_path / "repo")  # byte for byte; dvc runs here, not in smoke
    assert sorted(ran_stages(output)) == sorted(ALL_STAGES)
    # A quiet console: the Trainer's figures in its bar, not as dict lines; the dev
    # evaluation's bars; neither known-harmless transformers warning.
    assert "{'loss'" not in output and "{'eval_loss'" not in output
    assert "dev accuracy: " in output and "loss=" in output
    assert "missing keys" not in output and "loss_type" not in output
    # No warning of any kind: none of a valid run's messages calls for an action.
    noise = [line for line in output.splitlines()
             if re.search(r"warn|deprecat|token indices|will be removed", line, re.I)]  # fmt: skip
    assert noise == [], noise
    # The closing hint names every file the run changed that git keeps (the smoke fixture
    # committed exactly those), and DVC's own hint, which named dvc.lock alone, is gone.
    assert "To track the changes with git" not in output
    (add,) = [line.strip() for line in output.splitlines() if line.strip().startswith("git add")]
    named = add.removeprefix("git add ").split()
    changed = sh(["git", "diff", "--name-only", "HEAD~1", "HEAD"], cwd=repo).split()
    assert "dvc.lock" in changed and "metrics/compare.json" in changed
    for path in changed:
        assert any(path == n or path.startswith(n + "/") for n in named), (path, add)
    for path in (
        "models/finetuned/model.safetensors",
        "models/finetuned/README.md",
        "dvclive/plots/metrics/eval/loss.tsv",
        "metrics/data.json",
        "metrics/train.json",
        "metrics/eval_base.json",
        "metrics/eval_finetuned.json",
    ):
        assert (repo / path).is_file(), path
    truth = read_json(pubmedqa_dir / "test_ground_truth.json")
    for model in ("base", "finetuned"):
        predictions = read_json(repo / f"eval/{model}/predictions.json")
        assert set(predictions) == set(truth)
        assert set(predictions.values()) <= {"yes", "no", "maybe"}
        # The metrics file agrees with the predictions scored against the official labels.
        from pubmedqa_gpt2.evaluation.metrics import decision_metrics

        recomputed = decision_metrics([truth[p] for p in truth], [predictions[p] for p in truth])
        metrics = read_json(repo / f"metrics/eval_{model}.json")
        assert metrics["accuracy"] == pytest.approx(recomputed["accuracy"])
        assert metrics["macro_f1"] == pytest.approx(recomputed["macro_f1"])
    # The fine-tuned model loads as a plain transformers model.
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(repo / "models/finetuned").config.n_layer == 2
    # Dev loss falls across the epochs of the smoke run.
    dev_loss = [
        float(line.split("\t")[-1])
        for line in (repo / "dvclive/plots/metrics/eval/loss.tsv").read_text().splitlines()[1:]
    ]
    assert len(dev_loss) == 2 and dev_loss[-1] < dev_loss[0]  # smoke.yaml: 2 epochs
    assert ran_stages(sh(["dvc", "repro"], cwd=repo)) == []
    assert "up to date" in sh(["dvc", "status"], cwd=repo)
    # `dvc plots show` renders both confusion matrices and the training curves, titled in words.
    shown = sh(["dvc", "plots", "show", "-o", str(repo.parent / "plots")], cwd=repo)
    assert "failed to load" not in shown
    page = (repo.parent / "plots/index.html").read_text()
    for plot, title in (
        ("eval_base_confusion_json", "Confusion matrix, base"),
        ("eval_finetuned_confusion_json", "Confusion matrix, fine-tuned"),
        ("dvclive_plots_metrics_train_loss_tsv", "Training loss"),
        ("dvclive_plots_metrics_eval_loss_tsv", "Dev loss"),
        ("dvclive_plots_metrics_eval_accuracy_tsv", "Dev accuracy"),
        ("eval_compare_intervals_json", "Fine-tuned against base on the test set"),
        ("eval_base_calibration_json", "Calibration, base ("),
        ("eval_finetuned_calibration_json", "Calibration, fine-tuned ("),
    ):
        assert f'<div id = "{plot}"' in page, plot
        assert title in page, title
    # The forest plot's rows: each model's interval is the one its metrics file holds, the
    # difference's the comparison's (three stages' files that must agree).
    rows = {(r["metric"], r["series"]): r for r in read_json(repo / "eval/compare_intervals.json")}
    compare = read_json(repo / "metrics/compare.json")
    for metric, key in (("accuracy", "accuracy"), ("macro-F1", "macro_f1"), ("METEOR", "meteor"),
                        ("ROUGE-L", "rougeL")):  # fmt: skip
        for series, model in (("base", "base"), ("fine-tuned", "finetuned")):
            interval = read_json(repo / f"metrics/eval_{model}.json")["ci95"][key]
            row = rows[metric, series]
            expected = (interval["low"], interval["high"])
            assert (row["low"], row["high"]) == pytest.approx(expected, abs=1e-6)  # 6 places
        difference = rows[metric, "difference"]
        assert [difference[k] for k in ("value", "low", "high")] == [
            compare[key][k] for k in ("diff", "low", "high")
        ]
    # Calibration: each model's ECE within its interval's reach and its bins over all 500.
    for model in ("base", "finetuned"):
        metrics = read_json(repo / f"metrics/eval_{model}.json")
        assert 0 <= metrics["ci95"]["ece"]["low"] <= metrics["ci95"]["ece"]["high"] <= 1
        assert 0 <= metrics["ece"] <= 1
        bins = read_json(repo / f"eval/{model}/calibration.json")
        assert sum(b["count"] for b in bins) == metrics["n_test"] == 500


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ("train.learning_rate=abc", "train.learning_rate"),
        ("train.epochs=-1", "train.epochs"),
        ("+train.lerning_rate=1e-5", "train.lerning_rate"),
    ],
)
def test_a_bad_param_is_refused_before_any_output_is_deleted(smoke, tmp_path, change, key):
    """`dvc exp run -S` with a wrong type, an out-of-range value or an unknown key: the
    `validate` stage, first, fails with one `error:` line, and every output of the finished
    run (model, curves, metrics, evaluations) is byte-identical afterwards."""
    repo = copy_of(smoke[0], tmp_path / "repo")
    before = output_bytes(repo)
    assert "models/finetuned/model.safetensors" in before and "metrics/train.json" in before
    proc = subprocess.run(
        ["dvc", "exp", "run", "-S", change],
        cwd=repo, env=os.environ | OFFLINE, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    print(output)  # the report shows it with pytest -s
    assert proc.returncode != 0, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and key in errors[0], output
    assert "Traceback" not in output
    assert ran_stages(output) == ["validate"]
    assert output_bytes(repo) == before
    # The model still answers.
    sh(["pubmedqa-gpt2", "ask", "--model", "models/finetuned", "--pmid", "12377809"], cwd=repo)


def test_two_phases_rerun_what_their_params_touch(smoke, tmp_path, pubmedqa_dir):
    """Phase 1 on a synthetic PQA-A in the hub's schema (PQA-L records under new PMIDs, 3 of
    them keeping a PQA-L PMID), then: a phase-2 param reruns train and what follows but not
    phase 1; a phase-1 param reruns both phases."""
    repo = copy_of(smoke[0], tmp_path / "repo")
    official = read_json(pubmedqa_dir / "ori_pqal.json")
    write_synthetic_pqa_a(repo / "data/external/pqa_artificial.parquet", official, 64, shared=3)
    set_params(
        repo,
        **{
            "data.artificial": True,
            "data.artificial_parquet": "data/external/pqa_artificial.parquet",
            "pretrain.enabled": True,
            "pretrain.max_samples": 40,
            "pretrain.learning_rate": 1e-3,
        },
    )
    on = ran_stages(sh(["dvc", "repro"], cwd=repo))
    # PQA-L's splits and the base model are unchanged: evaluate@base stays cached.
    assert sorted(on) == sorted(["ingest", "prepare", "pretrain", *AFTER_TRAIN])
    data = read_json(repo / "metrics/data.json")
    assert data["artificial"]["dropped_shared_pmid"] == 3
    assert data["artificial"]["examples"] == 61
    phase1 = read_json(repo / "metrics/pretrain.json")
    assert phase1["train_examples"] == 40 and phase1["dev_examples"] == 50
    assert "started from `models/phase1`" in (repo / "models/finetuned/README.md").read_text()

    set_params(repo, **{"train.learning_rate": 5e-4})
    assert sorted(ran_stages(sh(["dvc", "repro"], cwd=repo))) == AFTER_TRAIN
    set_params(repo, **{"pretrain.learning_rate": 5e-4})
    assert sorted(ran_stages(sh(["dvc", "repro"], cwd=repo))) == sorted(["pretrain", *AFTER_TRAIN])
    assert ran_stages(sh(["dvc", "repro"], cwd=repo)) == []


def test_two_smoke_runs_from_scratch_give_identical_metrics(smoke, source, tmp_path):
    """`make smoke DIR=...` and the README's quickstart (the `smoke` fixture): the same
    params, the same metrics."""
    second = tmp_path / "second"
    sh(["make", "smoke", f"DIR={second}"], cwd=source)
    assert (second / "params.yaml").read_text() == (smoke[0] / "params.yaml").read_text()
    assert metrics_of(second) == metrics_of(smoke[0])
    assert set(metrics_of(second)) == {
        "data.json",
        "pretrain.json",  # {"enabled": false}: phase 1 is off in the smoke run
        "train.json",
        "eval_base.json",
        "eval_finetuned.json",
        "compare.json",
    }


def test_smoke_params_in_place_is_the_edit_make_smoke_makes(smoke, source, tmp_path):
    repo = clone(source, tmp_path / "repo")
    before = (repo / "params.yaml").read_text()
    sh(["make", "smoke-params"], cwd=repo)
    after = (repo / "params.yaml").read_text()
    assert after == (smoke[0] / "params.yaml").read_text()
    assert after != before and "# pretrained | random" in after  # comments are kept
    from pubmedqa_gpt2.core.config import load_params

    params = load_params(repo / "params.yaml")
    assert params.model.init == "random" and params.model.tokenizer == str(TOKENIZER_DIR)
    assert params.model.overrides == {"n_layer": 2, "n_embd": 64, "n_head": 2}


def test_killed_training_resumes_from_its_last_checkpoint(smoke, tmp_path):
    """`kill -9` in the middle of `dvc repro train`; the next `dvc repro` resumes."""
    repo = copy_of(smoke[0], tmp_path / "repo")
    # A successful run deletes its checkpoints (train.keep_checkpoints: false); none are left.
    assert not (repo / "models/checkpoints").exists()
    sh([sys.executable, "-c", SET_PARAM, "train.save_steps", "2"], cwd=repo)
    sh([sys.executable, "-c", SET_PARAM, "train.resumable_checkpoints", "true"], cwd=repo)
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(
        ["dvc", "repro", "train"],
        cwd=repo,
        env=os.environ | OFFLINE,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    state = repo / "models/checkpoints/checkpoint-4/trainer_state.json"
    deadline = time.monotonic() + 600
    while not state.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    output = sh(["dvc", "repro", "train"], cwd=repo)
    resumed = re.search(r"resuming from models/checkpoints/checkpoint-(\d+)", output)
    assert resumed, output[-3000:]
    # smoke.yaml: 40 examples, batch 8, 2 epochs = 10 steps, whether killed or not; the
    # resumed run trains only those after its checkpoint (at least 4: checkpoint-4 existed).
    metrics = read_json(repo / "metrics/train.json")
    start = int(resumed.group(1))
    assert start >= 4 and metrics["steps"] == 10
    perf = read_json(repo / "perf/train.json")
    assert perf["resumed_from_step"] == start and perf["steps_this_run"] == 10 - start


def test_cli_answers_a_test_question_with_the_finetuned_model(smoke):
    repo = smoke[0]
    pmid = "12377809"  # the first question of the official test set
    answer = read_json_text(
        sh(
            ["pubmedqa-gpt2", "ask", "--model", "models/finetuned", "--pmid", pmid, "--json"],
            cwd=repo,
        )
    )
    assert answer["decision"] in ("yes", "no", "maybe")
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    stage = read_json(repo / "eval/finetuned/probabilities.json")[pmid]
    assert answer["probabilities"] == pytest.approx(stage, abs=1e-5)
    text = sh(
        [
            "pubmedqa-gpt2",
            "ask",
            "--model",
            "models/finetuned",
            "--question",
            "Does aspirin reduce fever?",
            "--context",
            "Aspirin was given.",
        ],
        cwd=repo,
    )
    assert "\nDecision: " in text and "(yes " in text


# ---- The repository the e2e tests clone (the `source` fixture) ----


def snapshot_working_tree(dest: Path) -> Path:
    """`e2e.snapshot_working_tree` of this module's ROOT, the checkout that the test below
    replaces with a scratch one."""
    return e2e.snapshot_working_tree(dest, root=ROOT)


def test_the_e2e_tests_run_the_working_tree_uncommitted_changes_included(tmp_path, monkeypatch):
    """An edit not committed (here: a new file and a changed one in a scratch checkout) is in
    the repository the e2e tests clone; a file deleted from the working tree is not."""
    work = tmp_path / "work"
    sh(["git", "clone", "--quiet", str(ROOT), str(work)], cwd=tmp_path)
    (work / "stages/prepare.py").write_text((work / "stages/prepare.py").read_text() + "# edit\n")
    (work / "NEW_FILE.md").write_text("not committed\n")
    (work / "Makefile").unlink()
    monkeypatch.setattr(sys.modules[__name__], "ROOT", work)
    snapshot = snapshot_working_tree(tmp_path / "snapshot")
    assert (snapshot / "stages/prepare.py").read_text().endswith("# edit\n")
    assert (snapshot / "NEW_FILE.md").read_text() == "not committed\n"
    assert not (snapshot / "Makefile").exists()
    assert sh(["git", "status", "--porcelain"], cwd=snapshot) == ""
