# Two commands for a fresh clone (with ../shared beside it, offline):
#   make demo   - create .venv, install, run the quickstart on BreastMNIST
#   make test   - create/reuse .venv, install with test extras, lint, run the whole test suite
# and, while developing: make test-fast - the same without the integration tests (no ../shared needed)
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
SHARED ?= ../shared
export TPP_DATA_ROOT ?= $(abspath $(SHARED)/data)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
# every pip call goes through constraints.txt: torch stays the local CPU wheel
PIP_INSTALL := -m pip install --constraint constraints.txt --disable-pip-version-check -q
PIP := $(VENV)/bin/python $(PIP_INSTALL)
STAMP := $(VENV)/.tpp-installed
TPP := $(VENV)/bin/tpp
DEMO := runs/demo
BACKBONE ?= $(SHARED)/models/mae-vit-tiny-med

.PHONY: install demo test test-fast lint check-torch wheel-check floor-check clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(VENV)/bin/python setup.cfg pyproject.toml constraints.txt
	$(PIP) torch==2.13.0
	$(PIP) -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

check-torch: install
	$(VENV)/bin/python -c "import torch; v = torch.__version__; assert v.endswith('+cpu') and torch.version.cuda is None, 'torch ' + v + ' is not the CPU build'; print('torch', v, '(CPU build)')"

# Quickstart: LoRA fine-tuning with all labels; then target parameter pre-training on the unlabeled
# training images and fine-tuning with 10% of the labels from TPP and from random init.
demo: install
	$(TPP) run finetune --config breast_us/mae_vit_tiny_lora_finetune.yaml --overwrite \
	    backbone.path=$(BACKBONE) output_dir=$(DEMO)/lora_100
	$(TPP) run tpp --config breast_us/mae_vit_tiny_lora_tpp.yaml --overwrite \
	    backbone.path=$(BACKBONE) output_dir=$(DEMO)/tpp
# The 10% runs validate on 10% of the validation labels (9 images: too few to select on, so the last of the
# 200 steps is kept; data.val_label_fraction would default to 0.1 anyway).
	$(TPP) run finetune --config breast_us/mae_vit_tiny_lora_finetune.yaml --overwrite \
	    backbone.path=$(BACKBONE) data.label_fraction=0.1 data.val_label_fraction=0.1 train.max_steps=200 \
	    output_dir=$(DEMO)/lora_10_random
	$(TPP) run finetune --config breast_us/mae_vit_tiny_lora_finetune.yaml --overwrite \
	    backbone.path=$(BACKBONE) data.label_fraction=0.1 data.val_label_fraction=0.1 train.max_steps=200 \
	    output_dir=$(DEMO)/lora_10_tpp \
	    adapter.init_from=$(DEMO)/tpp/adapter
	$(TPP) compare $(DEMO)/lora_100 $(DEMO)/lora_10_random $(DEMO)/lora_10_tpp

lint: install
	$(VENV)/bin/ruff check tpp adapters recipes benchmarks tests

test: install check-torch lint
	$(VENV)/bin/pytest

# The unit tests alone: everything but the tests marked integration (real data and the shared backbone)
test-fast: install check-torch lint
	$(VENV)/bin/pytest -m "not integration"

# Build the wheel, install it into a clean venv, validate every shipped config and run a recipe from there.
wheel-check: install
	rm -rf build/wheel-venv dist && $(VENV)/bin/python -m pip wheel --no-deps -q -w dist .
	$(PYTHON) -m venv build/wheel-venv
	build/wheel-venv/bin/python $(PIP_INSTALL) torch==2.13.0
	build/wheel-venv/bin/python $(PIP_INSTALL) dist/tpp-*.whl
	cd build && wheel-venv/bin/tpp ls && wheel-venv/bin/python ../.ci/validate_configs.py $(abspath $(BACKBONE))
	cd build && ! wheel-venv/bin/python -c "import adapters" 2>/dev/null
	cd build && wheel-venv/bin/tpp run tpp --config breast_us/mae_vit_tiny_lora_tpp.yaml --overwrite \
	    backbone.path=$(abspath $(BACKBONE)) train.max_steps=2 output_dir=wheel-run && test -f wheel-run/adapter/tpp_card.json

# The lowest supported versions: every runtime lower bound in setup.cfg pinned at once (.ci/floors.py; torch
# stays the CPU wheel), then the unit tests. Integration tests run on pip's resolution in `make test`.
FLOOR := build/floor-venv
floor-check:
	rm -rf $(FLOOR) && $(PYTHON) -m venv $(FLOOR)
	$(FLOOR)/bin/python $(PIP_INSTALL) torch==2.13.0 uv
	$(FLOOR)/bin/python .ci/floors.py > $(FLOOR)/floors.txt
	$(FLOOR)/bin/uv pip install -q --python $(FLOOR)/bin/python \
	    --constraint constraints.txt --constraint $(FLOOR)/floors.txt -e ".[test]"
	$(FLOOR)/bin/uv pip list --python $(FLOOR)/bin/python 2>/dev/null \
	    | grep -E "^(torch|transformers|peft|accelerate|datasets|torchmetrics|numpy) "
	$(FLOOR)/bin/pytest -q -m "not integration" -p no:cacheprovider

clean:
	rm -rf $(VENV) build dist runs *.egg-info
