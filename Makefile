# Two entry points for a fresh machine: `make smoke` (set up + run the pipeline on the smoke
# preset) and `make test` (set up + lint + tests). Everything lives in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup smoke test test-fast lint bench clean stack-up stack-down

setup: $(STAMP)

# torch is pinned to the CPU wheel that lies on disk; an unpinned torch pulls GBs of CUDA.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0" -e ".[dev]"
	touch $(STAMP)

smoke: $(STAMP)
	$(BIN)/codeparrot-ds run --preset smoke

# ruff, then the layering contracts in pyproject.toml (flows -> tasks -> storage, no cycles).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

# The browser tests (tests/ui) drive Debian's chromium through Playwright; no browser is
# downloaded. Installed from Debian's packages when missing (needs root, as in CI).
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	apt-get install -y --no-install-recommends chromium || \
		(apt-get update && apt-get install -y --no-install-recommends chromium)

# Everything, as CI runs it (tests/ui needs chromium).
test: lint $(CHROMIUM)
	$(BIN)/python -m pytest

# The unit tests that neither train nor launch processes: under two minutes.
test-fast: lint
	$(BIN)/python -m pytest -m "unit and not slow"

bench: $(STAMP)
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/tokenize_throughput.py

clean:
	rm -rf $(VENV) codeparrot-store .stack .pytest_cache .ruff_cache

# The local stack: Prefect server + UI on http://127.0.0.1:4200, SeaweedFS S3, work pools,
# workers and the deployments of deployments/prefect.yaml. Data stays in .stack/.
stack-up: $(STAMP)
	$(BIN)/python -m deployments.stack up

stack-down: $(STAMP)
	$(BIN)/python -m deployments.stack down
