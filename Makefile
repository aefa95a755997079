# Two commands for a fresh machine (Python >= 3.11): `make run` and `make test`.
# Both create .venv on first use and reuse it afterwards.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
ARGS ?=
# Flower's environment (no telemetry, ...) is defined once, in fedvssl/prepare.py (FLOWER_ENV):
# the main job sets it, and so does tests/conftest.py for the test session.

.PHONY: setup run test test-fast lint format

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

run: $(STAMP)
	FLWR_HOME=$${FLWR_HOME:-$$(mktemp -d)} $(BIN)/python -m fedvssl.main $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	FLWR_HOME=$$(mktemp -d) $(BIN)/python -m pytest $(ARGS)

# Everything but the tests marked slow (Ray, subprocesses, training): under 2 minutes on 2 cores,
# one pytest-xdist worker per core, each test file on one worker (its module fixtures made once);
# the generated layouts are shared between the workers (tests/conftest.py, shared).
test-fast: $(STAMP)
	$(BIN)/ruff check .
	FLWR_HOME=$$(mktemp -d) $(BIN)/python -m pytest -m "not slow" -n auto --dist loadfile $(ARGS)

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
