"""Sweeps as SLURM job arrays, the pieces that need no cluster: the sweep's expansion, the
batch script, the site settings, the multi-node launch command, every refusal of `slurm
submit` (one `error:` line, nothing written, nothing pushed) and the states `slurm status`
reads from a sweep's folder. The same code against a real slurmctld: tests/test_cluster.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.slurm import status as slurm_status
from pubmedqa_gpt2.slurm.script import batch_script
from pubmedqa_gpt2.slurm.settings import ClusterSettings, load_settings
from pubmedqa_gpt2.slurm.sweep import expand
from pubmedqa_gpt2.training import launch
from pubmedqa_gpt2.training.stop import STOPPED_EXIT

from .e2e import git

# ---- The sweep: `dvc exp run -S`'s expansion ----


def test_a_sweep_is_the_product_of_its_overrides_in_order():
    # Swept values as Hydra (and so `dvc exp run -S`) renders them: 1e-5 becomes 1e-05.
    assert expand(["train.seed=0,1,2", "train.learning_rate=1e-5,2e-5"]) == [
        ["train.seed=0", "train.learning_rate=1e-05"],
        ["train.seed=0", "train.learning_rate=2e-05"],
        ["train.seed=1", "train.learning_rate=1e-05"],
        ["train.seed=1", "train.learning_rate=2e-05"],
        ["train.seed=2", "train.learning_rate=1e-05"],
        ["train.seed=2", "train.learning_rate=2e-05"],
    ]
    assert expand(["train.seed=range(0,3)"]) == [[f"train.seed={i}"] for i in range(3)]
    # A single value is passed on as typed (dvc parses it).
    assert expand(["train.learning_rate=1e-5"]) == [["train.learning_rate=1e-5"]]
    assert expand([]) == [[]]  # the committed params, once
    assert expand(["train.seed=range(0,0)"]) == []


def test_a_malformed_override_is_one_line_naming_it():
    with pytest.raises(StageError, match=r"^-S train\.seed=0,,1: "):
        expand(["train.seed=0,,1"])


# ---- The batch script ----


def manifest(tmp_path: Path, n: int = 3) -> dict:
    return {
        "sweep": "sweep-1", "commit": "a" * 40, "ref": "refs/pubmedqa-slurm/sweep-1",
        "git_remote": "origin", "git_remote_url": "/shared/origin.git", "job_id": None,
        "folder": str(tmp_path / "sweep-1"), "python": sys.executable,
        "bin": str(Path(sys.executable).parent), "cache": "/shared/cache",
        "repository": str(tmp_path / "repo"),
        "experiments": [{"name": f"sweep-1-{i}", "set": [f"train.seed={i}"]} for i in range(n)],
    }  # fmt: skip


def sbatch_options(script: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in script.splitlines() if line.startswith("#SBATCH ")]


def test_the_script_asks_slurm_for_the_site_s_resources_and_a_warning_before_the_limit(tmp_path):
    settings = ClusterSettings(
        partition="gpu", account="lab", gpus_per_task=2, cpus_per_task=16, mem="64G",
        time="12:00:00", max_parallel=2, signal_seconds=600, sbatch=["--qos=long"],
    )  # fmt: skip
    script = batch_script(manifest(tmp_path), settings)
    options = sbatch_options(script)
    for wanted in (
        "--array=0-2%2", "--gres=gpu:2", "--cpus-per-task=16", "--partition=gpu", "--account=lab",
        "--mem=64G", "--time=12:00:00", "--requeue", "--signal=B:USR1@600", "--qos=long",
        f"--output={tmp_path}/sweep-1/logs/%a.log", "--open-mode=append",
    ):  # fmt: skip
        assert wanted in options, wanted
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)  # valid bash
    assert f'[ "$status" = {STOPPED_EXIT} ]' in script and "scontrol requeue" in script
    cpu = sbatch_options(
        batch_script(manifest(tmp_path), ClusterSettings(gpus_per_task=0, time=None))
    )
    assert not any(o.startswith(("--gres", "--time", "--partition")) for o in cpu)
    assert "--array=0-2" in cpu  # no throttle: every task may run at once
    no_requeue = sbatch_options(batch_script(manifest(tmp_path), ClusterSettings(requeue=False)))
    assert "--no-requeue" in no_requeue and not any("USR1" in o for o in no_requeue)


def fake_task(tmp_path: Path, body: str) -> str:
    """The sweep's script with the task replaced by `body` (a bash snippet), and the SLURM
    commands it calls recorded in calls.txt."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("scontrol",):
        tool = bin_dir / name
        tool.write_text(f'#!/bin/bash\necho "{name} $*" >> {tmp_path}/calls.txt\n')
        tool.chmod(0o755)
    data = manifest(tmp_path, 1)
    fake_python = bin_dir / "python"
    fake_python.write_text(f"#!/bin/bash\n{body}\n")
    fake_python.chmod(0o755)
    data |= {"python": str(fake_python), "bin": str(bin_dir)}
    workspace = tmp_path / "sweep-1" / "tasks" / "0"
    (workspace / ".git").mkdir(parents=True, exist_ok=True)  # cloned already (a requeue)
    return batch_script(data, ClusterSettings())


