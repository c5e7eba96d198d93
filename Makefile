# Two commands set everything up on a fresh machine with Python >= 3.11 and pip:
#   make train   -> creates .venv, installs jaxdiff, trains the embedded default, writes samples
#   make test    -> creates .venv, installs jaxdiff with test extras, runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= workdirs/default

.PHONY: install train sample test lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -e ".[test]"
	touch $@

install: $(VENV)/.installed

train: install
	$(BIN)/python train.py --workdir=$(WORKDIR)

sample: install
	$(BIN)/python sample.py --workdir=$(WORKDIR)

test: install
	$(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
