"""Several data-parallel processes (`pubmedqa_gpt2/training/launch.py`): the command, the
first node of a SLURM job, and what each way of ending means. The processes themselves run
here (two on a CPU, last) and tests/test_cluster.py (through srun)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from pubmedqa_gpt2.core import paths
from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.training import launch
from pubmedqa_gpt2.training.stop import STOP_FILE_ENV, STOPPED_EXIT

from .training_helpers import curve, read_metrics, read_perf, run_module, set_params

SLURM = {"SLURM_JOB_ID": "12345", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "gpu07"}


def test_one_machine_runs_torch_distributed_run_standalone():
    assert launch.launch_command(3, "stages.pretrain", "pretrain", {}) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3",
        "-m", "stages.pretrain",
    ]  # fmt: skip


def test_a_slurm_job_of_two_tasks_runs_one_node_agent_per_task(capsys):
    assert launch.launch_command(4, "stages.train", "train", SLURM) == [
        "srun",
        "--ntasks=2",
        "--kill-on-bad-exit=1",
        "bash",
        "-c",
        launch.NODE_AGENT,
        sys.executable,
        "--nnodes=2",
        "--nproc_per_node=2",
        "--master_addr=gpu07",
        "--master_port=32345",
        "-m",
        "stages.train",
    ]  # fmt: skip  (port: 20000 + 12345 % 20000)
    assert capsys.readouterr().err == (
        "4 processes through srun: 2 SLURM tasks x 2, meeting at gpu07:32345\n"
    )
    # job ids 20000 apart share a port; 45678 -> 20000 + 5678
    command = launch.launch_command(2, "stages.train", "train", SLURM | {"SLURM_JOB_ID": "45678"})
    assert "--master_port=25678" in command


def test_processes_that_do_not_divide_among_the_tasks_are_refused_naming_the_phase(ended):
    with pytest.raises(StageError, match=r"^pretrain\.num_processes: 3 processes do not"):
        ended(0, SLURM, num_processes=3, section="pretrain")
    assert ended.commands == []


def test_processes_that_do_not_divide_among_the_tasks_are_refused():
    with pytest.raises(StageError) as err:
        launch.launch_command(3, "stages.pretrain", "pretrain", SLURM)
    assert str(err.value) == (
        "pretrain.num_processes: 3 processes do not divide among the 2 tasks of SLURM job "
        "12345 (SLURM_NTASKS); make it a multiple"
    )


def test_the_first_node_of_a_nodelist(tmp_path, monkeypatch):
    assert launch.first_node({"SLURM_JOB_NODELIST": "gpu07"}) == "gpu07"
    assert launch.first_node({"SLURM_NODELIST": "cpu3"}) == "cpu3"  # older SLURM's name
    scontrol = tmp_path / "scontrol"
    scontrol.write_text('#!/bin/bash\n[ "$3" = "quiet[1-2]" ] && exit 0\n'
                        '[ "$1 $2 $3" = "show hostnames gpu[07-08]" ] || exit 1\n'
                        'printf "gpu07\\ngpu08\\n"\n')  # fmt: skip
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert launch.first_node({"SLURM_JOB_NODELIST": "gpu[07-08]"}) == "gpu07"
    assert launch.first_node({"SLURM_NODELIST": "gpu[07-08]"}) == "gpu07"
    assert launch.first_node({"SLURM_JOB_NODELIST": "node-X1"}) == "node-X1"  # no scontrol
    with pytest.raises(StageError) as err:  # scontrol fails: one line, its own words
        launch.first_node({"SLURM_JOB_NODELIST": "bad[1-"})
    assert str(err.value) == "scontrol show hostnames bad[1-: no host"
    with pytest.raises(StageError, match=r"^scontrol show hostnames quiet\[1-2\]: no host$"):
        launch.first_node({"SLURM_JOB_NODELIST": "quiet[1-2]"})  # succeeds, names no host


@pytest.fixture
def ended(monkeypatch):
    """launch() with the processes ending with a given status; the commands it ran."""
    ran = []

    def run(code: int, environ: dict, num_processes: int = 2, section: str = "train"):
        monkeypatch.setattr(launch.subprocess, "call", lambda cmd: ran.append(cmd) or code)
        launch.launch(num_processes, "stages.train", section, environ)

    run.commands = ran
    return run


def test_processes_that_succeed_end_the_launch_quietly(ended):
    ended(0, {})
    assert ended.commands == [launch.launch_command(2, "stages.train", "train", {})]


def test_processes_stopped_on_request_exit_for_requeue(ended, tmp_path):
    stop = tmp_path / "stop"
    stop.touch()
    with pytest.raises(SystemExit) as exit_info:
        ended(STOPPED_EXIT, {STOP_FILE_ENV: str(stop)})
    assert exit_info.value.code == STOPPED_EXIT
    with pytest.raises(StageError, match=r"exit status 75\); see their output above$"):
        ended(STOPPED_EXIT, {STOP_FILE_ENV: str(tmp_path / "no-stop-file")})
    with pytest.raises(SystemExit) as exit_info:  # asked to stop, whatever status they end with
        ended(1, {STOP_FILE_ENV: str(stop)})
    assert exit_info.value.code == STOPPED_EXIT


def test_killed_or_failed_processes_are_one_line_naming_the_phase(ended):
    with pytest.raises(StageError) as err:
        ended(-9, {}, section="pretrain")
    assert str(err.value).startswith("training processes killed by signal 9: probably out of")
    assert "pretrain." in str(err.value)  # the advice names phase 1's settings
    with pytest.raises(StageError) as err:
        ended(1, {})
    assert str(err.value) == "training processes failed (exit status 1); see their output above"


@pytest.mark.parametrize(
    ("environ", "processes", "message"),
    [
        ({}, 2, "train.num_processes: 2 processes but 1 GPU(s) visible"),
        (SLURM, 4, "train.num_processes: 2 processes on each of 2 nodes but 1 GPU(s) visible"),
    ],
)
def test_more_processes_than_gpus_are_refused_before_any_starts(
    ended, monkeypatch, environ, processes, message
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(StageError) as err:
        ended(0, environ, num_processes=processes)
    assert str(err.value) == message and ended.commands == []
    ended(0, environ, num_processes=processes // 2)  # one per GPU: fine


@pytest.mark.child_process
def test_two_cpu_processes(workdir, tiny):
    set_params(workdir, tiny(epochs=2, num_processes=2, warmup_ratio=0.5, lr_scheduler="linear"))
    result = run_module(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    # 12 examples over 2 processes of batch 4: 2 steps per epoch, 4 in all.
    assert read_metrics(workdir)["steps"] == 4
    # Warmup is half of the run's 4 optimizer steps: 2 (counted for one process of batch 4,
    # 6 steps, it would be 3). Linear schedule, peak 1e-3; step k runs at the schedule's value
    # after k - 1 steps: warmup 0/2, 1/2, then the peak, then (4 - 3) / (4 - 2) of it.
    lr = curve(workdir, "train/learning_rate")
    assert [lr[step] for step in (1, 2, 3, 4)] == pytest.approx([0.0, 5e-4, 1e-3, 5e-4])
    assert (workdir / paths.FINETUNED / "model.safetensors").is_file()
    # Memory is reported for every process, not only the first.
    ranks = read_perf(workdir)["ranks"]
    assert len(ranks) == 2 and all(r["device"] == "cpu" and r["peak_rss_bytes"] > 0 for r in ranks)


def test_launch_reads_this_process_s_environment_and_names_train_by_default(monkeypatch, tmp_path):
    """No environ given: os.environ is read (here its stop file, so failed processes mean a
    stop on request); no section given: the messages name the train section."""
    for name in ("SLURM_JOB_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(launch.subprocess, "call", lambda cmd: 1)
    stop = tmp_path / "stop"
    stop.touch()
    monkeypatch.setenv(STOP_FILE_ENV, str(stop))
    with pytest.raises(SystemExit) as exit_info:
        launch.launch(2, "stages.train")
    assert exit_info.value.code == STOPPED_EXIT
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(StageError) as err:
        launch.launch(2, "stages.train")
    assert str(err.value) == "train.num_processes: 2 processes but 1 GPU(s) visible"