def run_batch(tmp_path: Path, script: str, signal_after: float | None = None):
    env = os.environ | {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_JOB_ID": "77"}
    proc = subprocess.Popen(
        ["bash", "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    if signal_after is not None:
        import signal
        import time

        time.sleep(signal_after)
        os.kill(proc.pid, signal.SIGUSR1)  # `scancel -b --signal=USR1`: the batch shell only
    out, _ = proc.communicate(timeout=60)
    calls = (tmp_path / "calls.txt").read_text() if (tmp_path / "calls.txt").exists() else ""
    return proc.returncode, out, calls


@pytest.mark.child_process
def test_the_warning_signal_creates_the_stop_file_and_a_stopped_task_is_requeued(tmp_path):
    # The task waits for the stop file, as training does, then exits as a stopped stage does.
    body = f'while [ ! -e "$PUBMEDQA_STOP_FILE" ]; do sleep 0.1; done; exit {STOPPED_EXIT}'
    script = fake_task(tmp_path, body).replace("sleep 300 & wait $!", "true")
    code, out, calls = run_batch(tmp_path, script, signal_after=1.0)
    assert calls == "scontrol requeue 77_0\n", out
    assert "requeueing task 0" in out and code == STOPPED_EXIT


@pytest.mark.child_process
def test_a_task_that_fails_or_succeeds_is_not_requeued(tmp_path):
    for status in (0, 1):
        script = fake_task(tmp_path, f"exit {status}")
        code, out, calls = run_batch(tmp_path, script)
        assert (code, calls) == (status, ""), out


# ---- Site settings: an untracked file, options on top ----


def test_options_override_the_settings_file_and_a_bad_key_is_named(tmp_path):
    path = tmp_path / "slurm.local.yaml"
    path.write_text("partition: gpu\ncpus_per_task: 4\nworkspaces: /shared/ws\n")
    settings = load_settings(path, {"cpus_per_task": 2})
    assert (settings.partition, settings.cpus_per_task, str(settings.workspaces)) == (
        "gpu", 2, "/shared/ws",
    )  # fmt: skip
    assert load_settings(tmp_path / "absent.yaml", {}).gpus_per_task == 1
    path.write_text("partitoin: gpu\n")
    with pytest.raises(StageError, match=r"slurm\.local\.yaml: partitoin: Extra inputs"):
        load_settings(path, {})
    with pytest.raises(StageError, match=r"^--gpus-per-task: Input should be greater"):
        load_settings(tmp_path / "absent.yaml", {"gpus_per_task": -1})


def test_the_settings_file_is_found_at_the_top_of_the_repository_and_options_win(
    tmp_path, monkeypatch
):
    """`slurm submit` in a subfolder of the clone: the default --settings (slurm.local.yaml,
    relative) is the one beside params.yaml at the repository's top; --no-requeue and --sbatch
    override it. Outside a git repository the command refuses in one line."""
    from pubmedqa_gpt2.cli import build_parser
    from pubmedqa_gpt2.slurm import commands
    from pubmedqa_gpt2.slurm import submit as submit_module

    repo = tmp_path / "repo"
    git("init", "--quiet", str(repo), cwd=tmp_path)
    (repo / "slurm.local.yaml").write_text("partition: gpu\nsbatch: [--qos=short]\n")
    (repo / "sub").mkdir()
    monkeypatch.chdir(repo / "sub")
    seen = {}

    def fake_submit(repo, settings, overrides, dry_run):
        seen.update(repo=repo, settings=settings, overrides=overrides, dry_run=dry_run)
        return "ok"

    monkeypatch.setattr(submit_module, "submit", fake_submit)
    args = build_parser().parse_args(
        ["slurm", "submit", "-S", "train.seed=0", "--no-requeue", "--sbatch=--qos=long"]
    )
    assert commands.run(args) == "ok"
    assert (seen["repo"], seen["overrides"], seen["dry_run"]) == (
        repo.resolve(), ["train.seed=0"], False,
    )  # fmt: skip
    settings = seen["settings"]
    assert (settings.partition, settings.requeue, settings.sbatch) == ("gpu", False, ["--qos=long"])
    (tmp_path / "plain").mkdir()
    monkeypatch.chdir(tmp_path / "plain")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    with pytest.raises(StageError) as err:
        commands.repository()
    assert str(err.value) == "not in a git repository: run this in your clone of the project"


# ---- One experiment on several nodes: srun, one torch.distributed.run per task ----


def test_several_slurm_tasks_launch_one_node_agent_each_through_srun(monkeypatch):
    env = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "node7"}
    command = launch.launch_command(4, "stages.train", "train", env)
    assert command[:3] == ["srun", "--ntasks=2", "--kill-on-bad-exit=1"]
    for wanted in ("--nnodes=2", "--nproc_per_node=2", "--master_addr=node7", "-m"):
        assert wanted in command, wanted
    assert command[-1] == "stages.train"
    # The node rank is each task's SLURM_PROCID, read by the shell srun starts for it.
    agent = command.index("bash")
    echo = ["bash", "-c", command[agent + 2], "echo", *command[agent + 4 :]]
    out = subprocess.run(echo, env={"SLURM_PROCID": "1"}, capture_output=True, text=True).stdout
    assert out.startswith("-m torch.distributed.run --node_rank=1 --nnodes=2")
    local = launch.launch_command(2, "stages.train", "train", {})
    assert local[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    with pytest.raises(StageError, match=r"^train\.num_processes: 3 processes do not divide"):
        launch.launch_command(3, "stages.train", "train", env)


# ---- `slurm submit`: every refusal before anything is submitted ----


def nothing_happened(repo: Path) -> None:
    shared = repo.parent / "shared"
    assert not (shared / "ws").exists(), "a sweep folder was written"
    refs = subprocess.run(["git", "ls-remote", str(shared / "origin.git")], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    assert refs == "", "something was pushed"
    assert not (repo.parent / "sbatch.txt").exists(), "sbatch was called"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("uncommitted", r"^error: 1 uncommitted change\(s\) \(params\.yaml\): the tasks clone"),
        ("no remote", r"^error: git remote 'cluster': not set in this repository"),
        ("unreachable remote", r"^error: git remote 'cluster' \(.*gone\.git\): not reachable"),
        ("cache in the repository", r"^error: the DVC cache is .*/repo/\.dvc/cache, inside"),
        ("empty sweep", r"^error: the sweep train\.seed=range\(0,0\) expands to no experiment"),
        ("no workspaces", r"^error: no folder for the tasks' workspaces: give --workspaces"),
        ("workspaces in the repository", r"^error: --workspaces .*/repo/ws: inside this repo"),
        ("no sbatch", r"^error: sbatch not found: submit from a SLURM login node"),
        ("bad setting", r"^error: --cpus-per-task: Input should be greater than or equal to 1"),
    ],
)
def test_each_refusal_is_one_error_line_before_anything_is_submitted(
    user_repo, submit, case, message
):
    repo = user_repo
    args = ["-S", "train.seed=0,1", "--workspaces", str(repo.parent / "shared" / "ws")]
    path = None
    if case == "uncommitted":
        (repo / "params.yaml").write_text((repo / "params.yaml").read_text() + "\n")
    elif case == "no remote":
        git("remote", "remove", "cluster", cwd=repo)
    elif case == "unreachable remote":
        git("remote", "set-url", "cluster", str(repo.parent / "gone.git"), cwd=repo)
    elif case == "cache in the repository":
        subprocess.run(["dvc", "cache", "dir", "--local", ".dvc/cache"], cwd=repo, check=True)
    elif case == "empty sweep":
        args[1] = "train.seed=range(0,0)"
    elif case == "no workspaces":
        args = args[:2]
    elif case == "workspaces in the repository":
        args[3] = str(repo / "ws")
    elif case == "no sbatch":  # a PATH with git and dvc only
        tools = repo.parent / "tools"
        tools.mkdir()
        for name in ("git", "dvc"):
            (tools / name).symlink_to(shutil.which(name))
        path = str(tools)
    elif case == "bad setting":
        args += ["--cpus-per-task", "0"]
    got = submit(repo, *args, path=path)
    assert got.returncode == 1, got.stdout + got.stderr
    errors = [line for line in got.stderr.splitlines() if not line.startswith("warning:")]
    assert len(errors) == 1 and "Traceback" not in got.stderr, got.stderr
    assert re.match(message, errors[0]), errors[0]
    nothing_happened(repo)


def test_dry_run_prints_the_script_and_submits_nothing(user_repo, submit):
    got = submit(user_repo, "-S", "train.seed=0,1", "--workspaces",
                 str(user_repo.parent / "shared" / "ws"), "--dry-run")  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert got.stdout.startswith("#!/bin/bash\n") and "#SBATCH --array=0-1" in got.stdout
    # The committed params keep weights-only checkpoints: a requeued task would start afresh.
    assert got.stderr == (
        "warning: train.resumable_checkpoints is false: a preempted or time-limited task "
        "restarts its training from the beginning (-S train.resumable_checkpoints=true "
        "keeps optimizer state in checkpoints to resume from)\n"
    )
    nothing_happened(user_repo)


def test_submit_pushes_the_commit_writes_the_sweep_and_calls_sbatch(user_repo, submit):
    ws = user_repo.parent / "shared" / "ws"
    got = submit(user_repo, "-S", "train.seed=0,1", "-S", "train.resumable_checkpoints=true",
                 "--workspaces", str(ws))  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert "warning" not in got.stderr  # every experiment keeps resumable checkpoints
    (folder,) = ws.iterdir()
    data = json.loads((folder / "sweep.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=user_repo, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    assert data["commit"] == head and data["job_id"] == "99"
    assert [e["set"] for e in data["experiments"]] == [
        ["train.seed=0", "train.resumable_checkpoints=true"],
        ["train.seed=1", "train.resumable_checkpoints=true"],
    ]
    refs = subprocess.run(["git", "ls-remote", str(user_repo.parent / "shared" / "origin.git")],
                          capture_output=True, text=True).stdout  # fmt: skip
    assert f"{head}\t{data['ref']}" in refs
    assert (user_repo.parent / "sbatch.txt").read_text() == f"--parsable {folder}/job.sbatch\n"
    tree = subprocess.run(
        ["git", "status", "--porcelain"], cwd=user_repo, capture_output=True, text=True
    ).stdout
    assert tree == ""  # the user's working tree is untouched


def test_two_sweeps_submitted_in_one_second_get_folders_of_their_own(user_repo, monkeypatch):
    from pubmedqa_gpt2.slurm import submit as submit_module

    ws = user_repo.parent / "shared" / "ws"
    # sweep-20261206-101500 as in docs/CLUSTER.md; "submitted" is ISO 8601 with its UTC offset
    times = {"%Y%m%d-%H%M%S": "20261206-101500", "%Y-%m-%dT%H:%M:%S%z": "2026-12-06T10:15:00+0100"}
    monkeypatch.setattr(submit_module.time, "strftime", times.__getitem__)
    settings = ClusterSettings(workspaces=ws, git_remote="cluster")
    names, manifests = [], []
    for _ in range(3):
        manifest = submit_module.prepare(user_repo, settings, ["train.seed=0,1"])
        Path(manifest["folder"]).mkdir(parents=True)  # what submit then writes
        names.append(manifest["sweep"])
        manifests.append(manifest)
    assert names == ["sweep-20261206-101500", "sweep-20261206-101500_2", "sweep-20261206-101500_3"]
    # The whole manifest, by hand: what `slurm task` and `slurm status` read.
    assert manifests[1] == {
        "sweep": "sweep-20261206-101500_2",
        "submitted": "2026-12-06T10:15:00+0100",
        "repository": str(user_repo.resolve()),
        "commit": head_of(user_repo),
        "ref": "refs/pubmedqa-slurm/sweep-20261206-101500_2",
        "git_remote": "cluster",
        "git_remote_url": str((user_repo.parent / "shared" / "origin.git").resolve()),
        "cache": str((user_repo.parent / "shared" / "cache").resolve()),
        "folder": str(ws / "sweep-20261206-101500_2"),
        "python": sys.executable,
        "bin": os.path.dirname(sys.executable),
        "job_id": None,
        "experiments": [
            {"name": "sweep-20261206-101500_2-0", "set": ["train.seed=0"]},
            {"name": "sweep-20261206-101500_2-1", "set": ["train.seed=1"]},
        ],
    }
    # However many were submitted in that second (a script looping over sweeps).
    for n in range(4, 131):
        (ws / f"sweep-20261206-101500_{n}").mkdir()
    assert submit_module.prepare(user_repo, settings, ["train.seed=0"])["folder"] == str(
        ws / "sweep-20261206-101500_131"
    )


def small_remote(tmp_path: Path) -> tuple[Path, Path]:
    """A repository with one commit and `cluster`, a bare remote beside it: (repo, remote)."""
    repo, remote = tmp_path / "repo", tmp_path / "shared" / "origin.git"
    git("init", "--quiet", "--bare", str(remote), cwd=tmp_path)
    git("init", "--quiet", "-b", "main", str(repo), cwd=tmp_path)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "--allow-empty",
        "-m", "start", cwd=repo)  # fmt: skip
    git("remote", "add", "cluster", str(remote), cwd=repo)
    return repo, remote


def stub(folder: Path, name: str, body: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(f"#!/bin/bash\n{body}\n")
    (folder / name).chmod(0o755)


def submit_prepared(tmp_path: Path, monkeypatch, repo: Path) -> tuple[dict, Path, Callable]:
    """`submit` of a hand-made manifest (prepare's checks are tested above), run from a folder
    outside the repository (every git command must name it), `bin/` first on PATH."""
    from pubmedqa_gpt2.slurm import submit as submit_module

    data = manifest(tmp_path, 2) | {"git_remote": "cluster"}
    data["folder"] = str(tmp_path / "shared" / "ws" / "sweep-1")
    monkeypatch.setattr(submit_module, "prepare", lambda *args: data)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    settings = ClusterSettings(workspaces=tmp_path / "shared" / "ws", git_remote="cluster")
    return data, Path(data["folder"]), lambda: submit_module.submit(repo, settings, [], False)


def head_of(repo: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip


def test_submit_writes_the_manifest_before_sbatch_and_keeps_the_job_id_of_its_answer(
    tmp_path, monkeypatch
):
    """docs/CLUSTER.md: the sweep's folder holds sweep.json, job.sbatch, logs/, results/,
    tasks/; a task that starts at once reads sweep.json, so it is there (job_id null) when
    sbatch runs. `sbatch --parsable` answers `JOBID[;CLUSTER]`: the job id is 4242 here."""
    repo, remote = small_remote(tmp_path)
    stub(tmp_path / "bin", "sbatch", f'ls "$(dirname "$2")" > {tmp_path}/seen.txt\n'
         f'cp "$(dirname "$2")/sweep.json" {tmp_path}/seen.json\necho "4242;cluster"')  # fmt: skip
    data, folder, run = submit_prepared(tmp_path, monkeypatch, repo)
    expected = json.loads(json.dumps(data))  # the manifest as given, before submit fills it
    assert run() == (
        f"submitted sweep-1: 2 experiment(s) as job array 4242 (folder {folder}); "
        "follow it with `pubmedqa-gpt2 slurm status`"
    )
    listing = "job.sbatch\nlogs\nresults\nsweep.json\ntasks\n"
    assert (tmp_path / "seen.txt").read_text() == listing
    assert sorted(p.name for p in folder.iterdir()) == listing.split()
    assert all((folder / sub).is_dir() for sub in ("logs", "results", "tasks"))
    for path, job_id in ((tmp_path / "seen.json", None), (folder / "sweep.json", "4242")):
        text = path.read_text()
        assert json.loads(text) == expected | {"job_id": job_id}
        assert text == json.dumps(json.loads(text), indent=1) + "\n"  # one space a level
    refs = subprocess.run(["git", "ls-remote", str(remote)], capture_output=True, text=True)
    assert refs.stdout == f"{head_of(repo)}\trefs/pubmedqa-slurm/sweep-1\n"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        pytest.param(  # sbatch's last line, its "sbatch: error: " prefix dropped
            "printf 'sbatch: warning: first\\nsbatch: second\\nsbatch: error: Batch job "
            "submission failed: Invalid account\\n' >&2; exit 1",
            "Batch job submission failed: Invalid account",
            id="stderr",
        ),
        pytest.param("exit 3", "exit status 3", id="silent"),
    ],
)
def test_a_sweep_sbatch_refuses_leaves_no_folder_and_no_ref(tmp_path, monkeypatch, body, why):
    repo, remote = small_remote(tmp_path)
    stub(tmp_path / "bin", "sbatch",
         f"git ls-remote {remote} > {tmp_path}/seen.txt\n{body}")  # fmt: skip
    _, folder, run = submit_prepared(tmp_path, monkeypatch, repo)
    with pytest.raises(StageError) as err:
        run()
    assert str(err.value) == f"sbatch refused the sweep: {why}"
    # pushed before sbatch ran, deleted after it refused
    pushed = f"{head_of(repo)}\trefs/pubmedqa-slurm/sweep-1\n"
    assert (tmp_path / "seen.txt").read_text() == pushed
    refs = subprocess.run(["git", "ls-remote", str(remote)], capture_output=True, text=True)
    assert refs.returncode == 0 and refs.stdout == ""
    assert not folder.exists() and folder.parent.is_dir()


@pytest.mark.parametrize("case", ["hook", "silent"])
def test_a_refused_push_is_one_line_and_nothing_is_written(tmp_path, monkeypatch, case):
    """git's last line: a declined push ends with `error: failed to push some refs to 'URL'`
    (git 2.x); a push that fails without a word is said to have failed."""
    repo, remote = small_remote(tmp_path)
    stub(tmp_path / "bin", "sbatch", f"touch {tmp_path}/sbatch-called")
    if case == "hook":
        stub(remote / "hooks", "pre-receive", "echo 'hook says no' >&2; exit 1")
        why = f"error: failed to push some refs to '{remote}'"
    else:
        stub(tmp_path / "bin", "git", f'[ "$1" = push ] && exit 1\nexec {shutil.which("git")} "$@"')
        why = "failed"
    _, folder, run = submit_prepared(tmp_path, monkeypatch, repo)
    with pytest.raises(StageError) as err:
        run()
    assert str(err.value) == f"git push cluster HEAD:refs/pubmedqa-slurm/sweep-1: {why}"
    assert not folder.parent.exists() and not (tmp_path / "sbatch-called").exists()


def test_shared_cache_asks_dvc_in_the_repository(tmp_path, monkeypatch):
    """`dvc cache dir` of the repository (not of the current folder): the path its config sets;
    where DVC answers nothing (no DVC repository) the cache is unknown."""
    from pubmedqa_gpt2.slurm import submit as submit_module

    repo, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    (repo / ".dvc").mkdir(parents=True)
    elsewhere.mkdir()
    cache = tmp_path / "shared" / "cache"
    (repo / ".dvc" / "config").write_text(
        f"[core]\n    no_scm = true\n[cache]\n    dir = {cache}\n"
    )
    monkeypatch.chdir(elsewhere)
    assert submit_module.shared_cache(repo) == str(cache)
    (tmp_path / "plain").mkdir()
    with pytest.raises(StageError) as err:
        submit_module.shared_cache(tmp_path / "plain")
    assert str(err.value) == (
        "the DVC cache is unknown, inside this repository: the tasks need one on the cluster's "
        "shared filesystem (dvc cache dir --local /shared/path/dvc-cache; docs/CLUSTER.md)"
    )


def test_no_workspaces_names_the_option_and_the_setting(tmp_path):
    """docs/CLUSTER.md: `--workspaces DIR` or `workspaces:` in slurm.local.yaml."""
    from pubmedqa_gpt2.slurm import submit as submit_module

    with pytest.raises(StageError) as err:
        submit_module.workspaces_folder(tmp_path, ClusterSettings())
    assert str(err.value) == (
        "no folder for the tasks' workspaces: give --workspaces DIR (on the shared "
        "filesystem) or set workspaces: in slurm.local.yaml"
    )


def test_a_remote_s_url_is_made_absolute_when_a_path_and_kept_when_a_host(tmp_path, monkeypatch):
    """A path (even one holding ":" past its first "/") is made absolute, as the nodes clone it
    from elsewhere; `host:path` (scp-like) is kept. The reachability check is `git ls-remote`
    of that URL in the repository: its own config (here core.sshCommand, a stand-in for ssh
    that runs git-upload-pack locally) applies, and its other remote `origin` is not asked."""
    from pubmedqa_gpt2.slurm import submit as submit_module

    repo, remote = small_remote(tmp_path)
    git("remote", "add", "origin", str(tmp_path / "gone.git"), cwd=repo)
    odd = tmp_path / "sh:ared" / "origin.git"
    git("init", "--quiet", "--bare", str(odd), cwd=tmp_path)
    odder = tmp_path / "sh:" / "ared" / "origin.git"  # "../sh://ared/origin.git" to git: a path
    git("init", "--quiet", "--bare", str(odder), cwd=tmp_path)
    stub(tmp_path / "bin", "fake-ssh", 'eval "git ${2#git-}"')  # HOST "git-upload-pack 'PATH'"
    git("config", "core.sshCommand", str(tmp_path / "bin" / "fake-ssh"), cwd=repo)
    git("config", "ssh.variant", "simple", cwd=repo)
    monkeypatch.setenv("GIT_SSH", "/bin/false")  # no ssh outside the repository's config
    monkeypatch.setenv("HOME", str(remote.parent))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    for url, expected in (
        ("../shared/origin.git", str(remote.resolve())),
        ("../sh:ared/origin.git", str(odd.resolve())),
        ("../sh://ared/origin.git", str(odder.resolve())),
        ("~/origin.git", str(remote.resolve())),  # git expands "~" in a path: HOME above
        (f"file://{remote}", f"file://{remote}"),
        (f"login-node:{remote}", f"login-node:{remote}"),
    ):
        git("remote", "set-url", "cluster", url, cwd=repo)
        assert submit_module.remote_url(repo, "cluster") == expected, url
    git("remote", "set-url", "cluster", "login-node:/gone.git", cwd=repo)
    with pytest.raises(StageError) as err:
        submit_module.remote_url(repo, "cluster")
    assert str(err.value) == (
        "git remote 'cluster' (login-node:/gone.git): not reachable (git ls-remote failed)"
    )


def test_uncommitted_changes_are_counted_and_the_first_three_named(tmp_path, monkeypatch):
    """`git status --porcelain` lists untracked files as `?? NAME`, sorted: three are named
    whole, a fourth becomes ", ...". A clean tree gives HEAD's commit (git rev-parse HEAD)."""
    from pubmedqa_gpt2.slurm import submit as submit_module

    repo, _ = small_remote(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert submit_module.committed_head(repo) == head_of(repo)
    tail = ": the tasks clone the last commit and would not see them; commit or stash them"
    for name, named in (("c", "a, b, c"), ("d", "a, b, c, ...")):
        for each in ("a", "b", name):
            (repo / each).write_text("x")
        with pytest.raises(StageError) as err:
            submit_module.committed_head(repo)
        count = 3 if name == "c" else 4
        assert str(err.value) == f"{count} uncommitted change(s) ({named}){tail}"


def test_git_commands_of_submit_have_a_time_bound(tmp_path, monkeypatch):
    """Without a timeout a hung remote stops `slurm submit` forever."""
    from pubmedqa_gpt2.slurm import submit as submit_module

    asked = {}
    monkeypatch.setattr(submit_module.subprocess, "run", lambda cmd, **kw: asked.update(kw))
    submit_module.git("status", cwd=tmp_path)
    assert isinstance(asked.get("timeout"), int | float) and 0 < asked["timeout"] <= 300


def test_a_sweep_that_expands_to_nothing_is_named_whole(tmp_path):
    """range(0,0) is empty, so the product with train.lr=1 is too; both -S are named."""
    from pubmedqa_gpt2.slurm import submit as submit_module

    with pytest.raises(StageError) as err:
        submit_module.prepare(tmp_path, ClusterSettings(), ["train.seed=range(0,0)", "train.lr=1"])
    assert str(err.value) == "the sweep train.seed=range(0,0) train.lr=1 expands to no experiment"


# ---- `slurm status` from a sweep's folder ----


def test_status_reads_results_logs_and_the_remote_without_accounting(tmp_path, monkeypatch):
    data = manifest(tmp_path, 4)
    folder = Path(data["folder"])
    for sub in ("results", "logs"):
        (folder / sub).mkdir(parents=True)
    (folder / "results/0.json").write_text(json.dumps(
        {"experiment": "sweep-1-0", "state": "done", "accuracy": 0.5}))  # fmt: skip
    (folder / "results/1.json").write_text(json.dumps(
        {"experiment": "sweep-1-1", "state": "failed", "error": "train.seed: bad"}))  # fmt: skip
    (folder / "logs/2.log").write_text("task 2\nerror: task 2: cannot clone commit aaaa\n")
    monkeypatch.setattr(slurm_status, "queued_tasks", lambda job: {3: "PENDING"})
    monkeypatch.setattr(slurm_status, "landed", lambda url: {"sweep-1-0"})
    rows = slurm_status.task_states(data)
    assert [(r["state"], r.get("accuracy"), r.get("error")) for r in rows] == [
        ("done", 0.5, None),
        ("failed", None, "train.seed: bad"),
        ("failed", None, "task 2: cannot clone commit aaaa"),
        ("pending", None, None),
    ]
    monkeypatch.setattr(slurm_status, "queued_tasks", lambda job: {})
    monkeypatch.setattr(slurm_status, "landed", lambda url: {"sweep-1-3"})
    (folder / "logs/2.log").unlink()
    rows = slurm_status.task_states(data)
    assert rows[3]["state"] == "done"  # on the remote, its result file lost: it landed
    assert rows[2]["error"].startswith("the task ended without a result; see ")
    table = slurm_status.status_table(data, rows)
    assert "| sweep-1-0 | train.seed=0 | done | 0.5000 |" in table
    assert table.endswith("0 pending, 0 running, 2 done, 2 failed")


def test_status_without_squeue_or_a_reachable_remote_still_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither squeue nor git
    assert slurm_status.queued_tasks("12") == {}
    assert slurm_status.landed(str(tmp_path / "nowhere.git")) == set()
    assert shutil.which("squeue") is None


# ---- docs/CLUSTER.md shows the script `submit` writes ----

DOC = Path(__file__).resolve().parents[1] / "docs" / "CLUSTER.md"
DOC_SWEEP = "sweep-20261206-101500"


def documented_script() -> tuple[dict, str]:
    """The settings block and the script block of docs/CLUSTER.md."""
    import yaml

    text = DOC.read_text()
    settings = yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0])
    script = text.split("## The script `submit` writes", 1)[1].split("```bash\n", 1)[1]
    return settings, script.split("```", 1)[0]


def test_the_docs_show_the_script_submit_writes_for_the_documented_settings():
    settings, shown = documented_script()
    folder = f"{settings['workspaces']}/{DOC_SWEEP}"
    data = {
        "sweep": DOC_SWEEP, "commit": "3f2a9c1e77d0b5a4c2e1f0a9b8c7d6e5f4a3b2c1",
        "ref": f"refs/pubmedqa-slurm/{DOC_SWEEP}", "git_remote_url": "/shared/alice/pubmedqa.git",
        "folder": folder, "python": "/shared/alice/venvs/pubmedqa/bin/python",
        "bin": "/shared/alice/venvs/pubmedqa/bin",
        "experiments": [{"name": f"{DOC_SWEEP}-{i}", "set": [f"train.seed={i}"]} for i in range(3)],
    }  # fmt: skip
    assert shown == batch_script(data, ClusterSettings(**settings))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("partition: [gpu\n  time: 1", r"^{path}: not valid YAML \(while parsing .*\)$"),
        ("- gpu\n- cpu\n", r"^{path}: expected a mapping of settings$"),
        ("sbatch: ['--qos=high', [1]]\n", r"^{path}: sbatch\.1: Input should be a valid string$"),
    ],
)
def test_a_bad_settings_file_is_one_line_naming_it(tmp_path, text, message):
    path = tmp_path / "slurm.local.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(StageError) as err:
        load_settings(path, {})
    assert "\n" not in str(err.value)
    try:  # the YAML error as the parser words it, on one line
        yaml.safe_load(text)
    except yaml.YAMLError as exc:
        assert str(err.value) == f"{path}: not valid YAML ({exc})".replace("\n", " ")
    assert re.match(message.format(path=re.escape(str(path))), str(err.value)), str(err.value)


