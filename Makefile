# `make test` and `make demo` work on a fresh machine: they create .venv and install pinned deps.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DUALSPARSE_DATA ?= $(abspath ../shared/data)
LINT_PATHS := $(wildcard src tests benchmarks examples)

.PHONY: test demo lint venv clean clean-numba bench docs

venv: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	sh scripts/install-embedded-tools.sh
	$(BIN)/ruff check $(LINT_PATHS)
	$(MAKE) docs
	$(BIN)/python -m pytest -q tests

# API reference from the docstrings (pdoc), every module; any warning fails the build.
docs: $(STAMP)
	rm -rf build/api
	$(BIN)/python scripts/build_docs.py build/api

demo: $(STAMP)
	$(BIN)/python examples/demo.py $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)

clean: clean-numba
	rm -rf $(VENV) build *.egg-info src/*.egg-info

# numba's cache files: a cached kernel does not notice edits to the modules it calls
clean-numba:
	find src -name '*.nbi' -delete -o -name '*.nbc' -delete
