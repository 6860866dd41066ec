# crdtd: every target creates .venv on first use and installs what it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: help venv demo demo-lib test lint fmt pytest test-slow test-all proto bench bench-fl clean

help:
	@echo "make demo   - set up .venv, start a three-site federation, train, push, merge"
	@echo "make demo-lib - the library examples: a tabular merge and its laws"
	@echo "make test   - set up .venv with dev extras, lint, then run the test suite"
	@echo "make lint   - ruff check, ruff format --check, mypy crdtd/"
	@echo "make fmt    - ruff format + ruff check --fix"
	@echo "make test-slow - run the slow scenario tests too"
	@echo "make proto  - regenerate gRPC stubs from proto/"
	@echo "make bench  - run the benchmarks at small sizes"
	@echo "make bench-fl - federated learning on non-IID data: the full table (slow), then 10 daemons"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[all,dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m crdtd.node.demo

demo-lib: $(STAMP)
	$(PY) -m crdtd.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check crdtd tests benchmarks simulations
	$(VENV)/bin/ruff format --check crdtd tests benchmarks simulations
	$(VENV)/bin/mypy crdtd

fmt: $(STAMP)
	$(VENV)/bin/ruff format crdtd tests benchmarks simulations
	$(VENV)/bin/ruff check --fix crdtd tests benchmarks simulations

pytest: $(STAMP)
	$(PY) -m pytest -q

test: lint pytest

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

proto: $(STAMP)
	$(PY) -m crdtd.sync.protogen

bench: $(STAMP)
	$(PY) benchmarks/bench_tabular.py --rows 100000

bench-fl: $(STAMP)
	$(PY) benchmarks/bench_fl.py
	$(PY) benchmarks/bench_fl.py --daemon
	$(PY) benchmarks/bench_fl.py --daemon --flower

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