def test_a_value_holding_equals_signs_is_kept_whole_and_a_parse_error_is_its_first_line():
    (experiment,) = expand(["data.url='https://host/f.json?a=1&b=2'"])  # quoted, as Hydra wants
    assert experiment == ["data.url='https://host/f.json?a=1&b=2'"]  # as typed: DVC parses it
    with pytest.raises(StageError) as err:
        expand(["train.seed=choice(1,"])
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    with pytest.raises(HydraException) as hydra_err:  # Hydra's own words, first line
        OverridesParser.create().parse_overrides(["train.seed=choice(1,"])
    first = str(hydra_err.value).splitlines()[0]
    assert str(err.value) == f"-S train.seed=choice(1,: {first}"


def test_a_remote_that_does_not_answer_stops_status_in_bounded_time(monkeypatch):
    """`git ls-remote` against a hung remote gets a time limit (without one `slurm status`
    waits forever); a remote that times out has no experiment yet."""
    asked = {}

    def hung(cmd, **kwargs):
        asked.update(kwargs)
        raise subprocess.TimeoutExpired(cmd, kwargs.get("timeout"))

    monkeypatch.setattr(slurm_status.subprocess, "run", hung)
    assert slurm_status.landed("ssh://cluster/hung.git") == set()
    assert isinstance(asked.get("timeout"), int | float) and 0 < asked["timeout"] <= 300


