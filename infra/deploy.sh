#!/usr/bin/env bash
# One-command deploy of a stage: render check, release build, `sam deploy` with the stage's
# block of infra/samconfig.toml, then the stack's outputs and the next steps.
#
#   infra/deploy.sh STAGE     (make deploy STAGE=dev)
#
# Needs AWS credentials for the target account and region (AWS_PROFILE / AWS_REGION or the
# default profile) with rights to create the stack's resources (IAM roles included).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

STAGE=${1:-}
[[ -n "$STAGE" ]] || { echo "usage: infra/deploy.sh STAGE   (a block of infra/samconfig.toml: $(infra/stage.sh --list))" >&2; exit 2; }
STACK=$(infra/stage.sh "$STAGE")

VENV=${VENV:-$ROOT/.venv}
export PATH="$VENV/bin:$PATH"
export SAM_CLI_TELEMETRY=${SAM_CLI_TELEMETRY:-0}

# Fail before a minutes-long build when there is nothing to deploy to.
python3 - <<'PY'
import sys, boto3
from botocore.exceptions import BotoCoreError, ClientError
try:
    session = boto3.session.Session()
    who = session.client("sts").get_caller_identity()
except (BotoCoreError, ClientError) as e:
    sys.exit(f"deploy.sh: no usable AWS credentials/region ({e}); set AWS_PROFILE / AWS_REGION")
if not session.region_name:
    sys.exit("deploy.sh: no AWS region; set AWS_REGION (or region in the profile)")
print(f"== deploying to account {who['Account']}, region {session.region_name}, as {who['Arn']}")
PY

infra/build.sh "$STAGE"

echo "== sam deploy: stage $STAGE, stack $STACK"
sam deploy \
  --config-file "$ROOT/infra/samconfig.toml" \
  --config-env "$STAGE" \
  --template-file "$ROOT/.aws-sam/build/template.yaml"

echo "== outputs of $STACK"
sam list stack-outputs --stack-name "$STACK" --output table

cat <<NEXT

Next steps (infra/README.md, "From an AWS account to a working endpoint"):
  1. an agent and its key, against the deployed table:
       TOLLGATE_TABLE=$STACK-tollgate cargo run --bin tollgate -- agents create my-agent --scope customers:read
       TOLLGATE_TABLE=$STACK-tollgate cargo run --bin tollgate -- keys create my-agent --expires-in 90d
  2. the smoke test with a real MCP client:
       .venv/bin/python infra/smoke.py <McpUrl above> <token>
NEXT
