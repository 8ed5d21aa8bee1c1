# One entry point for humans and CI. `make run` and `make test` work on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
RUN := $(UV) run --frozen
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: help install run migrate test lint fmt openapi openapi-check bench fuzz compose-check clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

$(UV):
	@echo "uv not found: installing it from PyPI"
	python3 -m pip install --user --quiet uv

install: $(UV) ## install the locked dependencies into .venv
	$(UV) sync --frozen

migrate: install ## migrate the database to the latest schema
	$(RUN) avatar-api migrate

run: migrate ## start on http://127.0.0.1:8000 (SQLite, local storage, in-process worker)
	@key=$$($(RUN) avatar-api dev-key) && \
	  echo "" && \
	  echo "  Avatar API on http://$(HOST):$(PORT)   docs: http://$(HOST):$(PORT)/docs" && \
	  echo "  Local API key:  $$key" && \
	  echo "  Try:  curl -H 'Authorization: Bearer $$key' http://$(HOST):$(PORT)/v1/avatars" && \
	  echo ""
	$(RUN) avatar-api serve --host $(HOST) --port $(PORT)

test: install ## run the test suite (SQLite; PostgreSQL too when AVATAR_TEST_DATABASE_URL is set)
	$(RUN) pytest $(PYTEST_ARGS)

lint: install ## ruff check, ruff format --check, mypy --strict
	$(RUN) ruff check src tests bench
	$(RUN) ruff format --check src tests bench
	$(RUN) mypy

fmt: install ## fix what ruff can fix and format
	$(RUN) ruff check --fix src tests bench
	$(RUN) ruff format src tests bench

openapi: install ## regenerate openapi/openapi.json from the app
	$(RUN) avatar-api openapi --output openapi/openapi.json

openapi-check: install ## fail when openapi/openapi.json is stale
	@$(RUN) avatar-api openapi --output - | diff -q openapi/openapi.json - >/dev/null || \
	  (echo "openapi/openapi.json is stale: run 'make openapi'" && exit 1)

compose-check: install ## validate docker-compose.yml against the compose spec (offline)
	$(RUN) check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

bench: install ## run the benchmarks in bench/ and write bench/results.md (BENCH_ARGS="--only reads")
	@command -v wrk >/dev/null || { echo "wrk not found: installing it with apt-get"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq wrk; }
	$(RUN) python -m bench $(BENCH_ARGS)

FUZZ_EXAMPLES ?= 500
fuzz: install ## fuzz the API (schemathesis) and the photo decoder longer (FUZZ_EXAMPLES=500)
	AVATAR_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(RUN) pytest tests/fuzz $(PYTEST_ARGS)

clean: ## remove local state (database, stored files)
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
