# The two commands a newcomer runs (README): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of torch; a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# The main job over HTTP: `shiftaudit serve` on the embedded default (SQLite, local storage,
# the embedded runner), then upload, audit and report through the REST API.
demo: $(BIN)/.installed
	$(BIN)/shiftaudit demo --data-dir build/demo-data

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/engine_throughput.py --size 128 --probes 48 --max-shift 2

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
