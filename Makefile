# difflab: `make train` trains the default model; `make test` runs the test suite.
# Both create .venv on first use and (re)install when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: help install install-dev train test test-slow test-all bench clean

help:
	@echo "make train   - train the default model (mnist5k, CPU or GPU); pass overrides with ARGS='schedule=linear'"
	@echo "make test    - run the test suite (tests marked slow excluded)"
	@echo "make test-slow / test-all - only the slow tests / everything"
	@echo "make bench   - run every benchmark in --quick mode"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

train: $(VENV)/.installed
	$(BIN)/python train.py $(ARGS)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-all: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed-dev
	for f in benchmarks/*.py; do $(BIN)/python $$f --quick || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
