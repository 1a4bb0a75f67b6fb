#!/usr/bin/env bash
# The local stack: a DynamoDB-protocol server (unless AWS_ENDPOINT_URL_DYNAMODB is set), then
# tollgate-dev serving every API Gateway route on 127.0.0.1:$PORT. Run from the repo root
# (`make dev` does). Every TOLLGATE_* / OTEL_* variable set around it reaches the functions.
set -euo pipefail
cd "$(dirname "$0")/../.."

PORT="${PORT:-9000}"
BIN="${TOLLGATE_DEV_BIN:-target/debug/tollgate-dev}"
PY="${TOLLGATE_DEV_PYTHON:-.venv/bin/python}"

export AWS_REGION="${AWS_REGION:-us-east-1}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-local}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-local}"
export TOLLGATE_RESOURCE_URL="${TOLLGATE_RESOURCE_URL:-http://127.0.0.1:${PORT}/mcp}"
export TRACK_SHIPMENT_API_URL="${TRACK_SHIPMENT_API_URL:-http://127.0.0.1:$((PORT + 1))}"
export PORT

moto_pid=""
cleanup() { [[ -n "$moto_pid" ]] && kill "$moto_pid" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

if [[ -z "${AWS_ENDPOINT_URL_DYNAMODB:-}" ]]; then
  ddb_port="${TOLLGATE_DEV_DYNAMODB_PORT:-$((PORT + 2))}"
  "$PY" tests/stack/moto_server.py "$ddb_port" >target/dev-moto.log 2>&1 &
  moto_pid=$!
  export AWS_ENDPOINT_URL_DYNAMODB="http://127.0.0.1:${ddb_port}"
  # The same local server holds the argument-hashing key secret.
  export AWS_ENDPOINT_URL_SECRETS_MANAGER="${AWS_ENDPOINT_URL_SECRETS_MANAGER:-$AWS_ENDPOINT_URL_DYNAMODB}"
  export TOLLGATE_HASH_KEY_SECRET="${TOLLGATE_HASH_KEY_SECRET:-tollgate-dev/hash-key}"
  for _ in $(seq 1 100); do
    if "$PY" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
        "${AWS_ENDPOINT_URL_DYNAMODB}/moto-api/" >/dev/null 2>&1; then break; fi
    kill -0 "$moto_pid" 2>/dev/null || { echo "DynamoDB server failed to start; see target/dev-moto.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "DynamoDB-protocol server (moto, single-threaded) on ${AWS_ENDPOINT_URL_DYNAMODB}" >&2
fi

"$BIN" &
dev_pid=$!
trap 'kill $dev_pid 2>/dev/null; cleanup' EXIT INT TERM
wait "$dev_pid"
