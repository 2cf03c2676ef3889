"""The training callbacks as a run uses them (`pubmedqa_gpt2/training/callbacks.py`), in this
process: the console's named progress bars and the dvclive folder, finished and written as
dvclive's own (no DVC experiment, no dvc.yaml)."""

from __future__ import annotations

import json
import re
import subprocess

from stages import train as stage

from .test_train import set_params, tiny, workdir  # noqa: F401 (fixtures)


def test_the_console_shows_named_bars_with_the_last_figures(workdir, tiny, capsys):  # noqa: F811
    set_params(workdir, tiny(epochs=1))
    stage.main()
    err = capsys.readouterr().err
    assert "train: 100%" in err and "loss=" in err and "dev_acc=" in err
    # the dev evaluation's bar, by name, counting the dev batches (6 examples, batch 4: 2)
    assert re.search(r"(^|[\r\n])dev loss: +\d+%\|[^\r\n]*\| \d/2 ", err), err[-2000:]
    assert re.search(r"(^|[\r\n])dev accuracy: +\d+%\|", err), err[-2000:]
    assert "{'loss'" not in err  # the Trainer's own dict lines are not printed


def test_counters_and_timings_are_no_curves():
    from pubmedqa_gpt2.training.callbacks import curve_wanted

    for key in ("step", "epoch", "total_flos", "num_input_tokens_seen", "train_loss",
                "eval_runtime", "eval_samples_per_second", "train_steps_per_second"):  # fmt: skip
        assert not curve_wanted(key), key
    for key in ("loss", "grad_norm", "learning_rate", "eval_loss", "eval_accuracy"):
        assert curve_wanted(key), key


def test_the_curves_folder_is_dvclive_s_finished_and_no_experiment(workdir, tiny):  # noqa: F811
    """Inside a DVC repository (as `python -m stages.train` by hand would be), training saves
    no DVC experiment and writes no dvc.yaml; dvclive's summary is written at the end."""
    for command in (
        ["git", "init", "--quiet"],
        ["dvc", "init", "--quiet"],
        ["git", "commit", "--quiet", "-m", "start"],
    ):
        subprocess.run(command, cwd=workdir, check=True, capture_output=True)
    set_params(workdir, tiny(epochs=1))
    stage.main()
    refs = subprocess.run(
        ["git", "for-each-ref", "refs/exps"], cwd=workdir, capture_output=True, text=True
    ).stdout
    assert refs == "" and not (workdir / "dvc.yaml").exists()
    summary = json.loads((workdir / "dvclive" / "metrics.json").read_text())
    assert summary["step"] == 3  # 12 examples, batch 4, one epoch
