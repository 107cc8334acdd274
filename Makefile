# make demo: bootstrap .venv, install, run the product against its bundled simulators.
# make test: lint (ruff, mypy strict, import-linter layers) and the whole test suite.
# make bench: the benchmarks of DESIGN B6 (not part of make test); quick: make bench SIZES=1000,10000
# Both bootstrap .venv themselves on a fresh machine with Python 3.11+.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SIZES  ?= 1000,10000,100000

.PHONY: demo test lint format pytest bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "reconciler needs Python 3.11 or newer; set PYTHON=python3.11 (or newer)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/reconciler demo

test: lint pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

pytest: $(STAMP)
	$(BIN)/pytest

# SCALE=TARGETSxPERSONS,... and KINDS_AT=SIZES override the scenarios chosen from SIZES.
bench: $(STAMP)
	$(BIN)/python -m benchmarks --sizes $(SIZES) $(if $(SCALE),--scale $(SCALE)) $(if $(KINDS_AT),--kinds-at $(KINDS_AT))

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis *.egg-info
