"""One task of a sweep (`pubmedqa_gpt2/slurm/task.py`), run in this process against a stand-in
`dvc` that logs its arguments: the commands in order, the result file, every failure's line.
The real thing, on a real cluster: tests/test_cluster.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pubmedqa_gpt2.slurm import task
from pubmedqa_gpt2.training.stop import STOP_FILE_ENV, STOPPED_EXIT

# Logs each call; FAIL="<args prefix>|<message>|<status>" makes the matching call fail with
# that output; `exp run` records the experiment as git does (refs/exps/.../NAME).
FAKE_DVC = """#!/bin/bash
echo "$*" >> "$DVC_LOG"
if [ -n "${FAIL:-}" ]; then
    IFS='|' read -r prefix message status <<< "$FAIL"
    case "$*" in "$prefix"*) echo "some progress"; echo "$message"; exit "$status";; esac
fi
if [ "$1 $2" = "exp run" ]; then
    git update-ref "refs/exps/ab/cdef/$4" HEAD
    mkdir -p metrics && echo '{"accuracy": 0.625}' > metrics/eval_finetuned.json
fi
echo "dvc $1 ok"
"""


@pytest.fixture
def clone(tmp_path, monkeypatch):
    """A task's clone (a git repository with one commit) as the current directory, the sweep
    folder beside it, and the stand-in `dvc` first on PATH."""
    bin_dir, repo = tmp_path / "bin", tmp_path / "tasks" / "0"
    bin_dir.mkdir()
    (bin_dir / "dvc").write_text(FAKE_DVC)
    (bin_dir / "dvc").chmod(0o755)
    repo.mkdir(parents=True)
    for command in (["init", "--quiet"], ["commit", "--quiet", "--allow-empty", "-m", "x"]):
        subprocess.run(["git", *command], cwd=repo, check=True, capture_output=True)
    monkeypatch.chdir(repo)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DVC_LOG", str(tmp_path / "dvc.log"))
    monkeypatch.delenv("FAIL", raising=False)
    monkeypatch.setenv(STOP_FILE_ENV, str(tmp_path / "tasks" / "0.stop"))
    return tmp_path


MANIFEST = {
    "cache": "/shared/dvc-cache",
    "experiments": [
        {"name": "sw-0", "set": ["train.seed=0", "train.learning_rate=1e-3"]},
        {"name": "sw-1", "set": ["train.seed=1"]},
    ],
}


def manifest(folder: Path) -> dict:
    return {**MANIFEST, "folder": str(folder)}


def calls(folder: Path) -> list[str]:
    return (folder / "dvc.log").read_text().splitlines()


def result(folder: Path, index: int) -> dict:
    return json.loads((folder / "results" / f"{index}.json").read_text())


def test_a_task_runs_its_experiment_in_the_shared_cache_pushes_it_and_says_so(clone, capsys):
    assert task.run_task(manifest(clone), 0) == 0
    assert calls(clone) == [
        "cache dir --local /shared/dvc-cache",
        "config --local cache.shared group",
        "checkout --quiet",
        "exp run --name sw-0 -S train.seed=0 -S train.learning_rate=1e-3",
        "exp push --no-cache origin sw-0",
    ]
    assert result(clone, 0) == {"experiment": "sw-0", "state": "done", "accuracy": 0.625}
    assert list((clone / "results").iterdir()) == [clone / "results" / "0.json"]
    out = capsys.readouterr().out
    assert "$ dvc exp run --name sw-0 -S train.seed=0" in out  # the log shows each command
    assert "dvc exp ok" in out  # and its output
    assert out.rstrip().endswith("sw-0: done, accuracy 0.6250, pushed")


def test_a_requeued_task_whose_experiment_ran_only_pushes_it(clone):
    assert task.run_task(manifest(clone), 1) == 0
    (clone / "dvc.log").unlink()
    assert task.experiment_names() == {"sw-1"}
    assert task.run_task(manifest(clone), 1) == 0
    assert [c for c in calls(clone) if c.startswith("exp ")] == ["exp push --no-cache origin sw-1"]


@pytest.mark.parametrize(
    ("fail", "error"),
    [
        ("exp run|error: params.yaml: train.epochs: bad|1", "params.yaml: train.epochs: bad"),
        ("exp run|ERROR: failed to reproduce 'train'|255", "failed to reproduce 'train'"),
        ("exp run|Killed|137", "exit status 137"),
        ("exp push|ERROR: no remote origin|1", "dvc exp push: no remote origin"),
        ("cache dir|ERROR: not a dvc repository|1", "not a dvc repository"),
        ("config|ERROR: config locked|1", "config locked"),
        ("cache dir|Killed|3", "exit status 3"),  # no error line: the status
        ("exp push|Killed|4", "dvc exp push: exit status 4"),
    ],
)
def test_a_failure_is_one_error_line_in_the_log_and_the_result(
    clone, monkeypatch, capsys, fail, error
):
    monkeypatch.setenv("FAIL", fail)
    assert task.run_task(manifest(clone), 0) == 1
    assert result(clone, 0) == {"experiment": "sw-0", "state": "failed", "error": error}
    assert capsys.readouterr().err == f"error: sw-0: {error}\n"
    ran = calls(clone)
    assert ran[-1].startswith(fail.split("|")[0])  # nothing after the failing command


def test_a_run_stopped_on_request_exits_for_requeue_and_writes_no_result(clone, monkeypatch):
    monkeypatch.setenv("FAIL", "exp run|stopped on request at step 3|75")
    Path(os.environ[STOP_FILE_ENV]).touch()
    assert task.run_task(manifest(clone), 0) == STOPPED_EXIT
    assert not (clone / "results").exists()
    assert not any(c.startswith("exp push") for c in calls(clone))


def test_a_failure_without_a_stop_request_is_a_failure_even_with_status_75(clone, monkeypatch):
    monkeypatch.setenv("FAIL", "exp run|error: something|75")
    assert task.run_task(manifest(clone), 0) == 1
    assert result(clone, 0)["error"] == "something"


def test_the_error_line_is_the_last_stage_error_else_dvc_s_else_the_status():
    output = ["ERROR: dvc says", "error: first", "  error: second  ", "tail"]
    assert task.error_line(output, 1) == "second"
    assert task.error_line(["x", "ERROR: a", "ERROR: b: c"], 2) == "b: c"
    assert task.error_line(["nothing useful"], 9) == "exit status 9"
    assert task.error_line(["error:tight"], 1) == "tight"


def test_main_reads_the_sweep_file_and_exits_with_the_task_s_status(clone, monkeypatch):
    sweep = clone / "sweep.json"
    sweep.write_text(json.dumps(manifest(clone)))
    monkeypatch.setenv("FAIL", "exp push|ERROR: rejected|1")
    with pytest.raises(SystemExit) as exit_info:
        task.main([str(sweep), "1"])
    assert exit_info.value.code == 1
    assert result(clone, 1)["error"] == "dvc exp push: rejected"
    monkeypatch.delenv("FAIL")
    with pytest.raises(SystemExit) as exit_info:
        task.main([str(sweep), "0"])
    assert exit_info.value.code == 0


def test_the_result_file_is_replaced_whole(clone):
    task.write_result(clone, 3, {"state": "running"})
    task.write_result(clone, 3, {"state": "done"})
    assert result(clone, 3) == {"state": "done"}
    assert sorted(p.name for p in (clone / "results").iterdir()) == ["3.json"]
    assert (clone / "results" / "3.json").read_text().endswith("}\n")


def test_the_result_file_is_one_key_a_line_in_a_folder_made_for_it(clone):
    """The sweep's folder not made yet: the task makes it, parents and all; the result is
    `json.dumps(..., indent=1)`, by hand: one key a line, indented by one space."""
    folder = clone / "shared" / "sweeps" / "sw"
    assert task.run_task(manifest(folder), 0) == 0
    assert (folder / "results" / "0.json").read_text() == (
        '{\n "experiment": "sw-0",\n "state": "done",\n "accuracy": 0.625\n}\n'
    )
    assert sorted(p.name for p in (folder / "results").iterdir()) == ["0.json"]


def test_run_logs_the_command_and_its_merged_output_and_keeps_its_last_400_lines(tmp_path, capsys):
    """A command that prints 500 lines, then a line on stderr, then bytes that are not UTF-8,
    and exits 3: the log has `$ COMMAND` and all 502 lines, stderr in its place; the tail is
    the last 400 (lines 102..499, then the two others), the bad byte replaced by U+FFFD."""
    script = tmp_path / "noisy.py"
    script.write_text(
        "import sys\n"
        "for i in range(500):\n"
        "    print(i)\n"
        "sys.stdout.flush()\n"
        "sys.stderr.write('error: on stderr\\n')\n"
        "sys.stderr.flush()\n"
        "sys.stdout.buffer.write(b'bad \\xff byte\\n')\n"
        "sys.exit(3)\n"
    )
    code, tail = task.run([sys.executable, str(script)])
    lines = [f"{i}\n" for i in range(500)] + ["error: on stderr\n", "bad \ufffd byte\n"]
    assert code == 3
    assert tail == lines[102:] and len(tail) == 400
    assert capsys.readouterr().out == f"$ {sys.executable} {script}\n" + "".join(lines)


def test_the_command_line_reaches_the_log_before_the_command_runs(tmp_path, monkeypatch):
    """SLURM's log is a file, which Python buffers: `$ COMMAND` is flushed before the command
    starts, so a command that reads the log finds that line there (and nothing else yet)."""
    log = tmp_path / "task.log"
    command = [sys.executable, "-c", f"print(open({str(log)!r}).read(), end='')"]
    header = f"$ {' '.join(command)}\n"
    with log.open("w") as f, monkeypatch.context() as patch:  # block-buffered, as in a job
        patch.setattr(sys, "stdout", f)
        code, tail = task.run(command)
    assert (code, tail) == (0, [header])
    assert log.read_text() == header + header  # the line, then the command's echo of it


@pytest.mark.parametrize(
    ("fail", "stream", "line"),
    [
        ("", "stdout", "sw-0: done, accuracy 0.6250, pushed\n"),
        ("exp push|ERROR: rejected|1", "stderr", "error: sw-0: dvc exp push: rejected\n"),
        ("exp run|stopped on request at step 3|75", "stdout",
         "sw-0: stopped on request, to be requeued\n"),
    ],
)  # fmt: skip
def test_the_task_s_last_line_is_in_its_log_when_it_returns(clone, monkeypatch, fail, stream, line):
    """The log files SLURM writes are block-buffered here, and a task killed by a signal right
    after (its time limit, a requeue) flushes nothing: the line saying how it ended is in the
    file, last, as soon as `run_task` returns, before any flush or close."""
    monkeypatch.setenv("FAIL", fail)
    Path(os.environ[STOP_FILE_ENV]).touch()  # only a failing `exp run` reads it
    out, err = clone / "task.out", clone / "task.err"
    with out.open("w") as f_out, err.open("w") as f_err, monkeypatch.context() as patch:
        patch.setattr(sys, "stdout", f_out)
        patch.setattr(sys, "stderr", f_err)
        task.run_task(manifest(clone), 0)
        logged = {"stdout": out.read_text(), "stderr": err.read_text()}
    assert logged[stream].endswith(line)


def test_experiment_names_are_read_from_the_repository_asked(tmp_path, monkeypatch):
    """The last part of each `refs/exps/...` ref of the repository given, wherever the process
    runs; a folder that is not a repository is an error, not "no experiment"."""
    repo = tmp_path / "repo"
    repo.mkdir()
    who = {f"GIT_{role}_{key}": value for role in ("AUTHOR", "COMMITTER")
           for key, value in (("NAME", "t"), ("EMAIL", "t@t"))}  # fmt: skip
    env = {**os.environ, **who}
    for args in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "c"]):
        subprocess.run(["git", *args], cwd=repo, check=True, env=env)
    for ref in ("refs/exps/ab/cdef0123/sw-0", "refs/exps/ab/cdef0123/sw-1", "refs/heads/x"):
        subprocess.run(["git", "update-ref", ref, "HEAD"], cwd=repo, check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert task.experiment_names(repo) == {"sw-0", "sw-1"}
    with pytest.raises(subprocess.CalledProcessError):
        task.experiment_names(elsewhere)
