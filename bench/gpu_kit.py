"""`make gpu-kit`: what bench/gpu_check.sh needs on a bare, offline GPU machine, in one folder.

    python -m bench.gpu_kit gpu-kit                      # cp312 manylinux x86_64 (the default)
    python -m bench.gpu_kit /tmp/kit --python-version 3.11   # for this machine's Python

The folder (git-ignored, copied there with the working tree) holds:
- wheels/: every package of bench/gpu_kit_requirements.txt at its pinned version, downloaded
  as binary wheels for the target Python and platform; those PyPI has only as source ("#
  source" in the list) are built here into pure-Python wheels, and refused if not pure;
- requirements.txt: the pins, for `pip install --no-index --no-deps -r`;
- pubmedqa/ and gpt2-tokenizer/: copies of the offline data (PUBMEDQA_DIR, GPT2_TOKENIZER_DIR),
  since ../shared is not copied to that machine.
The whole folder must stay within 64 MiB; a larger one is an error.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from bench import require_shared

REQUIREMENTS = Path(__file__).resolve().parent / "gpu_kit_requirements.txt"
LIMIT_BYTES = 64 << 20
PLATFORMS = (  # manylinux tags a glibc >= 2.34 x86_64 machine accepts, newest first
    "manylinux_2_34_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_26_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux_2_5_x86_64",
    "manylinux1_x86_64",
)
PUBMEDQA_FILES = ("ori_pqal.json", "test_ground_truth.json", "LICENSE")


def read_pins(path: Path = REQUIREMENTS) -> tuple[list[str], list[str]]:
    """(pins with wheels on PyPI, pins PyPI has only as source), comments dropped."""
    binary, source = [], []
    for line in path.read_text().splitlines():
        pin, _, comment = line.partition("#")
        if pin.strip():
            (source if comment.strip() == "source" else binary).append(pin.strip())
    return binary, source


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build(kit: Path, python_version: str) -> int:
    """Fill `kit`; returns its size in bytes."""
    pubmedqa, tokenizer = require_shared()
    binary, source = read_pins()
    if kit.exists():
        shutil.rmtree(kit)
    wheels = kit / "wheels"
    wheels.mkdir(parents=True)
    abi = "cp" + python_version.replace(".", "")
    target = ["--python-version", python_version, "--implementation", "cp", "--abi", abi]
    target += ["--abi", "abi3", "--abi", "none"]
    for platform in (*PLATFORMS, "any"):
        target += ["--platform", platform]
    pip(
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        *target,
        "-d",
        str(wheels),
        *binary,
    )
    downloaded = set(wheels.iterdir())
    pip("wheel", "--quiet", "--no-deps", "-w", str(wheels), *source)
    impure = [
        w.name for w in set(wheels.iterdir()) - downloaded if not w.name.endswith("-none-any.whl")
    ]
    if impure:
        raise SystemExit(f"gpu_kit: {impure}, built from source, are not pure-Python wheels")
    (kit / "requirements.txt").write_text("\n".join(binary + source) + "\n")
    (kit / "pubmedqa").mkdir()
    for name in PUBMEDQA_FILES:
        shutil.copy2(pubmedqa / name, kit / "pubmedqa" / name)
    shutil.copytree(tokenizer, kit / "gpt2-tokenizer")
    size = folder_bytes(kit)
    wheel_count = len(list(wheels.glob("*.whl")))
    print(
        f"gpu_kit: {kit}: {wheel_count} wheels for Python {python_version} + data and tokenizer, "
        f"{size / 2**20:.1f} MiB in all (limit {LIMIT_BYTES >> 20} MiB)"
    )
    if wheel_count != len(binary) + len(source):
        raise SystemExit(f"gpu_kit: {wheel_count} wheels for {len(binary) + len(source)} pins")
    if size > LIMIT_BYTES:
        raise SystemExit(f"gpu_kit: {kit} is {size / 2**20:.1f} MiB, over the 64 MiB limit")
    return size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_kit", description=__doc__.split("\n")[0]
    )
    parser.add_argument("kit", type=Path)
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's (3.12)")
    args = parser.parse_args(argv)
    build(args.kit, args.python_version)


if __name__ == "__main__":
    main()
