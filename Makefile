# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: install data demo test lint format bench

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

# Re-install only when pyproject.toml changes.
$(VENV)/.install-stamp: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.install-stamp

data:
	@bash scripts/ensure_fashion_mnist.sh $(FMNIST)

demo: install data
	$(VENV)/bin/rayssl demo

test: install data
	$(PY) -m pytest -q tests
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
