#!/usr/bin/env bash
# make invoke FN=<function> EVENT=events/<file>.json
#
# Runs one API Gateway v2 event fixture through one function on the real Lambda runtime path:
# `cargo lambda watch` emulates the Lambda runtime API and `cargo lambda invoke` sends the event.
#   1. a DynamoDB-protocol server (single-threaded moto) unless AWS_ENDPOINT_URL_DYNAMODB is set,
#      the tables, the demo customers and the TEST-ONLY fixture agents and keys (seed-fixtures);
#      the carrier API for track_shipment unless TRACK_SHIPMENT_API_URL is set;
#   2. `cargo lambda watch` on a free loopback port, with the functions' environment;
#   3. `cargo lambda invoke FN --data-file EVENT`, the response on stdout;
#   4. everything it started is stopped (by pid) on exit.
# The gateway's tools/call forward is a real Lambda Invoke (aws-sdk-lambda) sent to the same
# `cargo lambda watch` (AWS_ENDPOINT_URL_LAMBDA, empty TOLLGATE_FUNCTION_PREFIX), so a forwarded
# call runs the tool function on the Lambda runtime path too.
#
# CONCURRENCY=N (N > 1; `make invoke ... CONCURRENCY=32`): the function runs as on Lambda
# Managed Instances instead, one process with AWS_LAMBDA_MAX_CONCURRENCY=N under our own
# Runtime API on loopback (tests/stack/runtime_api.py), which hands the event out N times at
# once (each with its own request id and X-Ray trace) once N workers are polling; the N
# responses are printed as JSON lines. (cargo lambda watch hands out one event at a time.)
#
# The environment matches tests/tests/fixtures.rs, so a fixture answers here as in its snapshot
# (events/README.md). Logs: target/invoke/.
set -euo pipefail
cd "$(dirname "$0")/../.."

usage() { echo "usage: $0 FN EVENT   (e.g. $0 lookup_customer events/lookup_customer.call-ok.json)" >&2; exit 2; }
FN="${1:-}"; EVENT="${2:-}"
[[ -n "$FN" && -n "$EVENT" ]] || usage
[[ -f "functions/$FN/Cargo.toml" ]] || { echo "no function '$FN' (folders in functions/)" >&2; exit 2; }
[[ -f "$EVENT" ]] || { echo "no event file '$EVENT'" >&2; exit 2; }

VENV="$PWD/.venv"
[[ -x "$VENV/bin/cargo-lambda" ]] || { echo "cargo-lambda is missing: run 'make tools-venv'" >&2; exit 1; }
# cargo-lambda finds zig with `python3 -m ziglang`: the venv's python3 must come first.
export PATH="$VENV/bin:$PATH"
CARGO="${CARGO:-cargo}"
LOGS=target/invoke
mkdir -p "$LOGS"

export AWS_REGION="${AWS_REGION:-us-east-1}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-local}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-local}"
# The fixtures' API (events/README.md); the fixture test uses the same values.
export TOLLGATE_RESOURCE_URL="${TOLLGATE_RESOURCE_URL:-https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/mcp}"
export TOLLGATE_MAX_BODY_BYTES="${TOLLGATE_MAX_BODY_BYTES:-8192}"
export TOLLGATE_AUTH_METHODS="${TOLLGATE_AUTH_METHODS:-api_key,mtls}"
export TOLLGATE_APP_TABLE="${TOLLGATE_APP_TABLE:-tollgate-app}"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { # PORT PID WHAT
  for _ in $(seq 1 600); do
    if python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$1" \
        >/dev/null 2>&1; then return 0; fi
    kill -0 "$2" 2>/dev/null || { echo "$3 exited; see $LOGS/" >&2; return 1; }
    sleep 0.2
  done
  echo "$3 not ready after 120 s; see $LOGS/" >&2; return 1
}
wait_http() { # URL PID WHAT
  for _ in $(seq 1 600); do
    if python3 -c 'import sys, urllib.request, urllib.error
try: urllib.request.urlopen(sys.argv[1], timeout=1)
except urllib.error.HTTPError: pass' "$1" >/dev/null 2>&1; then return 0; fi
    kill -0 "$2" 2>/dev/null || { echo "$3 exited; see $LOGS/" >&2; return 1; }
    sleep 0.2
  done
  echo "$3 not ready after 120 s; see $LOGS/" >&2; return 1
}

pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    # Each was started with setsid: stop its whole process group (cargo lambda watch runs the
    # functions as children).
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

started=$(date +%s)
echo "building $FN and the local helpers..." >&2
# The function (for the gateway: every function, it forwards to them) and the helpers, built
# up front so the first invoke does not wait for a compile.
functions=("$FN")
if [[ "$FN" == gateway ]]; then
  functions=()
  for manifest in functions/*/Cargo.toml; do functions+=("$(basename "$(dirname "$manifest")")"); done
fi
args=(-p tollgate-tests --bin seed-fixtures --bin carrier-api)
for f in "${functions[@]}"; do args+=(-p "$f" --bin "$f"); done
"$CARGO" build -q "${args[@]}"

if [[ -z "${AWS_ENDPOINT_URL_DYNAMODB:-}" ]]; then
  port=$(free_port)
  setsid "$VENV/bin/python" tests/stack/moto_server.py "$port" >"$LOGS/moto.log" 2>&1 &
  pids+=($!)
  export AWS_ENDPOINT_URL_DYNAMODB="http://127.0.0.1:$port"
  wait_http "$AWS_ENDPOINT_URL_DYNAMODB/moto-api/" "${pids[-1]}" "moto"
  echo "DynamoDB-protocol server (moto, single-threaded) on $AWS_ENDPOINT_URL_DYNAMODB" >&2
fi
target/debug/seed-fixtures

if [[ -z "${TRACK_SHIPMENT_API_URL:-}" ]]; then
  port=$(free_port)
  setsid target/debug/carrier-api "127.0.0.1:$port" >"$LOGS/carrier.log" 2>&1 &
  pids+=($!)
  export TRACK_SHIPMENT_API_URL="http://127.0.0.1:$port"
  wait_port "$port" "${pids[-1]}" "carrier API"
fi

port=$(free_port)
# The gateway forwards tools/call by Lambda Invoke: to this same emulator, function names
# without a prefix.
export AWS_ENDPOINT_URL_LAMBDA="http://127.0.0.1:$port"
export TOLLGATE_FUNCTION_PREFIX="${TOLLGATE_FUNCTION_PREFIX:-}"
setsid "$VENV/bin/cargo-lambda" lambda watch -q -A 127.0.0.1 -P "$port" >"$LOGS/watch.log" 2>&1 &
pids+=($!)
wait_port "$port" "${pids[-1]}" "cargo lambda watch"
echo "cargo lambda watch on 127.0.0.1:$port; invoking $FN with $EVENT" >&2

invoke_started=$(date +%s)
CONCURRENCY="${CONCURRENCY:-1}"
[[ "$CONCURRENCY" =~ ^[0-9]+$ && "$CONCURRENCY" -ge 1 ]] || { echo "CONCURRENCY must be a positive integer" >&2; exit 2; }
if (( CONCURRENCY > 1 )); then
  echo "managed-instances mode: one $FN process, $CONCURRENCY concurrent invocations" >&2
  if ! "$VENV/bin/python" tests/stack/runtime_api.py --binary "target/debug/$FN" --event "$EVENT" \
      --concurrency "$CONCURRENCY" --log "$LOGS/function.log" >"$LOGS/responses.jsonl"; then
    echo "--- function logs ($LOGS/function.log):" >&2
    tail -n 40 "$LOGS/function.log" >&2
    exit 1
  fi
  cat "$LOGS/responses.jsonl"
  echo "--- audit records from $LOGS/function.log:" >&2
  grep -E '"kind":"audit"' "$LOGS/function.log" >&2 || true
  echo "invoked in $(( $(date +%s) - invoke_started )) s (total $(( $(date +%s) - started )) s)" >&2
  exit 0
fi
if ! "$VENV/bin/cargo-lambda" lambda invoke "$FN" --data-file "$EVENT" -A 127.0.0.1 -P "$port" \
    >"$LOGS/response.json" 2>"$LOGS/invoke.err"; then
  cat "$LOGS/invoke.err" >&2
  echo "--- function logs ($LOGS/watch.log):" >&2
  tail -n 40 "$LOGS/watch.log" >&2
  exit 1
fi
cat "$LOGS/response.json"
echo >&2
echo "--- function logs (audit records, errors) from $LOGS/watch.log:" >&2
grep -E '^\{' "$LOGS/watch.log" >&2 || true
echo "invoked in $(( $(date +%s) - invoke_started )) s (total $(( $(date +%s) - started )) s)" >&2
