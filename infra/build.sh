#!/usr/bin/env bash
# Release arm64 artifacts of every function (gateway and each tool folder) with `sam build`
# (BuildMethod rust-cargolambda: cargo lambda build --release --arm64, one binary per function)
# into .aws-sam/build, ready for `sam deploy`. Takes minutes on two cores: see infra/README.md.
#
#   infra/build.sh [STAGE]    (make build; deploy.sh passes the stage it deploys)
#
# The template is the stage's (infra/stage.sh STAGE template): classic Lambda unless the stage
# picks the Lambda Managed Instances form. Without a stage: infra/template.yaml.
#
# Needs: cargo (rustup), the project venv (.venv: sam, cargo-lambda and the zig it links with;
# `make tools`). No AWS credentials, no Docker.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

VENV=${VENV:-$ROOT/.venv}
# sam and cargo-lambda from the venv; cargo-lambda finds zig with `python3 -m ziglang`, so the
# venv's python3 must come first on PATH.
export PATH="$VENV/bin:$PATH"
export SAM_CLI_TELEMETRY=${SAM_CLI_TELEMETRY:-0}

for tool in sam cargo cargo-lambda; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool not found (run \`make tools\`)" >&2; exit 2; }
done

# The template must describe the tool folders as they are now.
python3 infra/render.py --check

# cargo-lambda cross-compiles for Graviton with zig; the Rust standard library for the target
# comes from rustup.
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
  rustup target add aarch64-unknown-linux-gnu
fi

TEMPLATE=infra/template.yaml
if [[ $# -gt 0 && "$1" != -* ]]; then
  TEMPLATE=$(infra/stage.sh "$1" template)
  shift
fi

start=$(date +%s)
sam build --template-file "$TEMPLATE" --build-dir .aws-sam/build "$@"
echo "build.sh: built every function of $TEMPLATE in $(( $(date +%s) - start )) s into .aws-sam/build"
