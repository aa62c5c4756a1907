# Shadowtune: every task has a target; CI (.ci/run) calls the same ones (lint, typecheck, test).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
UPSTREAM ?= https://api.openai.com/v1
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed-light: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

# torch is pinned to the CPU build first: an unpinned torch would pull GBs of CUDA packages.
$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,providers,evals,train]'
	touch $@ $(VENV)/.installed-light

install: $(VENV)/.installed-light ## Install the gateway (light: no ML packages)

install-dev: $(VENV)/.installed-dev ## Install everything needed to test (CPU torch, extras, dev tools)

serve: $(VENV)/.installed-light ## Start the gateway on embedded defaults (UPSTREAM=...)
	$(BIN)/shadowtune serve --upstream $(UPSTREAM)

test: $(VENV)/.installed-dev ## Run the test suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-clock: $(VENV)/.installed-dev ## The suite (less e2e) with the clock at midnight, noon, month and year ends
	tests/clock_shift.sh $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev ## ruff + import contracts
	$(BIN)/ruff check gateway trainer evals tests bench
	$(BIN)/ruff format --check gateway trainer evals tests bench
	$(BIN)/lint-imports

format: $(VENV)/.installed-dev ## Format the code
	$(BIN)/ruff format gateway trainer evals tests bench
	$(BIN)/ruff check --fix gateway trainer evals tests bench

typecheck: $(VENV)/.installed-dev ## mypy --strict on the three packages
	$(BIN)/mypy

bench: $(VENV)/.installed-light ## Gateway vs direct, LiteLLM and Portkey (../shared/bench/peers.sh); ARGS=--quick
	bench/peers.sh $(ARGS)

bench-log: $(VENV)/.installed-light ## Call-log write throughput, request-path cost, dashboard query at 1M/10M rows
	$(BIN)/python bench/log_bench.py $(ARGS)

bench-review: $(VENV)/.installed-dev ## Review pages' median times over 10M calls, local disk and S3 (moto); ARGS=--calls N
	$(BIN)/python bench/review_bench.py --s3 $(ARGS)

bench-shadow: $(VENV)/.installed-dev ## User-path latency with shadow at 100 % vs off
	$(BIN)/python bench/shadow_bench.py $(ARGS)

bench-controller: $(VENV)/.installed-dev ## Canary controller: false rollbacks, power, calls to a decision (ARGS=--json)
	$(BIN)/python bench/controller_bench.py $(ARGS)

fuzz: $(VENV)/.installed-dev ## 100k hostile requests; counts by endpoint and status, fails on any 5xx (ARGS=--requests N)
	$(BIN)/python bench/fuzz.py $(ARGS)

clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

.PHONY: help install install-dev serve test test-clock lint format typecheck bench bench-log bench-review bench-shadow bench-controller fuzz clean
