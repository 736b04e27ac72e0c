# fusekit: the two set-up commands of the README, plus the benchmark.
# Both create .venv on first use with nothing but python3; later runs reuse it.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# CI=true selects the reproducible Hypothesis profile (derandomized, more examples).
HYPOTHESIS_PROFILE ?= $(if $(filter true,$(CI)),ci,dev)

.PHONY: run test lint typecheck pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(PY) -m pip install --quiet -e '.[ort]'
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(PY) -m pip install --quiet -e '.[test,peers]'
	touch $@ $(VENV)/.run-installed

## make run: the main job on the bundled example model (plan, fuse, calibrate, export, evaluate, report)
run: $(VENV)/.run-installed
	$(BIN)/fusekit fuse --out-dir out

## make test: ruff, mypy --strict on src/, and every test in tests/ and property_tests/
test: lint typecheck pytest

lint: $(VENV)/.test-installed
	$(BIN)/ruff check src tests property_tests bench
	$(BIN)/ruff format --check src

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy src/fusekit

pytest: $(VENV)/.test-installed
	$(PY) -m pytest -q tests property_tests --hypothesis-profile=$(HYPOTHESIS_PROFILE)

## make bench: the performance suite (not part of make test)
bench: $(VENV)/.test-installed
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache .hypothesis
