# Two commands set everything up on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
export BILLING_HOME ?= $(CURDIR)/.billing
# The one switch that lets embedded services and $(BILLING_HOME)/sandbox.env stand in for real
# ones (development only; refused next to a live Stripe key). Only these targets set it.
SANDBOX := BILLING_SANDBOX=1

.PHONY: demo test lint lint-beside suite mutate ui up down status clean screenshots

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
	$(BIN)/mypy billing_pipelines sandbox/billing_sandbox billing_pipelines_tests bench mutation
	$(BIN)/lint-imports

# The browser end-to-end test drives Debian's Chromium through Playwright; no browser is ever
# downloaded (`playwright install` is not used). Installed once, as root or through sudo.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium

# The suite runs on TEST_WORKERS parallel pytest-xdist workers (most tests wait on services,
# daemons and clocks rather than compute, so more workers than cores pays). Each worker starts its
# own embedded PostgreSQL, chDB bridge and Stripe sandbox on free ports under its own temporary
# directory; a test module stays on one worker (`--dist loadfile`), so a module's shared set-up
# (a simulated month) runs once, and the modules run longest first by their recorded seconds
# (`--no-loadscope-reorder` keeps that order; billing_pipelines_tests/xdist_order.py orders
# them, never queues a long module behind another on one worker, and rewrites the record after
# a passing run with `PYTEST_ARGS=--record-module-seconds`). The services' ports are reserved
# across the workers. `make test TEST_WORKERS=0` runs serially.
TEST_WORKERS ?= 4
# The linters run beside the suite rather than before it, at a lower CPU priority: mypy is
# single-threaded and the suite leaves a core idle at times (its workers waiting on services and
# clocks, its last module running alone), so the linters mostly take what would be idle. Their
# output is printed in one piece when they end; `make test` fails if either fails.
# PYTEST_ARGS passes options to pytest (`make test PYTEST_ARGS="-k dunning"`).
test: $(VENV)/.installed $(CHROMIUM)
	$(MAKE) --no-print-directory -j2 lint-beside suite

lint-beside: $(VENV)/.installed
	@out=$$(nice -n 10 $(MAKE) --no-print-directory lint 2>&1); status=$$?; \
	printf '\n%s\n' "$$out"; exit $$status

suite: $(VENV)/.installed $(CHROMIUM)
	$(SANDBOX) $(BIN)/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile \
		--no-loadscope-reorder $(PYTEST_ARGS)

# Mutation testing of the money logic, driven by the unit tests: a score per module, failing
# below a module's recorded score (mutation/scores.toml) or below 90 % (mutation/ratchet.py).
mutate: $(VENV)/.installed
	$(BIN)/python mutation/ratchet.py

# Refresh the README's screenshots: the browser test, writing its screenshots into docs/.
screenshots: $(VENV)/.installed $(CHROMIUM)
	BILLING_UI_SCREENSHOTS=$(CURDIR)/docs/screenshots $(BIN)/pytest -q -p no:cacheprovider \
		billing_pipelines_tests/e2e/test_browser.py

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
