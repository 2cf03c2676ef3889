"""tools/mutation_figures.py: docs/TESTING.md's mutation table from mutmut's verdict files."""

from __future__ import annotations

import json

from tools import mutation_figures


def write_meta(root, module: str, codes: dict) -> None:
    path = root / "pubmedqa_gpt2" / (module.replace(".", "/") + ".py.meta")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"exit_code_by_key": codes}))


def test_the_table_counts_each_verdict_and_the_listed_equivalents_apart(tmp_path):
    """Module a.b: 5 killed (exit 1, and 3 for pytest's internal error), 1 timeout (36), 2
    survivors of which 1 is listed as equivalent, 1 without tests (33), 1 not run: detected
    = (5 + 1) / (5 + 1 + 1 + 1) = 75.0%, partial. Module c: 2 killed, 1 segfault-free
    timeout (24): 100.0%. A module without mutants is left out."""
    mutants = tmp_path / "mutants"
    write_meta(mutants, "a.b", {
        "a.b.x_f__mutmut_1": 1, "a.b.x_f__mutmut_2": 1, "a.b.x_f__mutmut_3": 1,
        "a.b.x_f__mutmut_4": 1, "a.b.x_f__mutmut_5": 3, "a.b.x_f__mutmut_6": 36,
        "a.b.x_f__mutmut_7": 0, "a.b.x_f__mutmut_8": 0, "a.b.x_f__mutmut_9": 33,
        "a.b.x_f__mutmut_10": None,
    })  # fmt: skip
    write_meta(mutants, "c", {"c.x_g__mutmut_1": 1, "c.x_g__mutmut_2": 1, "c.x_g__mutmut_3": 24})
    write_meta(mutants, "empty", {})
    equivalents = tmp_path / "equivalents.txt"
    equivalents.write_text("# a comment\n\na.b.x_f__mutmut_8  why it cannot be told apart\n")
    rows = mutation_figures.table(mutants, equivalents).splitlines()
    assert rows[2:] == [
        "| a.b | 10 | 5 | 1 | 1 | 1 | 1 | 1 | 75.0% (partial) |",
        "| c | 3 | 2 | 1 | 0 | 0 | 0 | 0 | 100.0% |",
        "| all | 13 | 7 | 2 | 1 | 1 | 1 | 1 | 81.8% (partial) |",
    ]
    assert mutation_figures.survivors(mutants, equivalents) == ["a.b.x_f__mutmut_7"]


def test_a_slow_module_s_mutants_run_against_its_own_test_files():
    from .conftest import mutation_test_files

    assert mutation_test_files("pubmedqa_gpt2.training.loss.x_labelled_rows__mutmut_3") == [
        "test_loss.py",
        "test_train.py",
    ]
    assert mutation_test_files("pubmedqa_gpt2.training.callbacks.xǁProgressǁon_log__mutmut_12") == [
        "test_callbacks.py",
        "test_train.py",
    ]
    assert mutation_test_files("pubmedqa_gpt2.training.settings.x_f__mutmut_1") == [
        "test_training_settings.py",
        "test_train.py",
    ]
    prompt = mutation_test_files("pubmedqa_gpt2.prompt.x_format_context__mutmut_6")
    assert "test_prepare.py" in prompt and "test_train.py" not in prompt
    # Other modules keep mutmut's selection; so do the runs without a mutant.
    assert mutation_test_files("pubmedqa_gpt2.summary.x_markdown__mutmut_6") is None
    assert mutation_test_files("stats") is None and mutation_test_files("") is None


def test_under_a_mutant_the_collection_keeps_only_those_files(monkeypatch):
    """The collection hook as mutmut's child meets it (MUTANT_UNDER_TEST set), given tests of
    three files: a training.loss mutant keeps test_loss.py's and reports the others
    deselected; without a mutant all stay."""
    from pathlib import Path
    from types import SimpleNamespace

    from .conftest import _keep_mutation_tests

    names = ["test_loss.py", "test_config.py", "test_loss.py", "test_errors.py"]
    deselected = []
    config = SimpleNamespace(
        hook=SimpleNamespace(pytest_deselected=lambda items: deselected.extend(items))
    )

    def items():
        return [SimpleNamespace(path=Path("tests") / name) for name in names]

    monkeypatch.delenv("MUTANT_UNDER_TEST", raising=False)
    kept = items()
    _keep_mutation_tests(config, kept)
    assert [i.path.name for i in kept] == names and deselected == []
    monkeypatch.setenv("MUTANT_UNDER_TEST", "pubmedqa_gpt2.training.loss.x_f__mutmut_1")
    kept = items()
    _keep_mutation_tests(config, kept)
    assert [i.path.name for i in kept] == ["test_loss.py", "test_loss.py"]
    assert [i.path.name for i in deselected] == ["test_config.py", "test_errors.py"]
    # A function that no test of those files reaches keeps every test that does.
    deselected.clear()
    names = ["test_config.py", "test_errors.py"]
    kept = items()
    _keep_mutation_tests(config, kept)
    assert [i.path.name for i in kept] == names and deselected == []
