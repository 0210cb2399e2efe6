# ttfs-toolkit: the targets a user types.  Every target depends on the venv,
# which is created from nothing on a fresh machine and reused afterwards.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# pytest workers: the CI machine has 2 cores.
JOBS   ?= 2

.DEFAULT_GOAL := help
.PHONY: help venv sim test test-slow fuzz bench bitstream fixtures clean

# make sim settings (override on the command line: make sim IMAGES=500 SIM=icarus)
BUNDLE ?= fixtures/bundles/mnist-fc2
IMAGES ?= 100
SIM    ?= verilator
LANES  ?= 16
INPUT  ?=
WAVES  ?=
# make fuzz: generated cases per hostile-input property
FUZZ_EXAMPLES ?= 2000
# make bitstream settings; BUNDLE and LANES default to the board's own choice
BOARD  ?= arty

help: ## list the targets
	@echo "ttfs-toolkit make targets:"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  %-14s %s\n", $$1, $$2}'

# Everything (every extra, the test tools), at the versions constraints.txt pins.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[all,dev]'
	@touch $@

venv: $(STAMP) ## create or update the virtual environment in .venv

sim: $(STAMP) ## check the core spike for spike against the golden model (BUNDLE, IMAGES, SIM, LANES, INPUT, WAVES=1)
	$(BIN)/ttfs sim --bundle $(BUNDLE) --images $(IMAGES) --sim $(SIM) --lanes $(LANES) \
	  $(if $(INPUT),--input '$(INPUT)') $(if $(WAVES),--waves) --out build/sim

bitstream: $(STAMP) ## build a board's bitstream or Vivado tree and check the fit (BOARD=arty|arty-a7-100|ulx3s|icebreaker)
	$(BIN)/ttfs bitstream $(BOARD) $(if $(filter command line,$(origin BUNDLE)),--bundle $(BUNDLE)) \
	  $(if $(filter command line,$(origin LANES)),--lanes $(LANES))

test: $(STAMP) ## run the test suite (what CI runs): the import-layer contracts, then pytest
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -n $(JOBS) --dist loadgroup -m "not slow" --junitxml=build/test-results.xml

test-slow: $(STAMP) ## run only the long tests marked slow
	$(BIN)/python -m pytest -n $(JOBS) -m slow

fuzz: $(STAMP) ## the hostile-input suite with many more generated cases (FUZZ_EXAMPLES, default 2000 per property)
	TTFS_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -n $(JOBS) tests/test_hostile.py -p no:cacheprovider

bench: $(STAMP) ## print the performance figures (golden-model throughput, SNN/ReLU epoch time, ...)
	$(BIN)/ttfs bench golden
	$(BIN)/ttfs bench epoch

fixtures: $(STAMP) ## retrain and re-export the trained bundle fixtures (byte-identical on one torch build; 5 to 8 minutes on 2 cores)
	$(BIN)/python tools/make_fixtures.py --quiet

clean: ## remove build output (keeps the venv)
	rm -rf build .pytest_cache
