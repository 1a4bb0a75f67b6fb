# tollgate: every command a developer or CI needs. `make help` lists them.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

include tests/stack/tools.mk

PORT ?= 9000
CARGO ?= cargo
TOOLS := $(notdir $(patsubst %/Cargo.toml,%,$(wildcard functions/*/Cargo.toml)))

.PHONY: help dev test test-unit test-fixtures test-e2e test-conformance invoke build deploy destroy validate bench lint fmt clean

help: ## this list
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

dev: $(VENV)/.stamp ## local stack on http://127.0.0.1:$(PORT)/mcp (DynamoDB server, demo agent, token)
	$(CARGO) build --bin tollgate-dev --bin tollgate
	PORT=$(PORT) tests/stack/dev.sh

test: lint test-unit test-e2e test-conformance ## everything CI runs

test-unit: ## unit, property and fixture tests (cargo)
	$(CARGO) test --workspace --all-targets

lint: ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all
