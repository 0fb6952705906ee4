# Two entry points for a fresh machine: `make demo` and `make test`. Both are idempotent.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

CHROMIUM := /usr/bin/chromium

.PHONY: demo test lint bench clean node-test-deps chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@command -v node >/dev/null || { echo "Node.js 18+ is needed to verify models (apt-get install nodejs npm)"; exit 1; }
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bundler build example_site/bundle.toml

lint: $(STAMP)
	$(BIN)/ruff check bundler tests bench example_site
	$(BIN)/ruff format --check bundler tests bench example_site
	$(BIN)/mypy bundler

# Test-only npm packages (miniprogram-ci, typescript, miniprogram-api-typings), pinned in
# tests/node/package.json; reinstalled only when package.json or its lock is newer than the stamp.
NODE_TEST_STAMP := tests/node/node_modules/.installed

node-test-deps: $(NODE_TEST_STAMP)

$(NODE_TEST_STAMP): tests/node/package.json $(wildcard tests/node/package-lock.json)
	cd tests/node && npm install --ignore-scripts --no-audit --no-fund
	touch $(NODE_TEST_STAMP)

# The web tests drive Debian's Chromium headless (Playwright with executable_path); installed
# once, skipped when it is there.
chromium: $(CHROMIUM)

$(CHROMIUM):
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

test: lint node-test-deps $(CHROMIUM)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) example_site/dist example_site/.bundler-cache bench/work
