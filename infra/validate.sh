#!/usr/bin/env bash
# Every offline check of the infrastructure, in CI order (make validate; part of make test).
# No AWS credentials, no network, no Docker.
#
#   1. render.py --check     infra/template*.yaml and infra/openapi.yaml match the tool folders
#   2. cfn-lint              each template (after the SAM transform)
#   3. sam validate --lint   SAM's own validation (cfn-lint rules through the SAM CLI)
#   4. checkov               no failed check; each skip carries its reason in the template
#   5. pytest infra/tests    functions/routes/roles per tool folder, OpenAPI == template routes,
#                            least-privilege policies, alarms, dashboard, SAM transform, scripts
# Steps 2-5 cover both forms: classic Lambda (template.yaml) and Lambda Managed Instances
# (template.managed.yaml).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

VENV=${VENV:-$ROOT/.venv}
VENV_INFRA=${VENV_INFRA:-$ROOT/.venv-infra}
PY="$VENV/bin/python"
# The SAM CLI and cfn-lint want a region even offline; the template is region-agnostic.
export AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1}
export SAM_CLI_TELEMETRY=0
# checkov: no calls home (no Bridgecrew platform, no guideline download, no version check).
export BC_SKIP_MAPPING=TRUE CHECKOV_NO_OUTPUT_UPDATE_CHECK=1 CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=false

[[ -x "$PY" ]] || { echo "validate.sh: $PY missing (run \`make tools\`)" >&2; exit 2; }
[[ -x "$VENV_INFRA/bin/checkov" ]] || {
  echo "validate.sh: checkov missing (run \`make -f tests/stack/tools.mk tools-infra\`)" >&2; exit 2; }

# Milliseconds since the epoch (bash 5's EPOCHREALTIME, no external tools).
now_ms() { local t=${EPOCHREALTIME/[.,]/}; echo $((t / 1000)); }
seconds() { local ms=$(( $(now_ms) - $1 )); printf '%d.%d s' $((ms / 1000)) $((ms % 1000 / 100)); }

total_start=$(now_ms)
step() {
  local name=$1; shift
  local start; start=$(now_ms)
  echo "== $name"
  "$@"
  echo "   $name: $(seconds "$start")"
}

step "render --check" "$PY" infra/render.py --check
step "cfn-lint" "$VENV/bin/cfn-lint" infra/template.yaml infra/template.managed.yaml
for template in infra/template.yaml infra/template.managed.yaml; do
  step "sam validate --lint $template" "$VENV/bin/sam" validate --lint --template "$template"
  step "checkov $template" "$VENV_INFRA/bin/checkov" --file "$template" --framework cloudformation \
    --skip-download --compact --quiet
done
step "pytest infra/tests" "$PY" -m pytest infra/tests -q -p no:cacheprovider

echo "== infra validation passed in $(seconds "$total_start")"
