# tollgate: every command a developer or CI needs. `make help` lists them.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

include tests/stack/tools.mk

PORT ?= 9000
CARGO ?= cargo
TOOLS := $(notdir $(patsubst %/Cargo.toml,%,$(wildcard functions/*/Cargo.toml)))

.PHONY: help dev build-debug test test-unit test-build-once test-e2e test-conformance test-campaign invoke build deploy destroy validate bench load chaos fuzz lint fmt

help: ## this list
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

dev: $(VENV)/.stamp ## local stack on http://127.0.0.1:$(PORT)/mcp (DynamoDB server, demo agent, token)
	$(CARGO) build --bin tollgate-dev --bin tollgate
	PORT=$(PORT) tests/stack/dev.sh

test: tools lint test-unit test-build-once test-e2e test-conformance test-campaign validate ## everything CI runs

build-debug:
	$(CARGO) build --workspace --bins

test-unit: $(VENV)/.stamp ## unit, property and fixture tests (cargo; fixtures use a real DynamoDB-protocol server)
	$(CARGO) test --workspace --all-targets

test-build-once: ## after test-unit: the binaries build without compiling any dependency again
	CARGO=$(CARGO) python3 tests/stack/build_once.py

test-e2e: $(VENV)/.stamp build-debug ## end-to-end: local stack driven by the official MCP Python SDK
	$(PY) -m pytest tests/e2e -q -p no:cacheprovider

test-conformance: tools-node $(VENV)/.stamp build-debug ## official MCP conformance suite against a fixture server (task records on moto)
	tests/conformance/run.sh

FUZZ_SECS ?= 60

FUZZ_SHORT_SECS ?= 30

test-campaign: $(VENV)/.stamp build-debug ## short forms of make fuzz (30 s mutation run, no instrumentation), chaos and load (about 2 min)
	target/debug/fuzz-short --secs $(FUZZ_SHORT_SECS)
	$(PY) tests/benches/chaos.py --short
	TOLLGATE_DEV_BIN=target/debug/tollgate-dev TOLLGATE_BIN=target/debug/tollgate \
	  $(PY) tests/benches/load.py --only-new --modes leases --hot --hot-secs 8 --flood --flood-rate 200 --flood-secs 3 --check

chaos: $(VENV)/.stamp build-debug ## faults between the functions and each dependency, per budget policy: outcome table
	@mkdir -p target/bench
	$(PY) tests/benches/chaos.py --json target/bench/chaos.json | tee target/bench/chaos.md

fuzz: tools-afl ## coverage-guided fuzzing of the request pipeline (AFL++): make fuzz FUZZ_SECS=600
	tests/fuzz/run.sh $(FUZZ_SECS)

bench: $(VENV)/.stamp ## cold start and size of every function, latency, budget figures, span cost, CPU per call, cost per million calls, managed-instances concurrency (release)
	@# The functions alone, as `make build` builds each one: no feature of the test or admin crates unified in.
	$(CARGO) build --release $(addprefix -p ,$(TOOLS))
	$(CARGO) build --release --bin tollgate-dev --bin tollgate --bin floor-function
	@mkdir -p target/bench
	$(PY) tests/benches/cold_start.py --markdown target/bench/cold_start.md
	$(CARGO) bench -p tollgate-tests --bench stack > target/bench/stack-logs.jsonl
	$(PY) tests/benches/cpu.py --calls 1000 --floor tollgate,none --rounds 3
	$(PY) tests/benches/cpu.py --process dev --calls 300
	$(PY) tests/benches/cost.py --calls 200 --json target/bench/cost.json | tee target/bench/cost.md
	$(PY) tests/benches/concurrency.py --calls 1000 --json target/bench/concurrency.json | tee target/bench/concurrency.md

load: $(VENV)/.stamp ## budgets under load, exact mode vs leases: 20 calls/s over 4 instances, shared tool bucket, 16/32/64 callers, 64 callers on one bucket, a random-token flood
	$(CARGO) build --release --bin tollgate-dev --bin tollgate
	@mkdir -p target/bench
	$(PY) tests/benches/load.py --hot --flood --check --json target/bench/load.json | tee target/bench/load.md

invoke: $(VENV)/.stamp ## one function, one fixture, through the real Lambda runtime: make invoke FN=gateway EVENT=events/x.json [CONCURRENCY=32]
	@test -n "$(FN)" -a -n "$(EVENT)" || { echo "usage: make invoke FN=<function> EVENT=events/<file>.json [CONCURRENCY=N]" >&2; exit 2; }
	CONCURRENCY="$(CONCURRENCY)" tests/stack/invoke.sh "$(FN)" "$(EVENT)"

STAGE ?=
DESTROY_FLAGS ?=

build: $(VENV)/.stamp ## release arm64 artifacts of every function (sam build + cargo-lambda; minutes, not in make test)
	infra/build.sh

deploy: $(VENV)/.stamp ## deploy a stage to AWS: make deploy STAGE=dev (build + sam deploy with infra/samconfig.toml)
	@test -n "$(STAGE)" || { echo "usage: make deploy STAGE=<$$(infra/stage.sh --list | tr ' ' '|')>" >&2; exit 2; }
	infra/deploy.sh "$(STAGE)"

validate: $(VENV)/.stamp $(VENV_INFRA)/.stamp ## offline infra checks: render, cfn-lint, sam validate --lint, checkov, infra tests
	infra/validate.sh

destroy: $(VENV)/.stamp ## delete a stage's stack, data kept: make destroy STAGE=dev [DESTROY_FLAGS=--delete-data]
	@test -n "$(STAGE)" || { echo "usage: make destroy STAGE=<$$(infra/stage.sh --list | tr ' ' '|')> [DESTROY_FLAGS='--yes --delete-data']" >&2; exit 2; }
	infra/destroy.sh "$(STAGE)" $(DESTROY_FLAGS)

lint: ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all
