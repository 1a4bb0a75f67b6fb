#!/usr/bin/env bash
# Prints the stack name of a stage from infra/samconfig.toml (`--list`: the stages), or with
# `template` the template the stage deploys (its [STAGE.build.parameters] template_file:
# infra/template.yaml, classic Lambda, unless the stage picks infra/template.managed.yaml).
#   infra/stage.sh dev           ->  tollgate-dev
#   infra/stage.sh dev template  ->  infra/template.yaml
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=python3
[[ -x "$ROOT/.venv/bin/python" ]] && PY="$ROOT/.venv/bin/python"
exec "$PY" - "${SAMCONFIG:-$ROOT/infra/samconfig.toml}" "${1:---list}" "${2:-stack}" <<'PY'
import sys, tomllib
config = tomllib.load(open(sys.argv[1], "rb"))
stages = sorted(k for k, v in config.items() if isinstance(v, dict) and "deploy" in v)
if sys.argv[2] == "--list":
    print(" ".join(stages))
    sys.exit(0)
if sys.argv[2] not in stages:
    sys.exit(f"unknown stage {sys.argv[2]!r}: infra/samconfig.toml has {', '.join(stages)}")
block = config[sys.argv[2]]
if sys.argv[3] == "template":
    print(block.get("build", {}).get("parameters", {}).get("template_file", "infra/template.yaml"))
else:
    print(block["deploy"]["parameters"]["stack_name"])
PY
