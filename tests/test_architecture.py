"""The layout holds: stages are thin entry points that never import each other, the library is
layered, and every stage's `deps:` in dvc.yaml is exactly its import closure.

The import graph is grimp's (the engine of import-linter), built from the source files, so a
stage's closure is what `python -m stages.<stage>` really imports within the project.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES, LIBRARY = "stages", "pubmedqa_gpt2"

# The library's layers, highest first. A module may import modules of its own component (the
# module itself, or its subpackage) and of any lower layer; components of one layer are
# independent of each other (training never imports evaluation, data never imports model).
LAYERS = [
    ["cli"],
    ["slurm"],  # sweeps on a cluster: its tasks stop training the way training looks for
    ["summary_plot"],  # a sweep's page: the groups `summary` makes
    ["training", "evaluation", "summary", "smoke_params"],
    ["data", "model"],
    ["prompt", "gpu_claims", "out_of_memory"],
    ["core"],  # config, errors, io, paths: what every stage reads
]


def import_graph(root: Path = ROOT) -> grimp.ImportGraph:
    packages = [p for p in (STAGES, LIBRARY) if (root / p / "__init__.py").is_file()]
    return grimp.build_graph(*packages, cache_dir=None)


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return import_graph()


def source_file(module: str, root: Path = ROOT) -> Path:
    """The file of a module (`a/b.py`), or of a package (`a/b/__init__.py`)."""
    path = root / module.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def is_package(module: str, root: Path = ROOT) -> bool:
    return (root / module.replace(".", "/") / "__init__.py").is_file()


def component(module: str) -> str:
    """`pubmedqa_gpt2.training.recipe` -> `training`."""
    return module.split(".")[1]


def layer(module: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if component(module) in names)


# ---- Layers ----


def test_every_library_module_is_in_a_layer(graph):
    modules = {m for m in graph.modules if m.startswith(LIBRARY + ".")}
    placed = {name for names in LAYERS for name in names}
    assert sorted({component(m) for m in modules} - placed) == []


def layer_violations(graph: grimp.ImportGraph) -> list[str]:
    """Every direct import that breaks the rules above, as `importer -> imported (why)`."""
    found = []
    for importer in sorted(m for m in graph.modules if m.startswith(LIBRARY + ".")):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            if imported.startswith(STAGES):
                found.append(f"{importer} -> {imported} (the library imports a stage)")
            elif imported.startswith(LIBRARY + ".") and component(imported) != component(importer):
                if layer(imported) < layer(importer):
                    found.append(f"{importer} -> {imported} (a lower layer imports a higher one)")
                elif layer(imported) == layer(importer):
                    found.append(f"{importer} -> {imported} (independent components)")
    return found


def test_the_library_is_layered_and_never_imports_a_stage(graph):
    assert layer_violations(graph) == []


def stage_to_stage_imports(graph: grimp.ImportGraph) -> list[str]:
    stages = sorted(m for m in graph.modules if m.startswith(STAGES + "."))
    return [
        f"{m} -> {other}"
        for m in stages
        for other in sorted(graph.find_upstream_modules(m))
        if other.startswith(STAGES + ".")
    ]


def test_stage_modules_never_import_each_other(graph):
    assert stage_to_stage_imports(graph) == []


def test_the_checks_catch_what_they_guard():
    """A stage importing a stage, and a low layer importing a high one, are both caught."""
    graph = import_graph()  # a graph of its own, changed below
    graph.add_import(importer="stages.pretrain", imported="stages.train")
    assert stage_to_stage_imports(graph) == ["stages.pretrain -> stages.train"]
    graph.add_import(importer="pubmedqa_gpt2.core.config", imported="pubmedqa_gpt2.training.recipe")
    graph.add_import(importer="pubmedqa_gpt2.cli", imported="stages.evaluate")
    graph.add_import(importer="pubmedqa_gpt2.training.trainer", imported="pubmedqa_gpt2.evaluation")
    assert layer_violations(graph) == [
        "pubmedqa_gpt2.cli -> stages.evaluate (the library imports a stage)",
        "pubmedqa_gpt2.core.config -> pubmedqa_gpt2.training.recipe "
        "(a lower layer imports a higher one)",
        "pubmedqa_gpt2.training.trainer -> pubmedqa_gpt2.evaluation (independent components)",
    ]


@pytest.mark.repo_files
def test_package_inits_hold_only_a_docstring():
    """So that no package's __init__.py runs code a stage depends on (they are no deps)."""
    for init in sorted([*(ROOT / LIBRARY).rglob("__init__.py"), ROOT / STAGES / "__init__.py"]):
        body = ast.parse(init.read_text()).body
        docstring_only = len(body) == 1 and isinstance(body[0], ast.Expr)
        assert docstring_only and isinstance(body[0].value, ast.Constant), init


# ---- dvc.yaml's code deps are the stages' import closures ----


