# unified_vision: the two commands of the README.
#   make        build the environment (.venv, pinned dependencies, package editable with kernels/ compiled)
#               and run the main job: `dvc repro` on the default profile (mini)
#   make test   build the environment if needed and run the test suite
# Other targets: env, repro, docs (offline site in _docs/), kernels (rebuild the C++/CUDA extension),
#   sanitize (the kernels' tests against an ASan/UBSan build), bench.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE := 1
export MPLBACKEND := Agg
export NO_MKDOCS_2_WARNING := 1

.PHONY: all env repro test docs kernels sanitize bench chromium
all: repro

env: $(VENV)/.installed
$(VENV)/.installed: requirements.txt setup.py settings.ini $(shell find kernels -name '*.cpp' -o -name '*.h' -o -name '*.cu' 2>/dev/null)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -r requirements.txt
	MAX_JOBS=2 $(BIN)/pip install -q --no-build-isolation --no-deps -e .
	$(BIN)/python -c "import unified_vision.ops as o; print('kernels extension:', 'built' if o.extension_available() else 'MISSING (reference ops in use)')"
	touch $@

repro: env
	$(BIN)/dvc repro

chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

test: env chromium
	$(BIN)/python -m pytest

docs: env
	$(BIN)/mkdocs build --quiet --clean

kernels: env
	MAX_JOBS=2 $(BIN)/python setup.py build_ext --inplace

sanitize: env
	bash kernels/sanitize.sh

bench: env
	$(BIN)/python benchmarks/make_benchmarks.py
