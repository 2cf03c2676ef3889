"""The check's `imports` step, run by the interpreter the stages run with (the kit's packages
on its path): every module the stages and bench.gpu import, then what this machine is, written
to the JSON file named by the argument: Python, torch, CUDA runtime and driver, transformers,
accelerate, peft, GPU name and memory.

    python -m gpu_check.environment OUTDIR/environment.json
"""

from __future__ import annotations

import importlib
import json
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# Every module the stages and bench.gpu import that the GPU image may lack.
IMPORTS = (
    "torch", "transformers", "accelerate", "peft", "safetensors", "pyarrow", "sklearn", "scipy",
    "sacrebleu", "yaml", "pydantic", "ruamel.yaml", "dvclive", "nltk", "rouge_score",
)  # fmt: skip
VERSIONS = ("torch", "transformers", "accelerate", "peft", "dvclive", "pydantic")


def missing_imports(names=IMPORTS) -> list[str]:
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any failure to import is what is reported
            missing.append(f"{name} ({type(exc).__name__}: {exc})")
    return missing


def driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out.strip() else None


def describe() -> dict:
    import torch

    packages = {}
    for name in VERSIONS:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {
            "name": props.name,
            "memory_bytes": props.total_memory,
            "count": torch.cuda.device_count(),
        }
    return {
        "python": platform.python_version(),
        "executable": sys.executable,
        "packages": packages,
        "cuda_runtime": torch.version.cuda,
        "cuda_driver": driver_version() if gpu else None,
        "gpu": gpu,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    missing = missing_imports()
    if missing:
        print(
            "gpu_check: cannot import " + "; ".join(missing) + " (make gpu-kit builds the wheels)",
            file=sys.stderr,
        )
        return 1
    info = describe()
    Path(argv[0]).write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
