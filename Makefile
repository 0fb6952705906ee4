# Two entry points for a fresh machine: `make demo` and `make test`. Both are idempotent.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

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

test: lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) example_site/dist example_site/.bundler-cache bench/work
