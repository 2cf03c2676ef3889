"""Sweeps on a real SLURM cluster: slurmctld, slurmd and munged started on localhost by this
test session (`tests/slurm_cluster.py`), the smoke run as the user's repository, its DVC cache
and a bare git remote in a temporary "shared filesystem".

All of them run on one pytest-xdist worker (one cluster; its 2 CPUs are the node's), in the
order written. Where the cluster cannot run (no Debian packages, not root) they skip saying
why; `.ci/run` installs the packages.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from . import slurm_cluster
from .conftest import ROOT, needs_pubmedqa, needs_tokenizer
from .e2e import committed_json, copy_of, experiment_revs, sh, shown_experiments

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("slurm")]

METRICS = ("train.json", "eval_base.json", "eval_finetuned.json", "compare.json")


@pytest.fixture(scope="session")
def slurm():
    """A one-node cluster for the session: started once, stopped at the end (its processes
    only), its folder removed. Clients find it through SLURM_CONF."""
    reason = slurm_cluster.missing_reason()
    if reason:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="pubmedqa-slurm-"))
    base.chmod(0o755)  # munged's socket must be reachable by others (NOTES.md, pitfall 1)
    started = time.monotonic()
    cluster = slurm_cluster.start(base / "cluster")
    print(f"local SLURM cluster up in {time.monotonic() - started:.2f} s")
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = cluster.env["SLURM_CONF"]
    yield cluster
    slurm_cluster.stop(cluster)
    if before is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = before
    shutil.rmtree(base, ignore_errors=True)


def wait_gone(cluster, job: str, timeout: float = 900) -> None:
    """Until `job` (an array: all its tasks) has left the queue."""
    deadline = time.monotonic() + timeout
    while cluster.run("squeue", "-h", "-j", job, check=False).stdout.strip():
        assert time.monotonic() < deadline, cluster.run("squeue", "-j", job).stdout
        time.sleep(0.5)


def task_state(cluster, task: str) -> str:
    return cluster.run("squeue", "-h", "-j", task, "-o", "%T", check=False).stdout.strip()


# ---- The user's side: a repository on the shared filesystem, and the two commands ----


def user_repository(smoke_repo: Path, tmp_path: Path) -> Path:
    """A copy of the smoke run whose DVC cache is on the "shared filesystem" (group-shared)
    and whose git remote `cluster` is a bare repository there."""
    shared = tmp_path / "shared"
    shared.mkdir()
    user = copy_of(smoke_repo, tmp_path / "user")
    shutil.move(user / ".dvc" / "cache", shared / "cache")
    sh(["dvc", "cache", "dir", "--local", str(shared / "cache")], cwd=user)
    sh(["dvc", "config", "--local", "cache.shared", "group"], cwd=user)
    sh(["git", "init", "--quiet", "--bare", str(shared / "origin.git")], cwd=tmp_path)
    sh(["git", "remote", "add", "cluster", str(shared / "origin.git")], cwd=user)
    sh(["git", "push", "--quiet", "cluster", "HEAD:main"], cwd=user)
    return user


def slurm_cli(user: Path, *args: str, check: bool = True) -> str:
    common = ["--git-remote", "cluster", "--workspaces", str(user.parent / "shared" / "ws")]
    return sh(["pubmedqa-gpt2", "slurm", *args, *common], cwd=user, check=check)


def submit(user: Path, *overrides: str) -> str:
    """`slurm submit` at smoke size (a CPU each); the job array's id."""
    out = slurm_cli(user, "submit", *overrides, "--gpus-per-task", "0", "--cpus-per-task", "1")
    return re.search(r"as job array (\d+)", out).group(1)


def status(user: Path) -> list[dict]:
    return json.loads(slurm_cli(user, "status", "--json").splitlines()[-1])["tasks"]


def sweep_folder(user: Path) -> Path:
    (folder,) = (user.parent / "shared" / "ws").iterdir()
    return folder


