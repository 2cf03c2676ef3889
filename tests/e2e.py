"""The machinery of the end-to-end tests: running git, dvc and the CLI as a user would, offline,
in temporary clones of this repository, and reading back what they wrote.

No tests here. The fixtures built on it (`source`, `smoke`, `seed_sweep`: the working tree as a
repository, the README's quickstart run once, a seed sweep through DVC's queue) are in
`tests/conftest.py`; the tests are in `test_pipeline.py`, `test_experiments.py`,
`test_remotes.py` and `test_cluster.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from .conftest import PUBMEDQA_DIR, ROOT, TOKENIZER_DIR

# Absolute paths: commands run inside temporary clones.
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "PUBMEDQA_DIR": str(PUBMEDQA_DIR),
    "GPT2_TOKENIZER_DIR": str(TOKENIZER_DIR),
}


def sh(cmd: list[str] | str, cwd: Path, env: dict | None = None, check: bool = True) -> str:
    """Run a command (a list, or a shell string) and return stdout+stderr."""
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=os.environ | OFFLINE | (env or {}),
        shell=isinstance(cmd, str),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    output = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{output[-4000:]}")
    return output


def snapshot_working_tree(dest: Path, root: Path | None = None) -> Path:
    """A repository whose HEAD is this checkout's working tree as it is on disk: a clone of
    HEAD with every tracked and untracked (not ignored) file copied over, deleted files
    removed, and the result committed. The e2e tests clone it, so that they test the code
    being edited, uncommitted changes included, not the last commit. (`root`: another
    checkout than this one, as the test of this function passes.)"""
    root = ROOT if root is None else root
    sh(["git", "clone", "--quiet", str(root), str(dest)], cwd=dest.parent)
    listed = sh(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root)
    on_disk = {name for name in listed.split("\0") if name and (root / name).is_file()}
    for name in on_disk:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, dest / name)
    for name in sh(["git", "ls-files", "-z"], cwd=dest).split("\0"):
        if name and name not in on_disk:
            (dest / name).unlink()
    sh(["git", "add", "-A"], cwd=dest)
    if sh(["git", "status", "--porcelain"], cwd=dest):
        sh(["git", "commit", "--quiet", "-m", "the working tree under test"], cwd=dest)
    return dest


def clone(source: Path, dest: Path) -> Path:
    """A fresh clone of the code under test with the official data copied in (offline)."""
    sh(["git", "clone", "--quiet", str(source), str(dest)], cwd=dest.parent)
    sh(["make", "offline-data"], cwd=dest)
    return dest


def seed_hub_cache(hub: Path, tokenizer_dir: Path, model_id: str = "gpt2-large") -> dict:
    """A Hugging Face cache holding `model_id`'s tokenizer (GPT-2's, shared by every size).

    The committed params name the hub's gpt2-large; no hub is reachable here, so its cache
    entry is laid out from the real tokenizer files. Returns the env that points at it.
    """
    from transformers import GPT2Config

    snapshot = hub / f"models--{model_id}" / "snapshots" / "offline"
    snapshot.mkdir(parents=True)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, snapshot / f.name)
    GPT2Config(n_layer=36, n_embd=1280, n_head=20).save_pretrained(snapshot)
    (hub / f"models--{model_id}" / "refs").mkdir()
    (hub / f"models--{model_id}" / "refs" / "main").write_text("offline")
    return {"HF_HUB_CACHE": str(hub)}


def ran_stages(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


# ---- The smoke run: its stages, its outputs, copies of it ----


ALL_STAGES = [
    "validate", "download", "ingest", "prepare", "pretrain", "train", "evaluate@base",
    "evaluate@finetuned", "compare", "report",
]  # fmt: skip


# What a train.* param reruns: never evaluate@base, whose model does not change. `validate`
# runs on every params change, first; its output does not change, so it reruns nothing.
AFTER_TRAIN = ["compare", "evaluate@finetuned", "report", "train", "validate"]


def read_json(path: Path):
    return json.loads(path.read_text())


def without_perf(metrics: dict) -> dict:
    """A metrics file less its `perf` part (timing and memory vary from run to run)."""
    return {k: v for k, v in metrics.items() if k != "perf"}


def metrics_of(repo: Path) -> dict[str, dict]:
    return {p.name: without_perf(read_json(p)) for p in sorted((repo / "metrics").glob("*.json"))}


def commit_all(repo: Path, message: str) -> None:
    sh(["git", "add", "-A"], cwd=repo)
    sh(["git", "commit", "--quiet", "-m", message], cwd=repo)


def once_per_session(tmp_path_factory, name: str, make) -> Path:
    """`make(folder)` run once per test session, also under pytest-xdist: the first worker
    that asks makes it under a file lock in the run's shared temporary folder; the others wait
    for it and reuse it. Returns the folder, which its users only read (or copy)."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the folder every worker's own basetemp lies in
    folder, done = shared / name, shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed attempt left
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


QUICKSTART_MARK = "<!-- offline quickstart:"


