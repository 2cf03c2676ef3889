"""`pubmedqa-gpt2 slurm status` in this process (`pubmedqa_gpt2/slurm/status.py`): a sweep
submitted with the `sbatch` stub, a stand-in `squeue`, result files, an experiment on the real
bare git remote and a `dvc exp pull` that logs its call. On a real cluster:
tests/test_cluster.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pubmedqa_gpt2 import cli
from pubmedqa_gpt2.slurm import status as slurm_status

from .e2e import git

SQUEUE = """#!/bin/bash
# squeue -h -r -j JOB -o "%i %T" (man squeue): no header, one line per array task still
# queued, JOBID_TASK and the state in full. Any other command line is refused: the real one
# refuses an unknown option, and answers something else to another known one.
[ $# = 6 ] && [ "$1 $2 $3 $5" = "-h -r -j -o" ] && [ "$6" = "%i %T" ] || {
  echo "squeue: invalid arguments: $*" >&2; exit 1; }
case $4 in
  99) printf '99_2 RUNNING\\n99_3 PENDING\\n99_4 COMPLETING\\n99_[5-6] PENDING\\n99 PENDING\\n' ;;
  97) printf '97_1_2 RUNNING\\n97_3 RUNNING\\n' ;;  # a task id is a number: 1_2 is none
  96) printf '96_1 RUNNING\\n'; exit 1 ;;  # a list cut short by an error
  *) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1 ;;
