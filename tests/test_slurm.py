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
    assert "warning: train.resumable_checkpoints is false" in got.stderr
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
    monkeypatch.setattr(submit_module.time, "strftime", lambda fmt: "20261206-101500")
    settings = ClusterSettings(workspaces=ws, git_remote="cluster")
    names = []
    for _ in range(3):
        manifest = submit_module.prepare(user_repo, settings, ["train.seed=0"])
        Path(manifest["folder"]).mkdir(parents=True)  # what submit then writes
        names.append(manifest["sweep"])
    assert names == ["sweep-20261206-101500", "sweep-20261206-101500_2", "sweep-20261206-101500_3"]


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