# The README's placeholders for the offline copies, and what the fixture puts in their place.
PLACEHOLDERS = {"/path/to/pubmedqa": PUBMEDQA_DIR, "/path/to/gpt2-tokenizer": TOKENIZER_DIR}


def readme_quickstart(readme: str) -> str:
    """The fenced bash block that follows the README's offline-quickstart mark."""
    assert readme.count(QUICKSTART_MARK) == 1, f"README.md needs {QUICKSTART_MARK!r} once"
    after = readme.split(QUICKSTART_MARK)[1].split("\n", 1)[1]
    assert after.startswith("```bash\n"), "the mark must be right above a ```bash block"
    return after.removeprefix("```bash\n").split("\n```\n")[0]


def copy_of(smoke_repo: Path, dest: Path) -> Path:
    """An independent copy of the smoke repository (git, DVC cache, outputs, checkpoints)."""
    shutil.copytree(smoke_repo, dest, symlinks=True)
    return dest


def output_bytes(repo: Path) -> dict[str, bytes]:
    """Every file of the fine-tuned model, the curves, the metrics and the perf records."""
    files = [
        *(repo / "models/finetuned").rglob("*"),
        *(repo / "dvclive").rglob("*"),
        *(repo / "metrics").glob("*.json"),
        *(repo / "perf").glob("*.json"),
        *(repo / "eval").rglob("*"),
    ]
    return {str(f.relative_to(repo)): f.read_bytes() for f in files if f.is_file()}


def set_params(repo: Path, **changes) -> None:
    """Edit params.yaml as a user would: dotted keys, values as in YAML."""
    import yaml

    params = yaml.safe_load((repo / "params.yaml").read_text())
    for dotted, value in changes.items():
        *path, key = dotted.split(".")
        section = params
        for part in path:
            section = section[part]
        section[key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


SET_PARAM = """
import sys
from ruamel.yaml import YAML
yaml = YAML()
doc = yaml.load(open("params.yaml"))
section, key = sys.argv[1].split(".")
doc[section][key] = YAML(typ="safe").load(sys.argv[2])  # "3e-4" -> float, "2" -> int
yaml.dump(doc, open("params.yaml", "w"))
"""


def read_json_text(text: str):
    """The JSON document in a command's output (dvc may print warnings before it)."""
    return json.loads(text[min(i for i in (text.find("["), text.find("{")) if i >= 0) :])


def readme_line(prefix: str) -> str:
    """The README's command line that starts with `prefix`, less its comment."""
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith(prefix):
            return line.split("  #")[0].strip()
    raise AssertionError(f"README.md has no line starting with {prefix!r}")


def read_artifacts(repo: Path) -> list:
    """The artifacts dvc.yaml declares, as DVC reads them (params interpolated)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        return list(dvc.artifacts.read()["dvc.yaml"].values())


# ---- Experiments: DVC's queue, `dvc exp show`, the files of each experiment's commit ----


def run_queue(repo: Path, n: int) -> str:
    """Start one queue worker and wait (15 min at most) until its `n` experiments succeeded or
    one failed; returns the last `dvc queue status`."""
    sh(["dvc", "queue", "start", "--jobs", "1"], cwd=repo)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = sh(["dvc", "queue", "status"], cwd=repo)
        if status.count("Success") == n or "Failed" in status:
            break
        time.sleep(5)
    return status


def shown_experiments(repo: Path) -> dict[str, dict]:
    """{experiment name: its entry (rev, params, metrics)} from `dvc exp show --json`."""
    table = read_json_text(sh(["dvc", "exp", "show", "--json"], cwd=repo))
    return {
        rev["name"]: rev
        for commit in table
        for group in commit.get("experiments") or []
        for rev in group["revs"]
    }


def experiment_revs(repo: Path) -> dict[str, str]:
    """{experiment name: its git commit} from `dvc exp show --json`."""
    return {name: rev["rev"] for name, rev in shown_experiments(repo).items()}


def committed_json(repo: Path, rev: str, path: str) -> dict:
    """A file as the experiment's own commit holds it (not through DVC)."""
    return json.loads(sh(["git", "show", f"{rev}:{path}"], cwd=repo))


def committed_json_params(repo: Path, rev: str) -> dict:
    import yaml

    return yaml.safe_load(sh(["git", "show", f"{rev}:params.yaml"], cwd=repo))


def experiment_that_moved_accuracy(repo: Path, revs: dict[str, str]) -> str:
    """The first experiment (by name) whose comparison differs from the baseline commit's.

    `dvc metrics diff` lists only the figures that changed, and on the smoke model two seeds can
    answer every test question alike (CI met one): the diff tests need one whose answers moved.
    Names are random, so the choice is made from the committed files, not the name."""
    baseline = committed_json(repo, "HEAD", "metrics/compare.json")["accuracy"]
    moved = [
        name
        for name, rev in sorted(revs.items())
        if committed_json(repo, rev, "metrics/compare.json")["accuracy"] != baseline
    ]
    assert moved, "every experiment of the seed sweep compared as the baseline did"
    return moved[0]


def git(*args, cwd):
    """A git command in `cwd`, quietly; fails the test if it fails."""
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)