def dvc_stages(root: Path = ROOT) -> dict[str, dict]:
    """dvc.yaml's stages with `foreach` expanded: {name: {"cmd": ..., "deps": [...]}}."""
    stages = {}
    for name, stage in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].items():
        if "foreach" not in stage:
            stages[name] = stage
            continue
        for key, item in stage["foreach"].items():

            def fill(text: str, key=key, item=item) -> str:
                text = text.replace("${key}", key)
                for field, value in item.items():
                    text = text.replace(f"${{item.{field}}}", value)
                return text

            stages[f"{name}@{key}"] = {
                "cmd": fill(stage["do"]["cmd"]),
                "deps": [fill(d) for d in stage["do"]["deps"]],
            }
    return stages


def closure_files(graph: grimp.ImportGraph, module: str, root: Path = ROOT) -> set[str]:
    """The project files `python -m module` runs: the module and everything it imports,
    followed through (package __init__ files excepted: docstrings only, tested above)."""
    modules = {module, *graph.find_upstream_modules(module)}
    return {
        source_file(m, root).relative_to(root).as_posix()
        for m in modules
        if not is_package(m, root)
    }


def dep_problems(root: Path = ROOT) -> dict[str, list[str]]:
    """For each stage, the imported project files no dep covers and the code deps (files or
    folders of the project's packages) that cover nothing it imports."""
    graph = import_graph(root)
    packages = [p for p in (STAGES, LIBRARY) if (root / p).is_dir()]
    problems = {}
    for name, stage in dvc_stages(root).items():
        module = stage["cmd"].split()[2]  # python -m stages.<stage> [args]
        imported = closure_files(graph, module, root)
        code_deps = [d for d in stage["deps"] if d.split("/")[0] in packages]

        def covers(dep: str, path: str) -> bool:
            return path == dep or path.startswith(dep.rstrip("/") + "/")

        missing = sorted(f for f in imported if not any(covers(d, f) for d in code_deps))
        unused = [d for d in code_deps if not any(covers(d, f) for f in imported)]
        found = [f"imported, not a dep: {f}" for f in missing]
        found += [f"a dep, never imported: {d}" for d in unused]
        for dep in code_deps:  # a folder is a dep only where the stage imports all of it
            if (root / dep).is_dir() and dep not in unused:
                modules = {
                    p.relative_to(root).as_posix()
                    for p in (root / dep).rglob("*.py")
                    if p.name != "__init__.py" and "__pycache__" not in p.parts
                }
                if not_imported := sorted(modules - imported):
                    found.append(f"a folder dep, partly imported: {dep} (not {not_imported})")
        if found:
            problems[name] = found
    return problems


def test_every_stage_depends_on_exactly_the_code_it_imports():
    problems = dep_problems()
    report = "\n".join(f"{name}: {line}" for name, lines in problems.items() for line in lines)
    assert problems == {}, "dvc.yaml's code deps differ from the import closures:\n" + report


def test_the_deps_check_fails_on_a_missing_and_on_an_unused_dep(tmp_path):
    """The check above on a copy of the project whose dvc.yaml lacks one imported module of
    train and lists one module train never imports, and gives validate, which imports three
    of the four modules of pubmedqa_gpt2/core, the whole folder."""
    import shutil

    for folder in (STAGES, LIBRARY):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    text = (ROOT / "dvc.yaml").read_text()
    train = text.index("  train:\n")
    head, tail = text[:train], text[train:]
    assert "      - pubmedqa_gpt2/model/scoring.py\n" in tail
    tail = tail.replace(
        "      - pubmedqa_gpt2/model/scoring.py\n",
        "      - pubmedqa_gpt2/evaluation/compare.py\n",
        1,
    )
    three = "".join(f"      - pubmedqa_gpt2/core/{m}.py\n" for m in ("config", "errors", "paths"))
    assert head.count(three) == 1
    head = head.replace(three, "      - pubmedqa_gpt2/core\n")
    (tmp_path / "dvc.yaml").write_text(head + tail)
    import sys

    sys.path.insert(0, str(tmp_path))
    saved = {
        m: sys.modules.pop(m) for m in list(sys.modules) if m.split(".")[0] in (STAGES, LIBRARY)
    }
    try:
        problems = dep_problems(tmp_path)
    finally:
        sys.path.remove(str(tmp_path))
        for m in [m for m in sys.modules if m.split(".")[0] in (STAGES, LIBRARY)]:
            del sys.modules[m]
        sys.modules.update(saved)
    assert problems == {
        "train": [
            "imported, not a dep: pubmedqa_gpt2/model/scoring.py",
            "a dep, never imported: pubmedqa_gpt2/evaluation/compare.py",
        ],
        "validate": [
            "a folder dep, partly imported: pubmedqa_gpt2/core (not ['pubmedqa_gpt2/core/io.py'])"
        ],
    }
