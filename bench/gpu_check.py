"""The one-call GPU check: the default experiment through the real stages, then `bench.gpu`.

    bash bench/gpu_check.sh OUTDIR [--results DIR]  # on a GPU machine: the whole check
    python -m bench.gpu_check OUTDIR --tiny          # a 2-layer model on the CPU (the tests)

Steps, each with its log in OUTDIR/logs/<step>.log, flushed line by line:
1. `install`: with a kit (gpu-kit/, `make gpu-kit`), its pinned wheels into OUTDIR/site,
   offline, --no-deps; its data and tokenizer stand in for PUBMEDQA_DIR / GPT2_TOKENIZER_DIR
   unless those are set. Without a kit the current Python's packages are used as they are.
2. `imports`: every module the stages import, before minutes of work depend on them.
3. every stage command of `dvc.yaml` in the file's order (foreach expanded), in a scratch copy
   of the project (OUTDIR/work) with `params.yaml` as committed except `model.init: random`
   (GPT-2 Large's shape: no weights can be downloaded there) and the offline tokenizer. The
   stages run as `dvc repro` would run them (same commands, same working directory layout) but
   without dvc: no git repository is needed and no time goes into hashing a 3 GB model.
4. `bench.gpu`: training throughput, MFU and peak memory of GPT-2 Large.

One deadline covers all of it: `--budget` seconds (480 by default, well inside the 600 s one
command may run on a lent machine) counted from the moment bench/gpu_check.sh started. A step
still running at the deadline is stopped and the rest skipped. After every step summary.json
(step times and status, training tokens/s and MFU, peak GPU memory, accuracies) is rewritten
atomically, so a run killed from outside still says how far it got; `--results DIR` also keeps
there, after every step, a copy of it and one archive gpu_check.tar.gz (<= 16 MiB) of the logs,
metrics and bench JSON: two files with plain names, what a lent machine can send back.

A full-size run refuses at once when torch sees no CUDA device (it would train GPT-2 Large in
fp32 on the CPU until killed); `--tiny` (smoke.yaml's 2-layer model, `bench.gpu --tiny`) runs
on the CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml  # on the GPU image; everything else of the project's is imported after `install`

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__" and not __package__:  # run as a file by gpu_check.sh, before install
    sys.path.insert(0, str(ROOT))
# What a scratch copy needs: the stage code and the library, the pipeline, its params and the
# report's reference.
COPIED = (
    "stages",
    "pubmedqa_gpt2",
    "bench",
    "dvc.yaml",
    "params.yaml",
    "smoke.yaml",
    "reports/reference.yaml",
)
GPU_TARGET_S = 9 * 60  # the whole check on one H100 (issue 10)
# One command on a lent machine runs at most 600 s: the whole call, install included, stops
# itself well before, with time left to send the results back.
DEFAULT_BUDGET_S = 480
# Every module the stages and bench.gpu import that the GPU image may lack.
IMPORTS = (
    "torch", "transformers", "accelerate", "peft", "safetensors", "pyarrow", "sklearn", "scipy",
    "sacrebleu", "yaml", "pydantic", "ruamel.yaml", "dvclive", "nltk", "rouge_score",
)  # fmt: skip
ARCHIVE = "gpu_check.tar.gz"
ARCHIVE_LIMIT = 16 << 20  # one file sent back from a lent machine: 16 MiB at most
LOG_TAIL = 256 << 10  # what is kept of each log when the whole archive would pass the limit


# The cost model's inputs (bench.gpu.pipeline_estimate) before any GPU has measured them:
# assumptions, chosen slow so that the plan errs long. bench.gpu replaces them by measurements.
ASSUMED_MFU = 0.20  # training and the scoring passes; the project's target is 0.40
ASSUMED_DECODE_STEP_S = 0.015  # one greedy step of a 16-row batch: 36 layers, launch-bound
ASSUMED_DISK_BYTES_PER_S = 1e9
H100_PEAK = 989e12


@dataclass(frozen=True)
class Stage:
    name: str
    cmd: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]


@dataclass
class Step:
    name: str
    seconds: float
    status: str  # ok | failed (exit N) | timed out | skipped


def _paths(entries: Sequence) -> tuple[str, ...]:
    """Paths of a dvc.yaml deps/outs/metrics list, whose entries are strings or {path: opts}."""
    return tuple(e if isinstance(e, str) else next(iter(e)) for e in entries or ())


def _substitute(value, key: str, item) -> object:
    """${key} and ${item.x} of a foreach stage, as DVC interpolates them."""
    if isinstance(value, list):
        return [_substitute(v, key, item) for v in value]
    if isinstance(value, dict):
        return {_substitute(k, key, item): _substitute(v, key, item) for k, v in value.items()}
    if not isinstance(value, str):
        return value

    def lookup(match: re.Match) -> str:
        name = match.group(1)
        if name == "key":
            return key
        if name.startswith("item.") and isinstance(item, dict):
            return str(item[name.removeprefix("item.")])
        if name == "item":
            return str(item)
        raise ValueError(f"dvc.yaml: cannot interpolate ${{{name}}}")

    return re.sub(r"\$\{([\w.]+)\}", lookup, value)


def pipeline_stages(dvc_yaml: Path) -> list[Stage]:
    """The stages of `dvc_yaml` in file order, foreach expanded (`evaluate@base`, ...).

    The file's order must be a valid run order: a stage that depends on the output of a
    stage listed after it is an error, not a silently wrong run.
    """
    stages: list[Stage] = []
    for name, body in yaml.safe_load(dvc_yaml.read_text())["stages"].items():
        if "foreach" in body:
            for key, item in body["foreach"].items():
                do = _substitute(body["do"], key, item)
                stages.append(_stage(f"{name}@{key}", do))
        else:
            stages.append(_stage(name, body))
    for i, stage in enumerate(stages):
        for later in stages[i + 1 :]:
            for dep in stage.deps:
                if any(dep == out or dep.startswith(out.rstrip("/") + "/") for out in later.outs):
                    raise ValueError(
                        f"{dvc_yaml}: stage {stage.name} depends on {dep}, an output of "
                        f"{later.name}, which is listed after it"
                    )
    return stages


def _stage(name: str, body: dict) -> Stage:
    outs = _paths(body.get("outs")) + _paths(body.get("metrics")) + _paths(body.get("plots"))
    return Stage(name, body["cmd"], _paths(body.get("deps")), outs)


def make_workdir(work: Path, pubmedqa: Path, tokenizer: Path, tiny: bool) -> None:
    """A scratch copy of the project with the check's params and the offline data."""
    from pubmedqa_gpt2.smoke_params import SMOKE_FILE, apply_overrides, apply_smoke

    if work.exists():
        shutil.rmtree(work)
    for name in COPIED:
        source, target = ROOT / name, work / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    params = work / "params.yaml"
    if tiny:
        apply_smoke(params, SMOKE_FILE)
    apply_overrides(params, {"model": {"init": "random", "tokenizer": str(tokenizer)}})
    external = work / "data" / "external"
    external.mkdir(parents=True)
    shutil.copy2(pubmedqa / "ori_pqal.json", external / "ori_pqal.json")


