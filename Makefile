# Two entry points that work on a fresh machine: `make demo` (reconstruct) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-all lint demo fox serve bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned: the local CPU wheel. An unpinned torch pulls GBs of CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	@start=$$(date +%s); \
	$(BIN)/ruff check . && $(BIN)/lint-imports && $(BIN)/python -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	echo "make test: $$(( $$(date +%s) - start )) s wall time"; exit $$rc

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m '' $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

demo: $(STAMP)
	$(BIN)/nerfserve synth runs/synth --views 40 --size 128
	$(BIN)/nerfserve train runs/synth --out runs/synth_train --preset fast --device cpu

# The fox run of README.md: train at 1/8, export, and full-size held-out previews (rgb/ and depth_vis/ under
# runs/fox/preview). Renders of the shared capture stay out of the repository, like the capture itself.
FOX ?= ../shared/data/fox
fox: $(STAMP)
	$(BIN)/nerfserve train $(FOX) --out runs/fox --preset fast --device cpu --max-image-size 240 --steps 400
	$(BIN)/nerfserve export runs/fox --outputs depth,mesh,views,video --mesh-resolution 128 --frames 24 \
		--view-max-side 128 --depth-max-side 80 --fusion-max-side 80 --capture $(FOX)
	$(BIN)/nerfserve export runs/fox --outputs depth --depth-views test --out runs/fox/preview

serve: $(STAMP)
	$(BIN)/nerfserve serve --host 127.0.0.1 --port 8000

bench: $(STAMP)
	$(BIN)/python benchmarks/train_bench.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
