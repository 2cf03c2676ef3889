"""Shared fixtures: where the offline data and tokenizer are, and small helpers.

`.ci/run` sets PUBMEDQA_DIR and GPT2_TOKENIZER_DIR to the copies in `../shared`. Without a
variable or `../shared`, a machine with a network fetches them once into a cache folder
(`tests/provision.py`; the header of the run says where each came from); offline, the tests
that need them skip with the reason shown by `pytest -ra`. Under CI (`CI=true`) a missing
data path fails the run instead: a green CI must mean those tests ran. The folders found
are exported in the two variables, for the benchmarks and the commands the tests run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .provision import locate_for_this_run, reason_to_stop

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


# Under pytest-xdist, each worker's torch (and the stages it runs) gets its share of the cores:
# n workers of all-core torch on the same cores slowed test_train + test_evaluate by a third.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT") and "OMP_NUM_THREADS" not in os.environ:
    _share = (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ["OMP_NUM_THREADS"] = str(max(1, _share))

# The pipelines the tests run train and evaluate small models on a CPU, where glibc's malloc
# maps afresh, and the kernel zero-fills, the blocks freed the step before (logits above its
# 32 MiB mmap limit); kept for reuse, the suite runs faster (docs/TESTING.md). Set here for the
# test processes and what they start, not in the stages: for GPT-2 Large on a CPU it costs more
# peak memory (docs/PERFORMANCE.md, "Memory freed and allocated again, every step"). A value
# already in the environment wins.
for _name, _value in (("MALLOC_MMAP_THRESHOLD_", 128 << 20), ("MALLOC_TRIM_THRESHOLD_", 512 << 20)):
    os.environ.setdefault(_name, str(_value))

# Every `dvc` command the tests run would start DVC's usage-analytics daemon: a second Python
# process importing DVC (seen taking most of a core under `make mutate`), whose report no
# machine here can send. DVC_NO_ANALYTICS is DVC's documented switch; set for the test
# processes and the commands they start.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

TEST_DATA = locate_for_this_run(SHARED)
PUBMEDQA_DIR = TEST_DATA.pubmedqa
TOKENIZER_DIR = TEST_DATA.tokenizer
for _env, _path in (("PUBMEDQA_DIR", PUBMEDQA_DIR), ("GPT2_TOKENIZER_DIR", TOKENIZER_DIR)):
    if _path is not None:
        os.environ[_env] = str(_path)


def pytest_report_header(config) -> list[str]:
    return ["test data:", *(f"  {line}" for line in TEST_DATA.found)]


def pytest_sessionstart(session) -> None:
    """A fetch that failed (a changed upstream: wrong md5) stops the run. Under CI, the
    offline data is part of the contract: stop at once when it is missing."""
    reason = reason_to_stop(TEST_DATA, os.environ)
    if reason:
        pytest.exit(reason, returncode=1)


NO_PUBMEDQA = (
    "PubMedQA data not found: set PUBMEDQA_DIR to a copy (../shared/pubmedqa), "
    "or leave it unset and run once with a network to fetch it"
)
NO_TOKENIZER = (
    "GPT-2 tokenizer not found: set GPT2_TOKENIZER_DIR to a copy (../shared/gpt2-tokenizer), "
    "or leave it unset and run once with a network to fetch it"
)
NO_CHROMIUM = "no headless Chromium at /usr/bin/chromium"
needs_pubmedqa = pytest.mark.skipif(PUBMEDQA_DIR is None, reason=NO_PUBMEDQA)
needs_tokenizer = pytest.mark.skipif(TOKENIZER_DIR is None, reason=NO_TOKENIZER)


@pytest.fixture(scope="session")
def pubmedqa_dir() -> Path:
    if PUBMEDQA_DIR is None:
        pytest.skip(NO_PUBMEDQA)
    return PUBMEDQA_DIR


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    if TOKENIZER_DIR is None:
        pytest.skip(NO_TOKENIZER)
    return TOKENIZER_DIR


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from pubmedqa_gpt2.model.loading import load_tokenizer

    return load_tokenizer(tokenizer_dir)


@pytest.fixture
def tiny_model_params(tokenizer_dir):
    """A 2-layer random GPT-2 with the real tokenizer: the offline stand-in for gpt2-large."""
    from .committed import committed_params

    model = {
        "name": "gpt2",
        "init": "random",
        "tokenizer": str(tokenizer_dir),
        "overrides": {"n_layer": 2, "n_embd": 64, "n_head": 2},
        "seed": 0,
    }
    return committed_params({"model": model}).model


# ---- For the training stages (tests/test_train.py, test_checkpoints.py, ...) ----


@pytest.fixture
def workdir(tmp_path, monkeypatch, tokenizer):
    """A stage working directory with prepared splits of 12 (train) and 6 (dev) examples."""
    from pubmedqa_gpt2.core import paths
    from pubmedqa_gpt2.data.prepare import write_split

    from .training_helpers import records

    prepared = tmp_path / paths.TRAIN_FILE.parent
    prepared.mkdir(parents=True)
    write_split(tmp_path / paths.TRAIN_FILE, records(12), tokenizer, max_length=128)
    write_split(tmp_path / paths.DEV_FILE, records(6, offset=100), tokenizer, max_length=128)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def tiny(tiny_model_params):
    """Params of a 2-layer random GPT-2 that trains in seconds on a CPU; **train overrides."""
    model = tiny_model_params.model_dump()

    def params(**train) -> dict:
        defaults = {
            "epochs": 2,
            "batch_size": 4,
            "eval_batch_size": 4,
            "logging_steps": 1,
            "learning_rate": 1e-3,
        }
        return {"model": model, "train": defaults | train}

    return params


# ---- For the evaluate stage and the CLI (tests/test_evaluate.py, tests/test_cli.py) ----

EVAL_TEST_FILE = Path("data/prepared/test.parquet")
EVAL_MODEL_DIR = Path("models/finetuned")


def write_prepared_test_split(path: Path, tokenizer, n: int) -> list[dict]:
    """A prepared split with every column prepare writes, prompts of varied lengths; its rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pubmedqa_gpt2.prompt import LABELS, encode_examples

    questions = [
        f"Does treatment {i} reduce mortality" + " in older patients" * (i % 4) + "?"
        for i in range(n)
    ]
    contexts = [
        [f"We studied {i} patients.", "Outcomes were recorded. " * (1 + i % 5)] for i in range(n)
    ]
    decisions = [LABELS[i % 3] for i in range(n)]
    answers = [
        f"Treatment {i} had " + ("an effect." if i % 2 else "no clear effect.") for i in range(n)
    ]
    encoded = encode_examples(
        tokenizer, questions, contexts, [["BACKGROUND", "RESULTS"]] * n, decisions, answers, 256
    )
    rows = [
        {
            "pmid": str(2000 + 7 * i),
            "question": questions[i],
            "decision": decisions[i],
            "long_answer": answers[i],
            "prompt_ids": encoded[i].prompt_ids,
            "completion_ids": encoded[i].completion_ids,
            "shortened": encoded[i].shortened,
        }
        for i in range(n)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return rows


@pytest.fixture
def eval_workdir(tmp_path, monkeypatch, tokenizer, tiny_model_params):
    """A working directory for `evaluate` and the CLI: params.yaml (tiny random GPT-2, short
    generation), a 12-question prepared test split, and that model saved in models/finetuned."""
    from pubmedqa_gpt2.model.loading import build_model

    from .committed import write_params

    params = {
        "model": tiny_model_params.model_dump(),
        "evaluate": {
            "batch_size": 5,
            "generate_examples": 5,
            "max_new_tokens": 8,
            "generation_batch_size": 3,
        },
    }
    write_params(tmp_path, params)
    write_prepared_test_split(tmp_path / EVAL_TEST_FILE, tokenizer, 12)
    build_model(tiny_model_params).save_pretrained(
        tmp_path / EVAL_MODEL_DIR, safe_serialization=True
    )
    tokenizer.save_pretrained(tmp_path / EVAL_MODEL_DIR)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def model_deciding_by_length(params, label_ids):
    """A tiny GPT-2 whose decision is a known function of the prompt's length: label
    `(length - 1) % 3` (yes, no, maybe order of `label_ids`), by a wide margin.

    The blocks add nothing (their output projections are zero), so the last hidden state is
    the last token's embedding plus its position's; each position embedding points along the
    direction of one label token's (tied) embedding, and no other token has that direction.
    """
    import torch

    from pubmedqa_gpt2.model.loading import build_model

    model = build_model(params)
    with torch.no_grad():
        for block in model.transformer.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
        wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight
        wte[:, :3] = 0.0
        for k, token in enumerate(label_ids):
            wte[token, k] = 5.0
        wpe.zero_()
        for position in range(wpe.shape[0]):
            wpe[position, position % 3] = 10.0
    return model


ARTIFICIAL_PMID0 = 900_000_000  # synthetic PQA-A PMIDs start here, far above any real one


def synthetic_pqa_a_rows(official: dict, n: int, shared: int = 0) -> list[dict]:
    """`n` rows in the hub's `pqa_artificial` schema, made of PQA-L records (cycled) under new
    PMIDs, the first `shared` of them keeping their PQA-L PMID (leakage to be dropped). Labels
    are yes or no only, as PQA-A's: PQA-L's "maybe" becomes "yes"."""
    records = list(official.items())
    rows = []
    for i in range(n):
        pmid, r = records[i % len(records)]
        rows.append(
            {
                "pubid": int(pmid) if i < shared else ARTIFICIAL_PMID0 + i,
                "question": r["QUESTION"],
                "context": {
                    "contexts": r["CONTEXTS"],
                    "labels": r["LABELS"],
                    "meshes": r["MESHES"],
                },
                "long_answer": r["LONG_ANSWER"],
                "final_decision": "no" if r["final_decision"] == "no" else "yes",
            }
        )
    return rows


def write_synthetic_pqa_a(path: Path, official: dict, n: int, shared: int = 0) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = synthetic_pqa_a_rows(official, n, shared)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return rows


# ---- For the end-to-end tests (tests/test_pipeline.py, test_experiments.py, test_remotes.py,
# test_cluster.py): shared runs, made once per session. Their helpers are in tests/e2e.py,
# imported where used: it imports this module. ----


@pytest.fixture(scope="session")
def source(tmp_path_factory) -> Path:
    """The repository the e2e tests clone: the working tree, committed in a scratch copy."""
    from .e2e import snapshot_working_tree

    return snapshot_working_tree(tmp_path_factory.mktemp("source") / "repo")


@pytest.fixture(scope="session")
def smoke(source, tmp_path_factory) -> tuple[Path, str]:
    """The README's offline quickstart, run as written (the placeholder paths aside) in a
    fresh clone of the code under test, in one shell that stops at the first failing command;
    the result is committed in the clone. Once for the whole run, also under pytest-xdist:
    tests read it or work in a copy (`copy_of`), never in it."""
    from .e2e import PLACEHOLDERS, commit_all, once_per_session, readme_quickstart, sh

    def make(folder: Path) -> None:
        repo = folder / "repo"
        sh(["git", "clone", "--quiet", str(source), str(repo)], cwd=folder)
        commands = readme_quickstart((source / "README.md").read_text())
        for placeholder, path in PLACEHOLDERS.items():
            assert placeholder in commands, placeholder
            commands = commands.replace(placeholder, str(path))
        # Unset here: the quickstart has to set them itself.
        unset = {"PUBMEDQA_DIR": "", "GPT2_TOKENIZER_DIR": "", "HF_HUB_OFFLINE": ""}
        output = sh(["bash", "-e", "-o", "pipefail", "-c", commands], cwd=repo, env=unset)
        commit_all(repo, "smoke run")
        (folder / "output.txt").write_text(output)

    folder = once_per_session(tmp_path_factory, "smoke", make)
    return folder / "repo", (folder / "output.txt").read_text()


@pytest.fixture(scope="session")
def seed_sweep(smoke, tmp_path_factory) -> Path:
    """Two queued experiments of the smoke run with train.seed 0 and 1, run by a worker: made
    once for the whole run (`once_per_session`); each test gets its own copy. (Seed 1 answers
    some test questions differently from the baseline's seed 42, seed 0 does not: the diff
    tests use the one whose answers moved.)"""
    from .e2e import copy_of, once_per_session, run_queue, sh

    def make(folder: Path) -> None:
        repo = copy_of(smoke[0], folder / "repo")
        sh(["dvc", "exp", "run", "--queue", "-S", "train.seed=0,1"], cwd=repo)
        status = run_queue(repo, 2)
        assert status.count("Success") == 2, status
        sh(["dvc", "queue", "stop", "--kill"], cwd=repo, check=False)  # no worker left behind

    return once_per_session(tmp_path_factory, "sweep", make) / "repo"


# ---- make mutate: the mutants of a slow-to-test module run against its own test files ----

# mutmut runs a mutant against every test that reached the mutated function, and a surviving
# mutant against all of them: for a training module, each of the ~90 tests that train a tiny
# model, a minute or two per survivor. The modules below run against their own test files
# instead (tests/test_<module>.py and the tests of its caller), the project's layout; the
# others keep mutmut's selection, and so does a function none of those files reaches.
MUTATION_TESTS = {
    **{
        f"pubmedqa_gpt2.training.{name}": [f"test_{name}.py", "test_train.py"]
        for name in (
            "callbacks", "checkpoints", "collator", "examples", "launch", "lora", "loss",
            "recipe", "run_figures", "running_marker", "saving", "stop", "trainer",
        )
    },
    "pubmedqa_gpt2.training.settings": ["test_training_settings.py", "test_train.py"],
    "pubmedqa_gpt2.training.phase": ["test_pretrain.py", "test_train.py"],
    "pubmedqa_gpt2.evaluation.evaluate": ["test_evaluate.py"],
    "pubmedqa_gpt2.evaluation.answers": ["test_evaluate.py", "test_cli.py"],
    "pubmedqa_gpt2.model.loading": ["test_loading.py"],
    "pubmedqa_gpt2.model.generate": ["test_generate.py", "test_decoding.py"],
    "pubmedqa_gpt2.model.scoring": ["test_scoring.py"],
    # reached by nearly every test (the params, the prompt, the files every stage writes)
    "pubmedqa_gpt2.core.config": ["test_config.py"],
    "pubmedqa_gpt2.core.io": ["test_ingest.py", "test_prepare.py", "test_records.py"],
    "pubmedqa_gpt2.data.token_files": ["test_evaluate.py", "test_recipe.py", "test_examples.py"],
    "pubmedqa_gpt2.prompt": [
        "test_prompt.py", "test_prepare.py", "test_evaluate.py", "test_cli.py", "test_examples.py",
    ],
}  # fmt: skip


def mutation_test_files(mutant: str) -> list[str] | None:
    """The test files a mutant (mutmut's name, e.g. `pubmedqa_gpt2.training.loss.x_f__mutmut_3`)
    runs against, or None for mutmut's own selection (also when no mutant is under test)."""
    if "__mutmut_" not in mutant:
        return None
    module = re.split(r"\.x[_ǁ]", mutant, maxsplit=1)[0]
    return MUTATION_TESTS.get(module)


def _keep_mutation_tests(config, items) -> None:
    files = mutation_test_files(os.environ.get("MUTANT_UNDER_TEST", ""))
    if files is None:
        return
    kept = [item for item in items if item.path.name in files]
    dropped = [item for item in items if item.path.name not in files]
    if kept and dropped:  # none of them reaches the function: all that do
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


# ---- Order: the longest tests first, so that the pytest-xdist workers end together ----


def pytest_collection_modifyitems(config, items) -> None:
    """0: the first seed-sweep test (its worker makes the smoke run, then the sweep); then the
    SLURM cluster's tests (one xdist group, the longest unit: the other worker starts it at
    once, the smoke run being made meanwhile); 1: the long tests that need no smoke run; 2:
    the tests that copy the smoke run; 3: the other sweep tests (the sweep is made by then);
    4: the rest, short. File order within each rank."""
    sweep = [item for item in items if "seed_sweep" in item.fixturenames]

    def rank(item) -> tuple[int, int]:
        group = item.get_closest_marker("xdist_group")
        if group is not None and group.args == ("slurm",):
            return 0, 1
        if item in sweep:
            return (0, 0) if item is sweep[0] else (3, 0)
        if "smoke" in item.fixturenames:  # the longest of them first (CI's --durations)
            return 2, -LONGEST_SMOKE_TESTS.get(item.originalname, 0)
        return (1 if item.get_closest_marker("e2e") else 4), 0

    _keep_mutation_tests(config, items)
    items.sort(key=rank)


# Seconds each took in a CI rehearsal (two workers): started first, they no longer end the run
# alone on one worker while the other idles.
LONGEST_SMOKE_TESTS = {
    "test_training_on_the_real_questions_learns_what_a_small_model_can": 223,
    "test_two_phases_rerun_what_their_params_touch": 153,
    "test_experiments_from_two_machines_meet_in_a_third": 100,
    "test_two_smoke_runs_from_scratch_give_identical_metrics": 64,
    "test_exp_run_set_param_reruns_only_train_and_its_evaluation": 44,
    "test_killed_training_resumes_from_its_last_checkpoint": 29,
}


@pytest.fixture(autouse=True)
def _no_gpu_claim_outlives_its_test():
    """A test that claims GPUs in this process releases them and leaves CUDA_VISIBLE_DEVICES
    as it found it: a leaked claim made later tests (and the stages they start) wait for ever
    on a GPU this process holds."""
    from pubmedqa_gpt2 import gpu_claims

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    yield
    leaked = list(gpu_claims._claimed)
    gpu_claims.release_gpus()
    now = os.environ.get("CUDA_VISIBLE_DEVICES")
    assert not leaked, f"the test left GPUs {leaked} claimed"
    assert now == visible, f"the test left CUDA_VISIBLE_DEVICES={now!r} (was {visible!r})"


# ---- `slurm submit` in a repository of its own (tests/test_slurm.py, test_slurm_status.py) ----


@pytest.fixture(scope="module")
def committed_repo(tmp_path_factory) -> Path:
    """A committed repository with params.yaml and DVC initialised (made once: copied)."""
    from .committed import write_params
    from .e2e import git

    repo = tmp_path_factory.mktemp("template") / "repo"
    repo.mkdir()
    git("init", "--quiet", "-b", "main", cwd=repo)
    write_params(repo)
    subprocess.run(["dvc", "init", "--quiet"], cwd=repo, check=True)
    git("add", "-A", cwd=repo)
    git("commit", "--quiet", "-m", "start", cwd=repo)
    return repo


@pytest.fixture
def user_repo(tmp_path, committed_repo):
    """The committed repository, with a bare remote on the "shared filesystem" and a DVC cache
    there; `sbatch` is a stub that records its call."""
    from .e2e import git

    repo, shared = tmp_path / "repo", tmp_path / "shared"
    shutil.copytree(committed_repo, repo, symlinks=True)
    shared.mkdir()
    git("init", "--quiet", "--bare", str(shared / "origin.git"), cwd=tmp_path)
    git("remote", "add", "cluster", str(shared / "origin.git"), cwd=repo)
    (repo / ".dvc" / "config.local").write_text(f"[cache]\n    dir = {shared / 'cache'}\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/bash\necho "$@" >> {tmp_path}/sbatch.txt\necho 99\n')
    (bin_dir / "sbatch").chmod(0o755)
    return repo


@pytest.fixture
def submit(monkeypatch, capsys):
    """`pubmedqa-gpt2 slurm submit --git-remote cluster ARGS` in `repo`, in this process, with
    `sbatch` the stub (or PATH `path`): (exit status, stdout, stderr) as a finished process."""
    from pubmedqa_gpt2 import cli

    def run(repo: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
        monkeypatch.chdir(repo)
        monkeypatch.setenv("PATH", path or f"{repo.parent / 'bin'}:{os.environ['PATH']}")
        capsys.readouterr()
        code = 0
        try:
            cli.main(["slurm", "submit", "--git-remote", "cluster", *args])
        except SystemExit as exc:
            code = exc.code
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    return run