def run_step(
    name: str,
    argv: list[str],
    cwd: Path,
    logs: Path,
    budget_end: float,
    env: dict[str, str] | None = None,
) -> Step:
    """Run one step, its output teed to logs/<name>.log (flushed line by line), stopped at
    `budget_end` (time.monotonic)."""
    remaining = budget_end - time.monotonic()
    if remaining <= 0:
        return Step(name, 0.0, "skipped")
    print(f"\n== {name}: {' '.join(argv)}", flush=True)
    start = time.monotonic()
    with (logs / f"{name}.log").open("w") as log:
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        timer = threading.Timer(remaining, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                sys.stdout.write(line)
                sys.stdout.flush()
            code = proc.wait()
        finally:
            timer.cancel()
    seconds = time.monotonic() - start
    if code == 0:
        status = "ok"
    elif time.monotonic() >= budget_end:
        status = "timed out"
    else:
        status = f"failed (exit {code})"
    print(f"== {name}: {status} in {seconds:.1f} s", flush=True)
    return Step(name, seconds, status)


def python_argv(cmd: str) -> list[str]:
    """A dvc.yaml command, run by this interpreter (the one the kit was installed for)."""
    argv = cmd.split()
    if argv[0] != "python":
        raise ValueError(f"dvc.yaml: expected a `python ...` command, got {cmd!r}")
    return [sys.executable, *argv[1:]]


def training_mfu(work: Path, perf: dict) -> float | None:
    """Model FLOPs per second of the train stage over the card's dense bf16 peak.

    FLOPs as bench.gpu counts them (6N + 12*L*d*T per token) over the prepared training set,
    times the epochs run, divided by the stage's Trainer runtime, which also holds the dev
    evaluations and checkpoint writes: a lower bound of the training loop's own MFU.
    """
    from bench.gpu import meta_model, peak_flops, training_flops_of_lengths
    from pubmedqa_gpt2.config import load_params
    from pubmedqa_gpt2.data.prepared import read_prepared
    from pubmedqa_gpt2.model.loading import random_config

    peak = peak_flops(perf.get("device", ""))
    if peak is None or not perf.get("runtime_seconds"):
        return None
    params = load_params(work / "params.yaml")
    table = read_prepared(work / "data/prepared/train.parquet", ["prompt_ids", "completion_ids"])
    lengths = [
        len(p) + len(c)
        for p, c in zip(
            table.column("prompt_ids").to_pylist(),
            table.column("completion_ids").to_pylist(),
            strict=True,
        )
    ]
    model = meta_model(random_config(params.model), params.train)
    flops = params.train.epochs * training_flops_of_lengths(lengths, model)
    return flops / perf["runtime_seconds"] / peak


def plan(pubmedqa: Path, tokenizer: Path) -> dict[str, float]:
    """What the default experiment costs on one H100 by bench.gpu's cost model, at the
    ASSUMED_* rates and PQA-L's real lengths: training compute, both evaluations, checkpoint
    writes. Process starts, model builds and bench.gpu itself come on top."""
    from bench.common import committed, length
    from bench.gpu import (
        TRAIN_EXAMPLES,
        checkpoint_writes_s,
        flop_parameters,
        meta_model,
        pipeline_estimate,
        training_flops_of_lengths,
    )
    from pubmedqa_gpt2.data.prepare import encode_records
    from pubmedqa_gpt2.data.records import read_official_json
    from pubmedqa_gpt2.model.loading import load_tokenizer, random_config

    model = meta_model(random_config(committed("model", name="gpt2-large", init="random")))
    records = read_official_json(pubmedqa / "ori_pqal.json")
    examples = encode_records(load_tokenizer(tokenizer), records, 1024)
    lengths = [length(ex) for ex in examples]
    mean = sum(lengths) / len(lengths)
    mean_prompt = sum(len(ex.prompt_ids) for ex in examples) / len(examples)
    flops_per_token = training_flops_of_lengths(lengths, model) / sum(lengths)
    n_matmul = flop_parameters(model)[0]
    forward_rate = ASSUMED_MFU * H100_PEAK / (2 * n_matmul * mean_prompt)
    evaluate = committed("evaluate")
    rates = {
        "scoring": forward_rate,
        "perplexity": forward_rate,
        "generation": evaluate.generation_batch_size
        / (evaluate.max_new_tokens * ASSUMED_DECODE_STEP_S),
    }
    train = committed("train")
    parameters = sum(p.numel() for p in model.parameters())
    write_s = checkpoint_writes_s(
        parameters, parameters, train.epochs, train.resumable_checkpoints, ASSUMED_DISK_BYTES_PER_S
    )
    tokens_per_s = ASSUMED_MFU * H100_PEAK / flops_per_token
    estimate = pipeline_estimate(tokens_per_s, mean, rates, train.epochs, write_s)
    print(
        f"gpu_check: cost model for one H100 (assumed: MFU {ASSUMED_MFU:.0%}, "
        f"{ASSUMED_DECODE_STEP_S * 1e3:.0f} ms per decode step, disk "
        f"{ASSUMED_DISK_BYTES_PER_S / 1e9:.0f} GB/s; PQA-L mean {mean:.0f} tokens): train "
        f"{TRAIN_EXAMPLES} x {train.epochs} epochs {estimate['train_s']:.0f} s + evaluate 2 x 500 "
        f"{estimate['evaluate_s']:.0f} s + checkpoints {write_s:.0f} s = "
        f"{estimate['total_s'] / 60:.1f} min, before process starts, model builds and bench.gpu",
        flush=True,
    )
    return estimate


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def collect(work: Path, out: Path) -> None:
    """The run's metrics, perf and reports, copied to OUTDIR/metrics."""
    target = out / "metrics"
    target.mkdir(exist_ok=True)
    for pattern in ("metrics/*.json", "perf/*.json", "eval/*/details.json", "reports/*.md"):
        for path in work.glob(pattern):
            flat = str(path.relative_to(work)).replace("/", "__")
            shutil.copy2(path, target / flat)


def summarize(steps: list[Step], work: Path, bench: dict | None) -> dict:
    """The figures a reader of the check wants first."""
    perf = read_json(work / "perf/train.json") or {}
    ranks = perf.get("ranks") or [{}]
    summary: dict = {
        "steps": [asdict(s) for s in steps],
        "total_s": round(sum(s.seconds for s in steps), 1),
        "target_s": GPU_TARGET_S,
        "device": perf.get("device"),
        "precision": perf.get("precision"),
        "train_tokens_per_s": perf.get("train_tokens_per_second"),
        "train_mfu": training_mfu(work, perf) if perf else None,
        "train_peak_gpu_allocated_bytes": ranks[0].get("peak_gpu_allocated_bytes"),
        "evaluate": {},
    }
    for which in ("base", "finetuned"):
        details = read_json(work / f"eval/{which}/details.json")
        metrics = read_json(work / f"metrics/eval_{which}.json")
        if details and metrics:
            summary["evaluate"][which] = {
                "accuracy": metrics.get("accuracy"),
                "runtime_s": details["perf"].get("runtime_s"),
                "generation_examples_per_s": details["perf"].get("generation_examples_per_s"),
                "peak_gpu_allocated_bytes": details["perf"].get("peak_gpu_allocated_bytes"),
            }
    if bench:
        full = [r for r in bench.get("training", []) if r["mode"] == "full"]
        summary["bench"] = {
            "full_fine_tuning": {
                r["lengths"]: {k: r[k] for k in ("tokens_per_s", "mfu")} for r in full
            },
            "pipeline_estimate_s": (bench.get("pipeline_estimate") or {}).get("total_s"),
        }
    return summary


def _gib(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**30:.1f} GiB"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def render(summary: dict) -> str:
    lines = ["", "== GPU check summary"]
    for step in summary["steps"]:
        lines.append(f"   {step['name']:<22} {step['seconds']:7.1f} s  {step['status']}")
    total = summary["total_s"]
    lines.append(
        f"   {'total':<22} {total:7.1f} s  ({total / 60:.1f} min; target on one H100 "
        f"< {summary['target_s'] / 60:.0f} min)"
    )
    lines.append(
        f"   train on {summary['device']} ({summary['precision']}): "
        f"{summary['train_tokens_per_s']} tokens/s, MFU {_pct(summary['train_mfu'])} "
        f"(stage runtime, dev evaluations included), peak GPU memory "
        f"{_gib(summary['train_peak_gpu_allocated_bytes'])}"
    )
    for which, ev in summary["evaluate"].items():
        lines.append(
            f"   evaluate {which:<9}: accuracy {ev['accuracy']:.3f}, {ev['runtime_s']} s, "
            f"generation {ev['generation_examples_per_s']} examples/s, peak GPU memory "
            f"{_gib(ev['peak_gpu_allocated_bytes'])}"
        )
    planned = summary.get("h100_cost_model_s")
    if planned:
        measured = sum(
            step["seconds"]
            for step in summary["steps"]
            if step["name"] == "train" or step["name"].startswith("evaluate@")
        )
        lines.append(
            f"   train + evaluate stages: {measured:.0f} s here; the cost model's H100 plan for "
            f"their compute and checkpoints: {planned['total_s']:.0f} s"
        )
    for lengths, run in (summary.get("bench") or {}).get("full_fine_tuning", {}).items():
        lines.append(
            f"   bench.gpu full fine-tuning at {lengths}: {run['tokens_per_s']:,.0f} tokens/s, "
            f"MFU {_pct(run['mfu'])}"
        )
    return "\n".join(lines)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` in one step: a reader (or a kill) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def archive_bytes(out: Path, log_tail: int | None = None) -> bytes:
    """gpu_check.tar.gz of OUTDIR's logs/, metrics/ and bench_gpu.json; with `log_tail`, each
    log cut to its last `log_tail` bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        paths = sorted((out / "logs").glob("*.log")) + sorted((out / "metrics").glob("*"))
        paths += [out / "bench_gpu.json"] if (out / "bench_gpu.json").is_file() else []
        for path in paths:
            data = path.read_bytes()
            if log_tail is not None and path.suffix == ".log" and len(data) > log_tail:
                data = data[-log_tail:]
            info = tarfile.TarInfo(str(path.relative_to(out)))
            info.size, info.mtime = len(data), int(path.stat().st_mtime)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Record:
    """summary.json (and, with --results, its copy and the archive) rewritten after every step."""

    def __init__(self, out: Path, results: Path | None, work: Path, started: float):
        self.out, self.results, self.work, self.started = out, results, work, started
        self.steps: list[Step] = []
        self.extra: dict = {}

    def add(self, step: Step, status: str) -> Step:
        self.steps.append(step)
        self.write(status)
        return step

    def write(self, status: str, bench: dict | None = None) -> dict:
        if (self.work / "params.yaml").is_file():
            collect(self.work, self.out)
            summary = summarize(self.steps, self.work, bench)
        else:
            summary = {"steps": [asdict(s) for s in self.steps], "evaluate": {}}
        summary = {
            "status": status,
            "elapsed_s": round(time.time() - self.started, 1),
            **summary,
            **self.extra,
        }
        data = (json.dumps(summary, indent=2) + "\n").encode()
        write_atomic(self.out / "summary.json", data)
        if self.results is not None:
            write_atomic(self.results / "summary.json", data)
            archive = archive_bytes(self.out)
            if len(archive) > ARCHIVE_LIMIT:
                archive = archive_bytes(self.out, LOG_TAIL)
            write_atomic(self.results / ARCHIVE, archive)
        return summary


def child_env(site: Path | None) -> dict[str, str]:
    """The steps' environment: the project (and the kit's packages) importable, output
    unbuffered (a log is complete up to the moment a step is killed), no hub."""
    paths = [str(ROOT)] + ([str(site)] if site else [])
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def cuda_refusal() -> str | None:
    """Why a full-size run cannot start here (torch sees no CUDA device), else None."""
    import torch

    if torch.cuda.is_available():
        return None
    return (
        "gpu_check: torch sees no CUDA device, and the full-size check would train GPT-2 Large "
        "on the CPU until stopped; run it on a GPU machine, or pass --tiny to check on the CPU"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bash bench/gpu_check.sh", description=__doc__.split("\n")[0]
    )
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--tiny", action="store_true", help="smoke.yaml's 2-layer model, CPU")
    parser.add_argument(
        "--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds in all, from the start"
    )
    parser.add_argument("--results", type=Path, help="where to keep summary.json and the archive")
    parser.add_argument(
        "--kit", type=Path, default=Path(os.environ.get("GPU_KIT", ROOT / "gpu-kit"))
    )
    args = parser.parse_args(argv)
    # gpu_check.sh stamps its start: the budget covers the whole call, not just this process.
    started = float(os.environ.get("GPU_CHECK_STARTED") or time.time())
    budget_end = time.monotonic() + args.budget - (time.time() - started)
    out = args.outdir.resolve()
    logs, work, site = out / "logs", out / "work", out / "site"
    logs.mkdir(parents=True, exist_ok=True)
    if args.results:
        args.results.mkdir(parents=True, exist_ok=True)
    record = Record(out, args.results.resolve() if args.results else None, work, started)
    record.extra = {"tiny": args.tiny, "budget_s": args.budget}
    if not args.tiny and (refusal := cuda_refusal()):
        record.extra["refused"] = refusal
        record.write("refused: no CUDA device")
        print(refusal, file=sys.stderr)
        return 1
    record.write("started")

    wheels = args.kit / "wheels"
    if wheels.is_dir():
        os.environ.setdefault("PUBMEDQA_DIR", str(args.kit / "pubmedqa"))
        os.environ.setdefault("GPT2_TOKENIZER_DIR", str(args.kit / "gpt2-tokenizer"))
        install = [
            sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--target",
            str(site), "--find-links", str(wheels), "-r", str(args.kit / "requirements.txt"),
        ]  # fmt: skip
        record.add(run_step("install", install, out, logs, budget_end), "installed the kit")
        sys.path.insert(0, str(site))
    else:
        site = None
    env = child_env(site)
    check = (
        "import importlib, sys\nmissing = []\n"
        f"for name in {IMPORTS!r}:\n"
        "    try:\n        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        missing.append(f'{name} ({type(exc).__name__}: {exc})')\n"
        "if missing:\n"
        "    sys.exit('gpu_check: cannot import ' + '; '.join(missing) + "
        "' (make gpu-kit builds the wheels)')\n"
    )
    if record.steps and record.steps[-1].status != "ok":
        record.add(Step("imports", 0.0, "skipped"), "stopped: the kit did not install")
    else:
        record.add(
            run_step("imports", [sys.executable, "-c", check], out, logs, budget_end, env),
            "checked the imports",
        )
    if record.steps[-1].status != "ok":
        record.write("stopped: a package cannot be imported")
        print(f"gpu_check: see {logs}/install.log and {logs}/imports.log", file=sys.stderr)
        return 1

    from bench.shared_data import require_shared

    pubmedqa, tokenizer = require_shared()
    stages = pipeline_stages(ROOT / "dvc.yaml")
    make_workdir(work, pubmedqa, tokenizer, args.tiny)
    try:
        planned = plan(pubmedqa, tokenizer)
    except Exception as exc:  # the plan is informative; the stages say what is wrong with the data
        print(f"gpu_check: no cost-model plan ({type(exc).__name__}: {exc})", flush=True)
        planned = None
    if planned:
        record.extra["h100_cost_model_s"] = {key: round(v, 1) for key, v in planned.items()}
    print(f"gpu_check: {len(stages)} stages of dvc.yaml in {work}, then bench.gpu", flush=True)

    for stage in stages:
        if record.steps[-1].status != "ok":
            record.add(Step(stage.name, 0.0, "skipped"), f"skipped {stage.name}")
            continue
        step = run_step(stage.name, python_argv(stage.cmd), work, logs, budget_end, env)
        record.add(step, f"ran {stage.name}")
    bench_json = out / "bench_gpu.json"
    bench_argv = [sys.executable, "-m", "bench.gpu", "--out", str(bench_json)]
    bench_argv += ["--scratch", str(work)] + ["--tiny"] * args.tiny
    record.add(run_step("bench.gpu", bench_argv, work, logs, budget_end, env), "ran bench.gpu")

    ok = all(s.status == "ok" for s in record.steps)
    if ok:
        status = "finished"
    elif any(s.status == "timed out" for s in record.steps):
        status = "stopped at the deadline"
    else:
        status = "failed: " + next(s.name for s in record.steps if s.status != "ok")
    summary = record.write(status, read_json(bench_json))
    print(render(summary))
    print(
        f"\nwrote {out}/summary.json, logs/ and metrics/"
        + (f"; {args.results}/summary.json and {ARCHIVE}" if args.results else "")
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
