# One-command entry points. `make run` and `make test` create or reuse .venv and install everything.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.unisd-installed
PRESET ?= default

.PHONY: setup run test test-all bench lint clean-store

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh "$(VENV)"
	touch $(STAMP)

run: setup  ## run the whole pipeline on the embedded default (or PRESET=name)
	$(VENV)/bin/unisd run --preset $(PRESET)

test: setup  ## the test suite (CPU, offline; slow end-to-end tests excluded)
	$(PY) -m pytest -q

test-all: setup  ## everything, including tests marked slow
	$(PY) -m pytest -q -m "not gpu"

bench: setup  ## performance benchmarks (each prints ratios against a baseline measured in the same run)
	$(PY) benchmarks/divergence_memory.py
	$(PY) benchmarks/generation.py
	$(PY) benchmarks/train_step.py

lint: setup
	$(VENV)/bin/ruff check .
