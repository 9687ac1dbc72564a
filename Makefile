# Two commands set everything up on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
export BILLING_HOME ?= $(CURDIR)/.billing
# The one switch that lets embedded services and $(BILLING_HOME)/sandbox.env stand in for real
# ones (development only; refused next to a live Stripe key). Only these targets set it.
SANDBOX := BILLING_SANDBOX=1

.PHONY: demo test lint ui up down status clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall whenever a dependency list changes. The sandbox (Stripe emulator, chDB bridge,
# embedded PostgreSQL, simulated month) is its own distribution: the demo and the tests need it,
# a production install of billing_pipelines does not.
$(VENV)/.installed: pyproject.toml sandbox/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e ./sandbox
	touch $@

demo: $(VENV)/.installed
	$(SANDBOX) $(BIN)/billing demo

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy billing_pipelines sandbox/billing_sandbox billing_pipelines_tests bench
	$(BIN)/lint-imports

test: $(VENV)/.installed lint
	$(SANDBOX) $(BIN)/pytest -q -p no:cacheprovider

ui: $(VENV)/.installed
	$(SANDBOX) $(BIN)/billing ui

up: $(VENV)/.installed
	$(SANDBOX) $(BIN)/billing sandbox up

down: $(VENV)/.installed
	$(SANDBOX) $(BIN)/billing sandbox down

status: $(VENV)/.installed
	$(SANDBOX) $(BIN)/billing sandbox status

clean: down
	rm -rf $(BILLING_HOME)