@pytest.mark.parametrize(
    ("committed", "overrides", "resumable"),
    [
        pytest.param("true", [[]], True, id="committed-true"),
        pytest.param("false", [[]], False, id="committed-false"),
        pytest.param(None, [[]], False, id="committed-missing"),
        pytest.param("false", [["train.resumable_checkpoints=true"]], True, id="set-true"),
        pytest.param(
            "true",
            [["train.seed=1"], ["train.resumable_checkpoints=False"]],
            False,
            id="one-set-false",
        ),  # fmt: skip
        pytest.param(
            "false",
            [["train.resumable_checkpoints=false", "train.resumable_checkpoints=True"]],
            True,
            id="last-wins",
        ),  # fmt: skip
        # The value is everything after the first "=": "true=no" and "no=true" are not "true".
        pytest.param("false", [["train.resumable_checkpoints=true=no"]], False, id="value-a=b"),
        pytest.param("false", [["train.resumable_checkpoints=no=true"]], False, id="value-b=a"),
    ],
)
def test_a_sweep_is_resumable_when_every_experiment_keeps_optimizer_state(
    tmp_path, committed, overrides, resumable
):
    """The committed params.yaml's `train.resumable_checkpoints` (YAML true/false), unless an
    experiment sets it (the last -S of the key wins, any case of true/false)."""
    from pubmedqa_gpt2.slurm import submit as submit_module

    train = {"seed": 0} if committed is None else {"resumable_checkpoints": committed == "true"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": train}))
    assert submit_module.resumable(tmp_path, overrides) is resumable
