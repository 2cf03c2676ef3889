# Shortcuts for the offline workflow. Paths to the offline data and tokenizer default to the
# copies in ../shared; override them on the command line or in the environment.
PYTHON ?= python
PUBMEDQA_DIR ?= ../shared/pubmedqa
GPT2_TOKENIZER_DIR ?= ../shared/gpt2-tokenizer
export PUBMEDQA_DIR := $(abspath $(PUBMEDQA_DIR))
export GPT2_TOKENIZER_DIR := $(abspath $(GPT2_TOKENIZER_DIR))

.PHONY: test offline-data smoke-params smoke bench

test:
	$(PYTHON) -m pytest

# Put a local copy of the official ori_pqal.json where the `download` stage verifies it.
offline-data:
	mkdir -p data/external
	cp $(PUBMEDQA_DIR)/ori_pqal.json data/external/ori_pqal.json

# Apply smoke.yaml to params.yaml in place (try the workflow offline in a working copy).
smoke-params:
	$(PYTHON) -m stages.smoke_params params.yaml

# Clone the current commit into DIR, apply the smoke overrides there and run the pipeline.
smoke:
	@test -n "$(DIR)" || { echo "usage: make smoke DIR=<path>"; exit 2; }
	git clone --quiet "$(CURDIR)" "$(DIR)"
	$(MAKE) -C "$(DIR)" offline-data smoke-params
	cd "$(DIR)" && dvc repro

bench:
	$(PYTHON) -m bench.cpu