def working_tree(repo: Path) -> dict[str, tuple[int, int]]:
    """Every file outside .git (.dvc/tmp included) with its size and modification time."""
    return {
        str(path.relative_to(repo)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(repo.rglob("*"))
        if path.is_file() and ".git" not in path.relative_to(repo).parts[:1]
    }


def metrics_files(repo: Path, rev: str) -> dict[str, dict]:
    return {name: committed_json(repo, rev, f"metrics/{name}") for name in METRICS}


def params_of(repo: Path, rev: str) -> dict:
    import yaml

    return yaml.safe_load(sh(["git", "show", f"{rev}:params.yaml"], cwd=repo))


# ---- GPUs: SLURM's allocation is the claim ----

CLAIM = """
import json, os, sys, time
from pubmedqa_gpt2 import gpu_claims
start = time.time()
got = gpu_claims.claim_gpus(1)
time.sleep(3)
print(json.dumps({"devices": got, "start": start, "claimed": time.time() - 3, "end": time.time()}))
"""


def test_two_jobs_on_one_node_each_with_its_gpu_0_take_no_lock_and_never_wait(slurm, tmp_path):
    """Under device cgroups every job sees its own GPU as 0: a lock named after it would make
    the second job wait for the first (issue 27's bug)."""
    locks = tmp_path / "locks"
    script = tmp_path / "claim.py"
    script.write_text(CLAIM)
    env = {"CUDA_VISIBLE_DEVICES": "0", "PUBMEDQA_GPU_LOCK_DIR": str(locks),
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    job = sh(
        ["sbatch", "--parsable", "--array=0-1", "--cpus-per-task=1",
         f"--output={tmp_path}/claim-%a.out", "--wrap", f"{sys.executable} {script}"],
        cwd=tmp_path, env=env,
    ).strip()  # fmt: skip
    wait_gone(slurm, job, timeout=120)
    runs = [json.loads((tmp_path / f"claim-{i}.out").read_text().splitlines()[-1]) for i in (0, 1)]
    assert [r["devices"] for r in runs] == [["0"], ["0"]]
    for run in runs:
        assert run["claimed"] - run["start"] < 1.0, runs  # claimed at once: no wait
    first, second = sorted(runs, key=lambda r: r["start"])
    assert second["claimed"] < first["end"], runs  # both held "GPU 0" at the same time
    assert not locks.exists() or list(locks.iterdir()) == []  # no lock taken


# ---- One experiment on two tasks: srun, torch.distributed.run's rendezvous ----


@needs_tokenizer
def test_one_experiment_on_two_slurm_tasks_equals_two_local_processes(
    slurm, tmp_path, tokenizer, tiny_model_params
):
    from pubmedqa_gpt2.core import paths
    from pubmedqa_gpt2.data.prepare import write_split

    from .committed import write_params
    from .training_helpers import records

    runs = {}
    for where in ("local", "slurm"):
        folder = tmp_path / where
        (folder / paths.TRAIN_FILE.parent).mkdir(parents=True)
        write_split(folder / paths.TRAIN_FILE, records(12), tokenizer, max_length=128)
        write_split(folder / paths.DEV_FILE, records(6, offset=100), tokenizer, max_length=128)
        train = {"epochs": 1, "batch_size": 4, "eval_batch_size": 4, "num_processes": 2}
        write_params(folder, {"model": tiny_model_params.model_dump(), "train": train})
        # As torch.distributed.run sets it for 2 processes of one agent (it does not for 1).
        env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        if where == "local":
            output = sh([sys.executable, "-m", "stages.train"], cwd=folder, env=env)
        else:
            log = tmp_path / "two-tasks.log"
            job = sh(["sbatch", "--parsable", "--nodes=1", "--ntasks=2", "--cpus-per-task=1",
                      f"--output={log}", "--wrap", f"{sys.executable} -m stages.train"],
                     cwd=folder, env=env).strip()  # fmt: skip
            wait_gone(slurm, job, timeout=300)  # `sbatch --wait` polls slowly (pitfall 16)
            output = log.read_text()
        runs[where] = (folder, output)
    assert "2 processes through srun: 2 SLURM tasks x 1" in runs["slurm"][1]
    local, on_slurm = (json.loads((f / paths.TRAIN_METRICS).read_text()) for f, _ in runs.values())
    assert on_slurm == local and local["steps"] == 2  # 12 examples, 2 x batch 4: 2 steps
    weights = [(f / paths.FINETUNED / "model.safetensors").read_bytes() for f, _ in runs.values()]
    assert weights[0] == weights[1]
    perf = json.loads((runs["slurm"][0] / paths.TRAIN_PERF).read_text())
    assert perf["processes"] == 2 and len(perf["ranks"]) == 2


# ---- Failures stay local and visible ----


@needs_pubmedqa
@needs_tokenizer
def test_a_task_with_a_bad_param_fails_with_its_error_and_the_other_lands(slurm, smoke, tmp_path):
    user = user_repository(smoke[0], tmp_path)
    before = working_tree(user)
    job = submit(user, "-S", "train.warmup_ratio=0.0,-1")  # the committed 0.0: cached
    wait_gone(slurm, job, timeout=600)
    assert working_tree(user) == before  # neither task wrote in it, nor in its .dvc/tmp
    done, failed = status(user)
    assert (done["state"], failed["state"]) == ("done", "failed"), (done, failed)
    assert failed["error"] == (
        "params.yaml: train.warmup_ratio: Input should be greater than or equal to 0 (got -1)"
    ), failed
    log = (sweep_folder(user) / "logs" / "1.log").read_text()
    assert f"error: {failed['experiment']}: {failed['error']}" in log
    # SLURM saw the failure (no accounting here: scontrol, within MinJobAge).
    shown = slurm.run("scontrol", "show", "job", f"{job}_1").stdout
    assert "JobState=FAILED" in shown and "ExitCode=1:0" in shown, shown
    assert set(experiment_revs(user)) == {done["experiment"]}  # the other one landed
    assert (
        done["accuracy"]
        == json.loads((user / "metrics/eval_finetuned.json").read_text())["accuracy"]
    )  # the committed params: the smoke run's own result, from the cache


# ---- Preemption: a signalled task checkpoints, is requeued, resumes, ends the same ----


# ---- A seed sweep as one job array, one task preempted on the way ----


def signal_mid_training_and_release(slurm, user: Path, job: str, index: int) -> str:
    """`scancel -b --signal=USR1` to task `index` after 2 of its 10 training steps (as SLURM
    warns before a time limit), then, once it is requeued, release it at once instead of after
    SLURM's ~2 min hold (`BeginTime`). Returns the task's id."""
    task = f"{job}_{index}"
    workspace = sweep_folder(user) / "tasks" / str(index)
    running = workspace / "models" / "checkpoints" / "running.json"
    logged = workspace / "dvclive" / "metrics.json"  # first written at step 2 (logging_steps)

    def training_at_step_2() -> bool:
        try:
            return logged.stat().st_mtime >= running.stat().st_mtime
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 600
    while not training_at_step_2():
        assert time.monotonic() < deadline and task_state(slurm, task), "training never started"
        time.sleep(0.1)
    slurm.run("scancel", "-b", "--signal=USR1", task)
    log = sweep_folder(user) / "logs" / f"{index}.log"
    while (state := task_state(slurm, task)) != "PENDING":
        assert state, f"the task ended without being requeued:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, slurm.run("scontrol", "show", "job", task).stdout
        time.sleep(0.2)
    time.sleep(1.5)  # not in the requeue's second, or the relaunch fails (NOTES.md, pitfall 9)
    slurm.run("scontrol", "update", f"jobid={task}", "StartTime=now")
    return task


@needs_pubmedqa
@needs_tokenizer
def test_a_seed_sweep_lands_every_experiment_as_dvc_exp_run_would_one_requeued_on_the_way(
    slurm, smoke, tmp_path, request
):
    """Two seeds as one array; task 0 is signalled mid-training, requeued and resumes from its
    checkpoint. Every experiment lands with the metrics `dvc exp run` gives the same seed
    without any break (train.resumable_checkpoints only decides what a checkpoint keeps)."""
    user = user_repository(smoke[0], tmp_path)
    before = working_tree(user)
    started = time.monotonic()
    job = submit(user, "-S", "train.seed=0,1", "-S", "train.resumable_checkpoints=true")
    signal_mid_training_and_release(slurm, user, job, 0)
    wait_gone(slurm, job, timeout=1200)
    landed = time.monotonic() - started
    log = (sweep_folder(user) / "logs" / "0.log").read_text()
    stopped = re.search(r"stopped on request at step (\d+)", log)
    resumed = re.search(r"resuming from models/checkpoints/checkpoint-(\d+)", log)
    assert stopped and resumed and stopped.group(1) == resumed.group(1), log[-3000:]
    assert "restart 1" in log and "restart 1" not in (sweep_folder(user) / "logs/1.log").read_text()
    # No task wrote in the user's working tree nor in its .dvc/tmp.
    assert working_tree(user) == before
    rows = status(user)  # brings the experiments in with `dvc exp pull`
    assert [r["state"] for r in rows] == ["done"] * 2, rows
    revs = experiment_revs(user)
    assert sorted(revs) == sorted(r["experiment"] for r in rows)
    seeds = {params_of(user, rev)["train"]["seed"]: name for name, rev in revs.items()}
    assert sorted(seeds) == [0, 1]

    # The same experiments run by `dvc exp run --queue -S train.seed=0,1`.
    queued = request.getfixturevalue("seed_sweep")
    for rev in experiment_revs(queued).values():
        seed = params_of(queued, rev)["train"]["seed"]
        on_slurm = metrics_files(user, revs[seeds[seed]])
        assert on_slurm == metrics_files(queued, rev), f"seed {seed}"  # to the last bit
    step = int(stopped.group(1))
    perf = json.loads(sh(["git", "show", f"{revs[seeds[0]]}:perf/train.json"], cwd=user))
    assert (perf["resumed_from_step"], perf["steps_this_run"]) == (step, 10 - step)
    accuracies = {r["experiment"]: r["accuracy"] for r in rows}
    shown = shown_experiments(user)
    for name, entry in shown.items():
        data = entry["data"]["metrics"]["metrics/eval_finetuned.json"]["data"]
        assert data["accuracy"] == accuracies[name]

    (group,) = json.loads(
        sh(["pubmedqa-gpt2", "summary", "--over", "train.seed", "--json"], cwd=user)
    )
    assert group["n"] == 2 and sorted(group["experiments"]) == sorted(revs)

    # A model out of the shared cache: `dvc exp apply` + `dvc checkout`, no copy from a remote.
    name = seeds[1]
    sh(["dvc", "exp", "apply", name], cwd=user)
    sh(["dvc", "checkout"], cwd=user)
    task = next(r["task"] for r in rows if r["experiment"] == name)
    made = sweep_folder(user) / "tasks" / str(task) / "models/finetuned/model.safetensors"
    assert (user / "models/finetuned/model.safetensors").read_bytes() == made.read_bytes()
    assert not (user / ".dvc" / "cache").exists()
    print(
        f"2-task seed sweep: submit to all landed in {landed:.1f} s; task 0 signalled at step "
        f"{step}, resumed from checkpoint-{step}, metrics identical"
    )


# ---- The fixture itself: stopping a cluster leaves no process of it behind ----


def test_stopping_a_cluster_with_a_job_still_running_leaves_none_of_its_processes(tmp_path):
    """A test that fails mid-sweep leaves jobs running; slurmd's job processes (slurmstepd and
    the job's own) detach from it, so ending the daemons alone would leave them behind."""
    reason = slurm_cluster.missing_reason()
    if reason:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="pubmedqa-slurm-"))
    base.chmod(0o755)
    cluster = slurm_cluster.start(base / "cluster")
    try:
        # A job slow to end, as a task whose processes outlive the batch shell's TERM.
        job = cluster.run(
            "sbatch", "--parsable", f"--output={tmp_path}/job.out",
            "--wrap", "trap '' TERM; sleep 300 & wait $!; sleep 300",
        ).stdout.strip()  # fmt: skip
        while task_state(cluster, job) != "RUNNING":
            time.sleep(0.2)
        while not slurm_cluster.job_processes(cluster):
            time.sleep(0.1)
        daemons = [proc.pid for proc in cluster.processes]
    finally:
        slurm_cluster.stop(cluster)
        shutil.rmtree(base, ignore_errors=True)
    assert slurm_cluster.job_processes(cluster) == []
    for pid in daemons:
        state = Path(f"/proc/{pid}/stat")
        assert not state.exists() or state.read_text().rsplit(")", 1)[1].split()[0] == "Z"
