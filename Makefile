# Shortcuts for the offline workflow. Paths to the offline data and tokenizer default to the
# copies in ../shared; override them on the command line or in the environment.
PYTHON ?= python
PUBMEDQA_DIR ?= ../shared/pubmedqa
GPT2_TOKENIZER_DIR ?= ../shared/gpt2-tokenizer
export PUBMEDQA_DIR := $(abspath $(PUBMEDQA_DIR))
export GPT2_TOKENIZER_DIR := $(abspath $(GPT2_TOKENIZER_DIR))

.PHONY: help test lint deps offline-data smoke-params smoke bench gpu-kit cpu-large plots-template \
	mutate

# `make` alone lists the targets: the text after each target's `##`.
help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /\1\t/' \
		| awk -F'\t' '{ printf "  make %-16s %s\n", $$1, $$2 }'

test: ## the whole suite, as .ci/run runs it
	$(PYTHON) -m pytest

# ruff's lint and format check (pyproject.toml's settings); the suite runs both (tests/test_lint.py).
lint: ## ruff check and ruff format --check
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

# Declared dependencies = imported ones (deptry; tests/test_dependencies.py runs it too).
deps: ## deptry: declared dependencies = imported ones
	$(PYTHON) -m deptry .

# Put a local copy of the official ori_pqal.json where the `download` stage verifies it.
offline-data: ## copy the official ori_pqal.json where the download stage verifies it
	mkdir -p data/external
	cp $(PUBMEDQA_DIR)/ori_pqal.json data/external/ori_pqal.json

# Apply smoke.yaml to params.yaml in place (try the workflow offline in a working copy).
smoke-params: ## apply smoke.yaml to params.yaml in place
	$(PYTHON) -m pubmedqa_gpt2.smoke_params params.yaml

# Clone the current commit into DIR, apply the smoke overrides there and run the pipeline.
# What smoke and cpu-large share: a clone of this commit in DIR with the offline data and the
# smoke params.
define smoke_clone
	@test -n "$(DIR)" || { echo "usage: make $@ DIR=<path>"; exit 2; }
	git clone --quiet "$(CURDIR)" "$(DIR)"
	$(MAKE) -C "$(DIR)" offline-data smoke-params
endef

smoke: ## the whole pipeline offline in a clone (DIR=path), a few minutes on a CPU
	$(smoke_clone)
	cd "$(DIR)" && dvc repro

# The page `dvc plots show/diff` fill, vega inlined (no network): rebuild it from the pinned
# vl-convert-python (the dev extra) and commit it; .dvc/config names it.
plots-template: ## rebuild reports/plots_template.html (vega inlined)
	$(PYTHON) -m tools.plots_template

# Mutation testing (mutmut, the dev extra) of every library module, each mutant against the
# tests that reach it ([tool.mutmut] in pyproject.toml); figures and run time: docs/TESTING.md.
# MODULE=pubmedqa_gpt2.training.loss mutates one module. Resumes where it stopped (mutants/
# holds the state); `mutmut results` lists the survivors, `mutmut show NAME` prints one.
# CI=true: a test session without the offline data stops instead of skipping (a skipped test
# would let every mutant survive).
MUTATE_CHILDREN ?= 2
mutate: ## mutation testing (MODULE=pubmedqa_gpt2.x.y for one module)
	env -u PYTHONPATH CI=true OMP_NUM_THREADS=1 nice -n 15 $(PYTHON) -m mutmut run \
		--max-children $(MUTATE_CHILDREN) $(if $(MODULE),"$(MODULE).*")
	$(PYTHON) -m mutmut results

bench: ## the CPU benchmarks (bench/cpu.py)
	$(PYTHON) -m bench.cpu

# GPT-2 Large (random weights) trained for a few steps on this CPU, before renting a GPU: the
# smoke clone with the real model's shape and settings that fit 24 GiB (batch 1, gradient
# checkpointing, 8 questions, 1 epoch). Figures: docs/PERFORMANCE.md, "GPT-2 Large on a CPU".
cpu-large: ## GPT-2 Large's shape trained a few steps on this CPU, in a clone (DIR=path)
	$(smoke_clone)
	cd "$(DIR)" && dvc exp run train -S model.name=gpt2-large -S model.overrides.n_layer=36 \
		-S model.overrides.n_embd=1280 -S model.overrides.n_head=20 \
		-S prepare.max_length=1024 -S prepare.max_train_samples=8 -S train.epochs=1 \
		-S train.batch_size=1 -S train.gradient_checkpointing=true
	cat "$(DIR)/metrics/train.json" "$(DIR)/perf/train.json"

# The folder gpu_check/run.sh needs on a bare, offline GPU machine (wheels, data, tokenizer):
# copy it there beside the working tree. Needs PyPI and any Python with pip (KIT_PYTHON), not
# the project; refused if a wheel's requirement is met neither by a pin nor by the GPU image,
# or if it and the tracked files pass 60 MiB.
GPU_KIT ?= gpu-kit
KIT_PYTHON ?= python3
gpu-kit: ## the folder the GPU check needs on an offline GPU machine (GPU_KIT=dir)
	$(KIT_PYTHON) -m gpu_check.kit $(GPU_KIT)
