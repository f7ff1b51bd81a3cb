# Two entry points that work on a fresh machine: `make demo` (reconstruct) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-all lint demo serve bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned: the local CPU wheel. An unpinned torch pulls GBs of CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m '' $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

demo: $(STAMP)
	$(BIN)/nerfserve synth runs/synth --views 40 --size 128
	$(BIN)/nerfserve train runs/synth --out runs/synth_train --preset fast --device cpu

serve: $(STAMP)
	$(BIN)/nerfserve serve --host 127.0.0.1 --port 8000

bench: $(STAMP)
	$(BIN)/python benchmarks/train_bench.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
