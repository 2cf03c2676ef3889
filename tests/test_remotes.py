"""The smoke run shared through remotes, with real git and real dvc in temporary clones: pushed
to a local DVC remote and pulled into a fresh clone (its model fetched by name, as a registry
version), and experiments run on two machines that meet in a third.

Their helpers are in `tests/e2e.py`, the shared run (`smoke`) in `tests/conftest.py`.
"""

from __future__ import annotations

import pytest

from .conftest import needs_pubmedqa, needs_tokenizer
from .e2e import commit_all, copy_of, metrics_of, ran_stages, read_artifacts, read_json_text, sh

pytestmark = [needs_pubmedqa, needs_tokenizer, pytest.mark.e2e]


def test_push_to_a_local_remote_then_pull_into_a_fresh_clone(smoke, tmp_path):
    repo = copy_of(smoke[0], tmp_path / "repo")
    sh(["dvc", "remote", "add", "--default", "local", str(tmp_path / "remote")], cwd=repo)
    commit_all(repo, "add a local DVC remote")
    sh(["dvc", "push"], cwd=repo)
    fresh = tmp_path / "fresh"
    sh(["git", "clone", "--quiet", str(repo), str(fresh)], cwd=tmp_path)
    # The model registry: a version of the fine-tuned model is a git tag in GTO's form, and
    # `dvc artifacts get` fetches it by name from the DVC remote (the fresh clone has no cache).
    sh(["git", "tag", "-a", "pubmedqa-gpt2@v0.1.0", "-m", "smoke model"], cwd=fresh)
    (declared,) = [a for a in read_artifacts(fresh) if a.path == "models/finetuned"]
    assert declared.type == "model" and declared.desc
    assert {"base=gpt2", "data=pubmedqa-pqa-l", "lora=false"} <= set(declared.labels)
    got = tmp_path / "got"
    sh(["dvc", "artifacts", "get", str(fresh), "pubmedqa-gpt2", "-o", str(got)], cwd=tmp_path)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "README.md"):
        assert (got / name).read_bytes() == (repo / "models/finetuned" / name).read_bytes()
    assert not (fresh / ".dvc/cache").exists()  # it came from the remote
    sh(["dvc", "pull"], cwd=fresh)
    assert "up to date" in sh(["dvc", "status"], cwd=fresh)
    assert ran_stages(sh(["dvc", "repro"], cwd=fresh)) == []
    assert metrics_of(fresh) == metrics_of(repo)


# ---- Several machines: experiments shared through a git remote and a DVC remote ----


def test_experiments_from_two_machines_meet_in_a_third(smoke, tmp_path):
    """Two clones (two machines, sharing one DVC cache as clones on one host can) each run an
    experiment and `dvc exp push` it; a third clone pulls both, lists them with their params
    and metrics, applies one and gets its model and metrics byte for byte."""
    origin, storage, cache = tmp_path / "origin.git", tmp_path / "storage", tmp_path / "cache"
    sh(["git", "init", "--quiet", "--bare", str(origin)], cwd=tmp_path)
    first = copy_of(smoke[0], tmp_path / "first")
    sh(["dvc", "remote", "add", "--default", "storage", str(storage)], cwd=first)
    commit_all(first, "a DVC remote")
    sh(["git", "remote", "add", "shared", str(origin)], cwd=first)
    sh(["git", "push", "--quiet", "shared", "HEAD:main"], cwd=first)
    sh(["dvc", "push"], cwd=first)

    produced = {}
    for name, seed in (("machine-a", 1), ("machine-b", 2)):
        machine = tmp_path / name
        sh(["git", "clone", "--quiet", "--branch", "main", str(origin), str(machine)], cwd=tmp_path)
        sh(["dvc", "cache", "dir", "--local", str(cache)], cwd=machine)
        sh(["dvc", "pull"], cwd=machine)
        sh(["dvc", "exp", "run", "--name", name, "-S", f"train.seed={seed}"], cwd=machine)
        sh(["dvc", "exp", "push", "origin", name], cwd=machine)
        produced[name] = {
            "model": (machine / "models/finetuned/model.safetensors").read_bytes(),
            "metrics": metrics_of(machine),
        }
        assert not (machine / ".dvc/cache").exists()  # one cache for both clones
    assert produced["machine-a"]["model"] != produced["machine-b"]["model"]

    third = tmp_path / "third"
    sh(["git", "clone", "--quiet", "--branch", "main", str(origin), str(third)], cwd=tmp_path)
    sh(["dvc", "exp", "pull", "origin", "machine-a", "machine-b"], cwd=third)
    table = read_json_text(sh(["dvc", "exp", "show", "--json"], cwd=third))
    shown = {
        rev["name"]: rev["data"]
        for commit in table
        for group in commit.get("experiments") or []
        for rev in group["revs"]
    }
    assert set(shown) == {"machine-a", "machine-b"}
    for name, seed in (("machine-a", 1), ("machine-b", 2)):
        data = shown[name]
        assert data["params"]["params.yaml"]["data"]["train"]["seed"] == seed
        accuracy = data["metrics"]["metrics/eval_finetuned.json"]["data"]["accuracy"]
        assert accuracy == produced[name]["metrics"]["eval_finetuned.json"]["accuracy"]
    sh(["dvc", "exp", "apply", "machine-b"], cwd=third)
    sh(["dvc", "pull"], cwd=third)
    model = (third / "models/finetuned/model.safetensors").read_bytes()
    assert model == produced["machine-b"]["model"]
    assert metrics_of(third) == produced["machine-b"]["metrics"]
