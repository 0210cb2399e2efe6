# ttfs-toolkit: the targets a user types.  Every target depends on the venv,
# which is created from nothing on a fresh machine and reused afterwards.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# pytest workers: the CI machine has 2 cores.
JOBS   ?= 2

.DEFAULT_GOAL := help
.PHONY: help venv test test-slow bench fixtures clean

help: ## list the targets
	@echo "ttfs-toolkit make targets:"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

venv: $(STAMP) ## create or update the virtual environment in .venv

test: $(STAMP) ## run the test suite (what CI runs)
	$(BIN)/python -m pytest -n $(JOBS) -m "not slow" --junitxml=build/test-results.xml

test-slow: $(STAMP) ## run only the long tests marked slow
	$(BIN)/python -m pytest -n $(JOBS) -m slow

bench: $(STAMP) ## print the performance figures (golden-model throughput, SNN/ReLU epoch time, ...)
	$(BIN)/ttfs bench golden
	$(BIN)/ttfs bench epoch

fixtures: $(STAMP) ## retrain and re-export the trained bundle fixtures (byte-identical, about 2 minutes)
	$(BIN)/python tools/make_fixtures.py --quiet

clean: ## remove build output (keeps the venv)
	rm -rf build .pytest_cache
