# Two commands for a fresh clone:
#   make demo   - create .venv, install, run the quickstart on BreastMNIST
#   make test   - create/reuse .venv, install with test extras, lint, run the whole test suite
# and, while developing: make test-fast - the same without the integration tests.
# The default backbone ships in the package (builtin:mae-vit-tiny-med). With ../shared beside the clone (as in
# CI) its data is used and nothing is downloaded; without it `make demo` downloads BreastMNIST from the
# MedMNIST record on Zenodo into ~/.medmnist (internet needed, MD5-checked) and `make test` skips the integration tests (they need ../shared/data).
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
SHARED ?= ../shared
ifneq ($(wildcard $(SHARED)/data/medmnist),)
export TPP_DATA_ROOT ?= $(abspath $(SHARED)/data)
endif
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
# every pip call goes through constraints.txt: torch stays the local CPU wheel
PIP_INSTALL := -m pip install --constraint constraints.txt --disable-pip-version-check -q
PIP := $(VENV)/bin/python $(PIP_INSTALL)
STAMP := $(VENV)/.tpp-installed
TPP := $(VENV)/bin/tpp
DEMO := runs/demo
BACKBONE ?= builtin:mae-vit-tiny-med
# a path made absolute for runs from another folder; builtin:NAME and hub ids as written
BACKBONE_ARG = $(if $(filter builtin:%,$(BACKBONE)),$(BACKBONE),$(if $(wildcard $(BACKBONE)),$(abspath $(BACKBONE)),$(BACKBONE)))

.PHONY: install demo demo-data test test-fast lint check-torch wheel-check floor-check floor-tests clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(VENV)/bin/python setup.cfg pyproject.toml constraints.txt
	$(PIP) torch==2.13.0
	$(PIP) -e ".[test,ray]"
	touch $(STAMP)

install: $(STAMP)

check-torch: install
	$(VENV)/bin/python -c "import torch; v = torch.__version__; assert v.endswith('+cpu') and torch.version.cuda is None, 'torch ' + v + ' is not the CPU build'; print('torch', v, '(CPU build)')"

# Quickstart: LoRA fine-tuning with all labels; then target parameter pre-training on the unlabeled
# training images and fine-tuning with 10% of the labels from TPP and from random init.
demo: install demo-data
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

# Without a data root, the first recipe downloads BreastMNIST into ~/.medmnist (tpp's own download: the medmnist
# package would pull a torchvision from the registry that does not load against the local CPU torch).
demo-data: install
	@if [ -z "$$TPP_DATA_ROOT" ]; then \
	    echo "no $(SHARED)/data and no TPP_DATA_ROOT: BreastMNIST will be downloaded from Zenodo into ~/.medmnist"; fi

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
	cd build && wheel-venv/bin/tpp ls && wheel-venv/bin/python ../.ci/validate_configs.py $(BACKBONE_ARG)
	cd build && ! wheel-venv/bin/python -c "import adapters" 2>/dev/null
	cd build && wheel-venv/bin/tpp run tpp --config breast_us/mae_vit_tiny_lora_tpp.yaml --overwrite \
	    backbone.path=$(BACKBONE_ARG) train.max_steps=2 output_dir=wheel-run && test -f wheel-run/adapter/tpp_card.json
	# the default backbone is installed inside the wheel's package and is the one the run used
	cd build && wheel-venv/bin/tpp ls | grep -q "builtin:mae-vit-tiny-med.*(default)"
	cd build && wheel-venv/bin/python -c "import json, sys; from tpp.backbones import *; \
	    p = resolve_backbone(DEFAULT_BACKBONE); assert 'site-packages' in p, p; \
	    card = json.load(open('wheel-run/adapter/tpp_card.json'))['backbone']; \
	    want = builtin_hash(DEFAULT_BACKBONE.split(':')[1]); \
	    assert '$(BACKBONE)' != DEFAULT_BACKBONE or (card['id'], card['hash']) == (DEFAULT_BACKBONE, want), card; \
	    print('shipped backbone', p, 'hash', want[:12], 'used by the run')"

# The lowest supported versions: every runtime lower bound in setup.cfg pinned at once (.ci/floors.py; torch
# stays the CPU wheel), then the unit tests. Integration tests run on pip's resolution in `make test`.
# It runs in a copy of the tracked files in a temporary folder (no ../shared beside it, TPP_DATA_ROOT unset):
# the unit tests use only what ships (the builtin backbone) and what they build themselves.
FLOOR := build/floor-venv
floor-check:
	@set -e; tmp=$$(mktemp -d "$${TMPDIR:-/tmp}/tpp-floor.XXXXXX"); trap 'rm -rf "$$tmp"' EXIT; \
	mkdir "$$tmp/repo"; git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$$tmp/repo"; \
	echo "floor-check in $$tmp/repo (no ../shared there, TPP_DATA_ROOT unset)"; test ! -e "$$tmp/shared"; \
	cd "$$tmp/repo" && env -u TPP_DATA_ROOT -u TPP_SHARED $(MAKE) --no-print-directory floor-tests PYTHON=$(PYTHON) SHARED=../shared

floor-tests:
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
