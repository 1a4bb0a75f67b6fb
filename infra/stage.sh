#!/usr/bin/env bash
# Prints the stack name of a stage from infra/samconfig.toml (`--list`: the stages).
#   infra/stage.sh dev  ->  tollgate-dev
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=python3
[[ -x "$ROOT/.venv/bin/python" ]] && PY="$ROOT/.venv/bin/python"
exec "$PY" - "$ROOT/infra/samconfig.toml" "${1:---list}" <<'PY'
import sys, tomllib
config = tomllib.load(open(sys.argv[1], "rb"))
stages = sorted(k for k, v in config.items() if isinstance(v, dict) and "deploy" in v)
if sys.argv[2] == "--list":
    print(" ".join(stages))
    sys.exit(0)
if sys.argv[2] not in stages:
    sys.exit(f"unknown stage {sys.argv[2]!r}: infra/samconfig.toml has {', '.join(stages)}")
print(config[sys.argv[2]]["deploy"]["parameters"]["stack_name"])
PY
