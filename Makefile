# lowtide: the two commands of the README, and their parts.
#   make serve   install lowtide in .venv and run the server (SQLite + ./lowtide-data)
#   make test    install the test tools and run lint, types, layer checks and the test suite

# The newest CPython 3.11+ on this machine (scripts/find-python), else python3.
PYTHON ?= $(shell scripts/find-python)
VENV   ?= .venv
BIN     = $(VENV)/bin
# The oldest one (3.11, the floor pyproject.toml promises), for `make test-floor`.
FLOOR_PYTHON ?= $(shell scripts/find-python --oldest)
FLOOR_VENV   ?= .venv-floor

# Python's bytecode caches are written (they are ignored by git) even where the environment
# says not to: without them every process the tests start compiles lowtide again, and pytest
# rewrites the asserts of every test module again in each of its workers (collecting the suite
# took about 11 s of CPU in each worker without the caches, 7 s with them).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: serve test test-floor test-stress install install-dev llama-server node-sdk lint audit typecheck pytest bench clean

# The venv's packages are installed by uv (itself installed by pip): the same versions pip would
# pick, in a few seconds from its cache where pip took about 60 s on this machine's two cores.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'uv>=0.5'

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e .
	touch $@

# Bytecode: one collection of the suite compiles what the test modules import (lowtide, the
# libraries it uses, the tests, their asserts rewritten by pytest), once, here; otherwise the four
# pytest workers of a clean clone's first run would each compile all of it at once, at its start.
# The rest is compiled by the first process that imports it: a test run imports 2,900 of the
# venv's 7,900 modules, and compiling them all at install (uv --compile-bytecode) cost 18 s of
# CPU. A test module that does not import is reported by the test run, not here.
$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[dev]'
	-$(BIN)/pytest --collect-only -q -n0 --no-cov -p no:cacheprovider >/dev/null 2>&1
	scripts/ensure-chromium
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
# The test tools, and the real-engine (llama.cpp) and Node.js SDK test tiers, side by side:
# llama.cpp's server goes into a venv of its own, and installing it from pip's cache takes
# about 12 s, the venv's packages and the collection that compiles them about 8 s. Each script
# is a no-op once done.
install-dev:
	$(MAKE) --no-print-directory -j3 $(VENV)/.installed-dev llama-server node-sdk

llama-server:
	PYTHON=$(PYTHON) scripts/ensure-llama-server

node-sdk:
	scripts/ensure-node-sdk

serve: install
	$(BIN)/lowtide serve $(ARGS)

lint: install-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports
	$(BIN)/python scripts/audit --offline

# The dependencies against PyPI's and OSV's advisory data: reaches the internet, so not part
# of `make test` (whose every test talks to loopback only). Run before a release.
audit: install-dev
	$(BIN)/python scripts/audit

# At the lowest priority: beside the test suite (make test), mypy takes the CPU its processes
# leave idle, not the CPU they wait for (a clean clone's cold mypy run is 15 s of CPU).
typecheck: install-dev
	nice -n 19 $(BIN)/mypy

# The whole suite must keep branch coverage of src/lowtide at 92% or more (a run of part of
# it would not: the floor is here, not in pyproject.toml's addopts).
pytest: install-dev
	$(BIN)/pytest --cov-fail-under=92 $(PYTEST_ARGS)

# mypy runs beside the test suite (make -j2): it is one process, and the suite leaves a core idle
# for part of its run.
test: lint
	$(MAKE) --no-print-directory -j2 typecheck pytest

# The fast tiers (unit, in-process) on the oldest supported CPython too, when the machine has
# one older than .venv's: lowtide promises 3.11+, and .venv is built with the newest.
test-floor: | $(BIN)/python
	@if [ -z "$(FLOOR_PYTHON)" ] || [ "$$($(FLOOR_PYTHON) -V)" = "$$($(BIN)/python -V)" ]; then \
	  echo "test-floor: no interpreter older than .venv's on this machine"; \
	else \
	  [ -x $(FLOOR_VENV)/bin/python ] || $(FLOOR_PYTHON) -m venv --without-pip $(FLOOR_VENV); \
	  $(BIN)/uv pip install --quiet --python $(FLOOR_VENV)/bin/python -e '.[dev]' && \
	  $(FLOOR_VENV)/bin/python -V && \
	  $(FLOOR_VENV)/bin/pytest -p no:cacheprovider --no-cov tests/unit tests/inprocess; \
	fi

# The suite beside one busy loop per core, as on a loaded CI machine: `make test-stress RUNS=5`.
test-stress: install-dev
	scripts/test-stress $(or $(RUNS),1) $(PYTEST_ARGS)

bench: install-dev
	BENCH_COMMAND="make bench" BENCH_PYTHON=$(BIN)/python bench/all

clean:
	rm -rf $(VENV) $(FLOOR_VENV) .mypy_cache .ruff_cache .pytest_cache
