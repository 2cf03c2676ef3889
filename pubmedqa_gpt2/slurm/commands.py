"""The `pubmedqa-gpt2 slurm` commands: `submit` a sweep as one job array, `status` of it."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.slurm.settings import SETTINGS_FILE, ClusterSettings, load_settings

# Options that override a setting of slurm.local.yaml: (flag, setting, type).
SETTING_OPTIONS = (
    ("--workspaces", "workspaces", Path),
    ("--git-remote", "git_remote", str),
    ("--partition", "partition", str),
    ("--account", "account", str),
    ("--gpus-per-task", "gpus_per_task", int),
    ("--cpus-per-task", "cpus_per_task", int),
    ("--mem", "mem", str),
    ("--time", "time", str),
    ("--nodes", "nodes", int),
    ("--max-parallel", "max_parallel", int),
    ("--signal-seconds", "signal_seconds", int),
)


def add_parser(commands) -> None:
    """`slurm submit` and `slurm status` under the CLI's subcommands."""
    slurm = commands.add_parser("slurm", help="sweeps as SLURM job arrays (docs/CLUSTER.md)")
    actions = slurm.add_subparsers(dest="slurm_command", required=True)
    submit = actions.add_parser("submit", help="submit a sweep of experiments as one job array")
    submit.add_argument(
        "-S", "--set-param", dest="set_param", action="append", default=[], metavar="KEY=VALUES",
        help="as `dvc exp run -S`: train.seed=0,1,2 sweeps; several -S give their product",
    )  # fmt: skip
    submit.add_argument("--dry-run", action="store_true", help="print the script, submit nothing")
    status = actions.add_parser("status", help="each experiment of a sweep, and its state")
    status.add_argument("--sweep", help="the sweep's name (default: this repository's last)")
    status.add_argument("--json", action="store_true", help="print JSON")
    for parser in (submit, status):
        parser.add_argument(
            "--settings", type=Path, default=SETTINGS_FILE,
            help=f"the site's settings (default: {SETTINGS_FILE}, untracked)",
        )  # fmt: skip
        for flag, key, kind in SETTING_OPTIONS:
            parser.add_argument(flag, dest=key, type=kind, help=f"overrides `{key}` of --settings")
    submit.add_argument(
        "--sbatch", action="append", metavar="OPTION", help="an extra #SBATCH option (repeatable)"
    )
    submit.add_argument(
        "--no-requeue", dest="requeue", action="store_false", default=None,
        help="a preempted or time-limited task is not requeued (default: `requeue` of --settings)",
    )  # fmt: skip


def settings_from(args: argparse.Namespace) -> ClusterSettings:
    keys = [key for _, key, _ in SETTING_OPTIONS] + ["requeue", "sbatch"]
    given = {key: getattr(args, key) for key in keys if getattr(args, key, None) is not None}
    return load_settings(args.settings, given)


def repository() -> Path:
    got = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if got.returncode:
        raise StageError("not in a git repository: run this in your clone of the project")
    return Path(got.stdout.strip())


def run(args: argparse.Namespace) -> str:
    """The command's output."""
    repo = repository()
    if not args.settings.is_absolute():
        args.settings = repo / args.settings
    settings = settings_from(args)
    if args.slurm_command == "submit":
        from pubmedqa_gpt2.slurm.submit import submit

        return submit(repo, settings, args.set_param, args.dry_run)
    from pubmedqa_gpt2.slurm.status import status

    return status(repo, settings, args.sweep, args.json)