esac
"""


@pytest.fixture
def sweep(user_repo, submit, monkeypatch):
    """A submitted sweep of 5 experiments (job 99), the stand-ins on PATH; (repo, manifest)."""
    ws = user_repo.parent / "shared" / "ws"
    got = submit(user_repo, "-S", "train.seed=range(0,5)", "--workspaces", str(ws))
    assert got.returncode == 0, got.stderr
    (folder,) = ws.iterdir()
    bin_dir = user_repo.parent / "bin"
    (bin_dir / "squeue").write_text(SQUEUE)
    real_dvc = shutil.which("dvc")
    (bin_dir / "dvc").write_text(
        f'#!/bin/bash\nif [ "$1 $2" = "exp pull" ]; then\n'
        f'  echo "$* in $PWD" >> {bin_dir}/pulls.txt\n'
        f'  [ "${{PULL_FAILS:-}}" != silently ] || exit 1\n'
        f'  [ -z "${{PULL_FAILS:-}}" ] || {{ echo "ERROR: $PULL_FAILS" >&2; exit 1; }}\n'
        f"  exit 0\nfi\n"
        f'exec {real_dvc} "$@"\n'
    )
    for tool in ("squeue", "dvc"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return user_repo, json.loads((folder / "sweep.json").read_text())


def land(repo: Path, name: str) -> None:
    """Experiment `name` on the remote, as `dvc exp push` leaves it."""
    git("push", "--quiet", "cluster", f"HEAD:refs/exps/ab/cdef/{name}", cwd=repo)


def write_result(manifest: dict, index: int, result: dict) -> None:
    path = Path(manifest["folder"]) / "results" / f"{index}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result))


def status(monkeypatch, capsys, repo: Path, *args: str, cwd: Path | None = None):
    """`pubmedqa-gpt2 slurm status ARGS` run in `cwd` (default `repo`): (status, out, err)."""
    monkeypatch.chdir(cwd or repo)
    capsys.readouterr()
    code = 0
    try:
        cli.main(["slurm", "status", "--workspaces", str(repo.parent / "shared" / "ws"), *args])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_status_tells_each_experiment_s_state_and_pulls_the_finished_ones(
    sweep, monkeypatch, capsys
):
    repo, manifest = sweep
    names = [e["name"] for e in manifest["experiments"]]
    write_result(manifest, 0, {"experiment": names[0], "state": "done", "accuracy": 0.5})
    write_result(manifest, 1, {"experiment": names[1], "state": "failed", "error": "bad seed"})
    land(repo, names[0])
    land(repo, names[4])  # its result file lost, and SLURM still says COMPLETING: it landed
    (repo / "sub").mkdir()
    code, out, err = status(monkeypatch, capsys, repo, cwd=repo / "sub")  # anywhere in it
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"{manifest['sweep']}: job array 99, commit {manifest['commit'][:12]}"
    assert lines[2:9] == [
        "| experiment | params | state | accuracy / error |",
        "|---|---|---|---|",
        f"| {names[0]} | train.seed=0 | done | 0.5000 |",
        f"| {names[1]} | train.seed=1 | failed | bad seed |",
        f"| {names[2]} | train.seed=2 | running |  |",
        f"| {names[3]} | train.seed=3 | pending |  |",
        f"| {names[4]} | train.seed=4 | done |  |",
    ]
    assert lines[-1] == "1 pending, 1 running, 2 done, 1 failed"
    pulls = (repo.parent / "bin" / "pulls.txt").read_text()
    url = manifest["git_remote_url"]
    assert pulls == f"exp pull --no-cache {url} {names[0]} {names[4]} in {repo}\n"

    code, out, _ = status(monkeypatch, capsys, repo, "--json", "--sweep", manifest["sweep"])
    got = json.loads(out)
    assert (got["sweep"], got["job_id"]) == (manifest["sweep"], "99")
    assert [t["state"] for t in got["tasks"]] == ["done", "failed", "running", "pending", "done"]
    assert got["tasks"][0] == {
        "experiment": names[0], "set": ["train.seed=0"], "task": 0, "state": "done",
        "accuracy": 0.5,
    }  # fmt: skip


def test_experiments_already_here_are_not_pulled_again(sweep, monkeypatch, capsys):
    repo, manifest = sweep
    name = manifest["experiments"][0]["name"]
    write_result(manifest, 0, {"experiment": name, "state": "done", "accuracy": 0.5})
    git("update-ref", f"refs/exps/ab/cdef/{name}", "HEAD", cwd=repo)  # pulled before
    assert status(monkeypatch, capsys, repo)[0] == 0
    assert not (repo.parent / "bin" / "pulls.txt").exists()


def test_a_task_gone_without_a_result_shows_its_log_s_last_error(sweep, monkeypatch, capsys):
    repo, manifest = sweep
    logs = Path(manifest["folder"]) / "logs"
    logs.mkdir(exist_ok=True)
    (logs / "0.log").write_text("error: first\nstarting\nerror: task 0: cannot clone\nbye\n")
    (logs / "2.log").write_bytes(b"\xff\xfe not utf-8\nerror: sw-2: dvc says error: disk full\n")
    (logs / "3.log").write_text("task 3\nnothing went wrong here\n")
    # SLURM's own line when it kills a task at its time limit: what follows "error:"
    killed = "*** JOB 104 ON gpu01 CANCELLED AT 2024-05-01T10:00:00 DUE TO TIME LIMIT ***"
    (logs / "4.log").write_text(f"task 4\nslurmstepd: error: {killed}\n")
    rows = slurm_status.task_states(manifest | {"job_id": None})  # none of them queued
    assert (rows[0]["state"], rows[0]["error"]) == ("failed", "task 0: cannot clone")
    assert rows[1]["error"] == f"the task ended without a result; see {logs / '1.log'}"
    assert rows[2]["error"] == "sw-2: dvc says error: disk full"  # the first "error:" splits
    assert rows[3]["error"] == f"the task ended without a result; see {logs / '3.log'}"
    assert rows[4]["error"] == killed


def test_the_table_lists_every_override_and_a_count_per_state():
    manifest = {"sweep": "sw", "job_id": "7", "commit": "c" * 40}
    rows = [
        {"experiment": "sw-0", "set": ["train.seed=0", "train.epochs=1"], "state": "done",
         "accuracy": 0.61234},
        {"experiment": "sw-1", "set": ["train.seed=1", "train.epochs=1"], "state": "failed",
         "error": "boom"},
    ]  # fmt: skip
    assert slurm_status.status_table(manifest, rows).splitlines() == [
        "sw: job array 7, commit cccccccccccc",
        "",
        "| experiment | params | state | accuracy / error |",
        "|---|---|---|---|",
        "| sw-0 | train.seed=0 train.epochs=1 | done | 0.6123 |",
        "| sw-1 | train.seed=1 train.epochs=1 | failed | boom |",
        "",
        "0 pending, 0 running, 1 done, 1 failed",
    ]


@pytest.mark.parametrize(
    ("args", "pull_fails", "message"),
    [
        pytest.param(
            ["--sweep", "sweep-nope"],
            "remote hung up",
            "error: --sweep sweep-nope: no sweep.json in ",
            id="no-such-sweep",
        ),
        pytest.param(
            [],
            "remote hung up",
            "error: dvc exp pull cluster: ERROR: remote hung up",
            id="pull-fails",
        ),  # fmt: skip
        pytest.param(  # nothing on its stderr
            [], "silently", "error: dvc exp pull cluster: failed\n", id="pull-fails-silently"
        ),
    ],
)
def test_status_failures_are_one_line(sweep, monkeypatch, capsys, args, pull_fails, message):
    repo, manifest = sweep
    name = manifest["experiments"][0]["name"]
    write_result(manifest, 0, {"experiment": name, "state": "done", "accuracy": 0.5})
    monkeypatch.setenv("PULL_FAILS", pull_fails)
    code, _, err = status(monkeypatch, capsys, repo, *args)
    assert code == 1 and err.startswith(message) and len(err.strip().splitlines()) == 1, err


def test_the_last_sweep_of_this_repository_is_the_default(sweep, monkeypatch, capsys, tmp_path):
    repo, manifest = sweep
    ws = repo.parent / "shared" / "ws"
    other = json.loads(json.dumps(manifest)) | {"repository": "/elsewhere", "sweep": "zzz"}
    (ws / "zzz").mkdir()
    (ws / "zzz" / "sweep.json").write_text(json.dumps(other))  # another clone's, later
    older = manifest | {"sweep": "aaa"}
    (ws / "aaa").mkdir()
    (ws / "aaa" / "sweep.json").write_text(json.dumps(older))
    code, out, _ = status(monkeypatch, capsys, repo, "--json")
    assert json.loads(out)["sweep"] == manifest["sweep"]
    shutil.rmtree(Path(manifest["folder"]))
    shutil.rmtree(ws / "aaa")
    code, _, err = status(monkeypatch, capsys, repo)
    assert code == 1 and err == f"error: no sweep of this repository in {ws}\n"


def test_the_queue_is_read_per_array_task(sweep):
    assert slurm_status.queued_tasks("99") == {2: "RUNNING", 3: "PENDING", 4: "COMPLETING"}
    assert slurm_status.queued_tasks("98") == {}  # squeue failed: what the files say
    assert slurm_status.queued_tasks("96") == {}  # and so when it failed part way through
    # Only JOBID_TASK with a number for TASK is an array task: not 97_1_2 (not task 1, 2 or
    # 12, as int("1_2") would read it), as not 99_[5-6] nor 99 above.
    assert slurm_status.queued_tasks("97") == {3: "RUNNING"}
    assert slurm_status.queued_tasks(None) == {}  # a dry run: no job


def test_the_remote_s_experiments_are_read_by_name(sweep):
    repo, manifest = sweep
    land(repo, "exp-a")
    land(repo, "exp-b")
    assert slurm_status.landed(manifest["git_remote_url"]) == {"exp-a", "exp-b"}
