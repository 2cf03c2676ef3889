"""The one-call GPU check: the default experiment through the real stages, then `bench.gpu`.

    bash gpu_check/run.sh OUTDIR [--results DIR]   # on a GPU machine: the whole check
    bash gpu_check/run.sh OUTDIR --tiny            # a 2-layer model on the CPU (the tests)

Steps, each with its log in OUTDIR/logs/<step>.log, flushed line by line:
1. `install`: with a kit (gpu-kit/, `make gpu-kit`), its pinned wheels into OUTDIR/site,
   offline, --no-deps; its data and tokenizer stand in for PUBMEDQA_DIR / GPT2_TOKENIZER_DIR
   unless those are set. Without a kit the current Python's packages are used as they are.
2. `imports`: every module the stages import, and what the machine is (environment.py).
3. every stage command of `dvc.yaml` in the file's order (pipeline.py), in a scratch copy of
   the project (OUTDIR/work) with `params.yaml` as committed except `model.init: random`
   (GPT-2 Large's shape: no weights can be downloaded there), the offline tokenizer, and the
   plan's cap on generated answers if it needs one (plan.py).
4. `bench.gpu`: training throughput, MFU and peak memory of GPT-2 Large.

One deadline covers all of it: `--budget` seconds (480 by default, well inside the 600 s one
command may run on a lent machine) counted from the moment gpu_check/run.sh started. A step
still running at the deadline is stopped and the rest skipped; SIGTERM stops the running step
and says so. What the results hold, killed or not: record.py.

A full-size run refuses at once when torch sees no CUDA device (it would train GPT-2 Large in
fp32 on the CPU until killed); `--tiny` (smoke.yaml's 2-layer model, `bench.gpu --tiny`) runs
on the CPU.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__" and not __package__:  # run as a file by run.sh, before install
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402 - on the GPU image; the project's own imports come after `install`

from gpu_check.pipeline import make_workdir, pipeline_stages, python_argv  # noqa: E402
from gpu_check.provenance import kit_hash, project_state  # noqa: E402
from gpu_check.record import ARCHIVE, Results, Step, collect, json_or_none  # noqa: E402

GPU_TARGET_S = 9 * 60  # the whole check on one H100 (issue 10)
# One command on a lent machine runs at most 600 s: the whole call, install included, stops
# itself well before, with time left to send the results back.
DEFAULT_BUDGET_S = 480


class Terminated(Exception):
    """SIGTERM arrived (a time limit outside the check): stop the step, say so, exit 143."""


def _terminate(signum, frame):
    raise Terminated


def run_step(
    name: str,
    argv: list[str],
    cwd: Path,
    logs: Path,
    budget_end: float,
    env: dict[str, str] | None = None,
    record: Results | None = None,
) -> Step:
    """Run one step, its output teed to logs/<name>.log (flushed line by line), stopped at
    `budget_end` (time.monotonic); `record` refreshes the summary while it runs."""
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
        if record is not None:
            record.start(name)
        try:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                sys.stdout.write(line)
                sys.stdout.flush()
            code = proc.wait()
        except BaseException:  # SIGTERM (Terminated) or Ctrl-C: the step goes with the check
            proc.kill()
            proc.wait(timeout=30)
            raise
        finally:
            timer.cancel()
            if record is not None:
                record.stop()
    seconds = time.monotonic() - start
    if code == 0:
        status = "ok"
    elif time.monotonic() >= budget_end:
        status = "timed out"
    else:
        status = f"failed (exit {code})"
    print(f"== {name}: {status} in {seconds:.1f} s", flush=True)
    return Step(name, seconds, status)


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


def check_figures(
    steps: list[Step], work: Path, plan: dict | None, bench: dict | None = None
) -> dict:
    """The figures a reader of the check wants first; each step's measured seconds beside the
    plan's expected (and pessimistic) ones."""
    from gpu_check.plan import training_mfu

    expected = (plan or {}).get("expected_s", {})
    pessimistic = (plan or {}).get("pessimistic_s", {})
    rows = [
        {**asdict(s), "expected_s": expected.get(s.name), "pessimistic_s": pessimistic.get(s.name)}
        for s in steps
    ]
    summary: dict = {"steps": rows, "total_s": round(sum(s.seconds for s in steps), 1)}
    summary["target_s"] = GPU_TARGET_S
    if not (work / "params.yaml").is_file():
        return summary
    collect(work, work.parent)
    perf = json_or_none(work / "perf/train.json") or {}
    ranks = perf.get("ranks") or [{}]
    # The training loop's MFU; the whole run's follows from the two times (one FLOP count,
    # which reads the training set: this runs at every refresh).
    loop_mfu = training_mfu(work, perf, "train_loop_seconds") if perf else None
    run_mfu = None
    if loop_mfu is not None and perf.get("runtime_seconds"):
        run_mfu = loop_mfu * perf["train_loop_seconds"] / perf["runtime_seconds"]
    summary.update(
        device=perf.get("device"),
        precision=perf.get("precision"),
        train_tokens_per_s=perf.get("train_tokens_per_second"),
        # The training loop alone (optimizer steps), and the whole Trainer run with its dev
        # evaluations and checkpoint writes.
        train_mfu=loop_mfu,
        train_mfu_with_evaluations_and_checkpoints=run_mfu,
        train_peak_gpu_allocated_bytes=ranks[0].get("peak_gpu_allocated_bytes"),
        evaluate={},
    )
    for which in ("base", "finetuned"):
        details = json_or_none(work / f"eval/{which}/details.json")
        metrics = json_or_none(work / f"metrics/eval_{which}.json")
        if details and metrics:
            perf = details["perf"]
            summary["evaluate"][which] = {
                "accuracy": metrics.get("accuracy"),
                "n_generated": metrics.get("n_generated"),
                **{
                    key: perf.get(key)
                    for key in (
                        "runtime_s",
                        "generation_s",
                        "generation_examples_per_s",
                        "decode_step",
                        "generation_batch_size",
                        "decode_steps",
                        "decode_step_ms",
                        "decode_fallback",
                        "peak_gpu_allocated_bytes",
                    )  # fmt: skip
                },
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


def _seconds(value: float | None) -> str:
    return "    n/a" if value is None else f"{value:7.1f}"


def summary_text(summary: dict) -> str:
    lines = ["", "== GPU check summary", f"   {'step':<22} {'measured':>9} {'expected':>9} "
             f"{'pessim.':>9}  status"]  # fmt: skip
    for step in summary["steps"]:
        lines.append(
            f"   {step['name']:<22} {step['seconds']:7.1f} s {_seconds(step.get('expected_s'))} s "
            f"{_seconds(step.get('pessimistic_s'))} s  {step['status']}"
        )
    total = summary["total_s"]
    lines.append(
        f"   {'total':<22} {total:7.1f} s  ({total / 60:.1f} min; target on one H100 "
        f"< {summary['target_s'] / 60:.0f} min)"
    )
    if summary.get("plan", {}).get("capped"):
        lines.append(f"   capped: {summary['plan']['capped']}")
    if summary.get("device"):
        lines.append(
            f"   train on {summary['device']} ({summary['precision']}): "
            f"{summary['train_tokens_per_s']} tokens/s, MFU {_pct(summary['train_mfu'])} of the "
            f"training loop ({_pct(summary['train_mfu_with_evaluations_and_checkpoints'])} with "
            f"dev evaluations and checkpoint writes), peak GPU memory "
            f"{_gib(summary['train_peak_gpu_allocated_bytes'])}"
        )
    for which, ev in summary.get("evaluate", {}).items():
        lines.append(
            f"   evaluate {which:<9}: accuracy {ev['accuracy']:.3f}, {ev['runtime_s']} s; "
            f"{ev['n_generated']} answers in batches of {ev['generation_batch_size']}, "
            f"{ev['decode_step']} decode step {ev['decode_step_ms']} ms"
            + (f" ({ev['decode_fallback']})" if ev.get("decode_fallback") else "")
            + f", peak GPU memory {_gib(ev['peak_gpu_allocated_bytes'])}"
        )
    for lengths, run in (summary.get("bench") or {}).get("full_fine_tuning", {}).items():
        lines.append(
            f"   bench.gpu full fine-tuning at {lengths}: {run['tokens_per_s']:,.0f} tokens/s, "
            f"MFU {_pct(run['mfu'])}"
        )
    return "\n".join(lines)


def install_kit(kit: Path, site: Path, out: Path, budget_end: float, record: Results) -> bool:
    """The kit's wheels into `site` (and its data as the default data); False if it failed."""
    os.environ.setdefault("PUBMEDQA_DIR", str(kit / "pubmedqa"))
    os.environ.setdefault("GPT2_TOKENIZER_DIR", str(kit / "gpt2-tokenizer"))
    install = [
        sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--target",
        str(site), "--find-links", str(kit / "wheels"), "-r", str(kit / "requirements.txt"),
    ]  # fmt: skip
    step = run_step("install", install, out, out / "logs", budget_end, record=record)
    record.add(step, "installed the kit")
    sys.path.insert(0, str(site))
    return step.status == "ok"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bash gpu_check/run.sh", description=__doc__.split("\n")[0]
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
    # run.sh stamps its start: the budget covers the whole call, not just this process.
    started = float(os.environ.get("GPU_CHECK_STARTED") or time.time())
    budget_end = time.monotonic() + args.budget - (time.time() - started)
    out = args.outdir.resolve()
    logs, work, site = out / "logs", out / "work", out / "site"
    logs.mkdir(parents=True, exist_ok=True)
    if args.results:
        args.results.mkdir(parents=True, exist_ok=True)
    plan: dict = {}
    record = Results(
        out,
        args.results.resolve() if args.results else None,
        started,
        lambda steps, **kw: check_figures(steps, work, plan, **kw),
    )
    record.extra = {
        "tiny": args.tiny,
        "budget_s": args.budget,
        "project": project_state(args.kit),
        "kit_sha256": kit_hash(args.kit),
    }
    if not args.tiny and (refusal := cuda_refusal()):
        record.extra["refused"] = refusal
        record.write("refused: no CUDA device")
        print(refusal, file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _terminate)
    record.write("started")
    try:
        return run_check(args, out, work, site, budget_end, record, plan)
    except Terminated:
        step = record.last_started
        record.write(f"killed (SIGTERM) while running {step}")
        print(f"gpu_check: killed (SIGTERM) while running {step}", file=sys.stderr, flush=True)
        return 143


def run_check(args, out, work, site, budget_end, record, plan) -> int:
    logs = out / "logs"
    if (args.kit / "wheels").is_dir():
        ok = install_kit(args.kit, site, out, budget_end, record)
    else:
        ok, site = True, None
    env = child_env(site)
    imports = [sys.executable, "-m", "gpu_check.environment", str(out / "environment.json")]
    if not ok:
        record.add(Step("imports", 0.0, "skipped"), "stopped: the kit did not install")
    else:
        step = run_step("imports", imports, out, logs, budget_end, env, record)
        record.add(step, "checked the imports")
    if record.steps[-1].status != "ok":
        record.write("stopped: a package cannot be imported")
        print(f"gpu_check: see {logs}/install.log and {logs}/imports.log", file=sys.stderr)
        return 1
    record.extra["environment"] = json_or_none(out / "environment.json")

    from bench.shared_data import require_shared
    from gpu_check.plan import plan as make_plan

    pubmedqa, tokenizer = require_shared()
    stages = pipeline_stages(ROOT / "dvc.yaml")
    names = [s.name for s in record.steps] + [s.name for s in stages] + ["bench.gpu"]
    try:
        plan.update(make_plan(names, pubmedqa, tokenizer, args.budget))
    except Exception as exc:  # noqa: BLE001 - the plan informs; the stages say what is wrong
        print(f"gpu_check: no plan ({type(exc).__name__}: {exc})", flush=True)
    overrides = {} if args.tiny else plan.get("overrides", {})
    make_workdir(work, pubmedqa, tokenizer, args.tiny, overrides)
    record.extra["plan"] = plan
    record.extra["params"] = yaml.safe_load((work / "params.yaml").read_text())
    if plan:
        print(
            f"gpu_check: plan for one H100: {plan['total_expected_s']:.0f} s expected, "
            f"{plan['total_pessimistic_s']:.0f} s if decode steps take 30 ms and the rest is "
            f"1.5x slower" + (f"; {plan['capped']}" if "capped" in plan else ""),
            flush=True,
        )
    print(f"gpu_check: {len(stages)} stages of dvc.yaml in {work}, then bench.gpu", flush=True)

    for stage in stages:
        if record.steps[-1].status != "ok":
            record.add(Step(stage.name, 0.0, "skipped"), f"skipped {stage.name}")
            continue
        step = run_step(stage.name, python_argv(stage.cmd), work, logs, budget_end, env, record)
        record.add(step, f"ran {stage.name}")
    bench_json = out / "bench_gpu.json"
    bench_argv = [sys.executable, "-m", "bench.gpu", "--out", str(bench_json)]
    bench_argv += ["--scratch", str(work)] + ["--tiny"] * args.tiny
    step = run_step("bench.gpu", bench_argv, work, logs, budget_end, env, record)
    record.add(step, "ran bench.gpu")

    ok = all(s.status == "ok" for s in record.steps)
    if ok:
        status = "finished"
    elif any(s.status == "timed out" for s in record.steps):
        status = "stopped at the deadline"
    else:
        status = "failed: " + next(s.name for s in record.steps if s.status != "ok")
    summary = record.write(status, bench=json_or_none(bench_json))
    print(summary_text(summary))
    print(
        f"\nwrote {out}/summary.json, logs/ and metrics/"
        + (f"; {args.results}/summary.json and {ARCHIVE}" if args.results else "")
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
