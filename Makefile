# One-command entry points. `make run` and `make test` create or reuse .venv and install everything.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.unisd-installed
PRESET ?= default

.PHONY: setup run test test-all bench bench-trl gpu-check lint clean-store lock

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh requirements.lock
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
	$(PY) benchmarks/threads.py

bench-trl: setup  ## the gkd preset vs TRL's GKDTrainer (TRL goes into .venv-trl, not into the project)
	test -x .venv-trl/bin/python || (python3 -m venv .venv-trl && .venv-trl/bin/pip install -q torch==2.13.0 \
		trl==1.16.0 transformers==5.23.0 peft==0.21.2 accelerate==1.15.0)
	$(PY) benchmarks/trl_gkd.py --trl-python .venv-trl/bin/python

gpu-check:  ## sd and unisd_star train steps at Qwen2.5-0.5B's shape on CUDA (uses your own torch, no setup)
	bash scripts/gpu_check.sh

lock:  ## regenerate requirements.lock from a fresh venv (after changing dependencies in pyproject.toml)
	bash scripts/lock.sh

lint: setup
	$(VENV)/bin/ruff check .
