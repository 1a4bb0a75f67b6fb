#!/usr/bin/env bash
# Deletes a stage's stack: functions, roles, API, alarms, dashboard, log groups, secret.
#
#   infra/destroy.sh STAGE [--yes] [--delete-data]     (make destroy STAGE=dev)
#
# The data is retained on purpose (DeletionPolicy: Retain): the tollgate table (agents, keys,
# budget state), the app table and the KMS key that encrypts them. Redeploying the same stage
# then needs them gone (the table names are fixed), so `--delete-data` also deletes both tables
# (turning their deletion protection off) and schedules the key's deletion (7 days).
# Asks to type the stack name unless --yes.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

STAGE=""; YES=0; DELETE_DATA=0
for arg in "$@"; do
  case "$arg" in
    --yes) YES=1 ;;
    --delete-data) DELETE_DATA=1 ;;
    -*) echo "destroy.sh: unknown option $arg" >&2; exit 2 ;;
    *) STAGE=$arg ;;
  esac
done
[[ -n "$STAGE" ]] || { echo "usage: infra/destroy.sh STAGE [--yes] [--delete-data]" >&2; exit 2; }
STACK=$(infra/stage.sh "$STAGE")

VENV=${VENV:-$ROOT/.venv}
export PATH="$VENV/bin:$PATH"
export SAM_CLI_TELEMETRY=${SAM_CLI_TELEMETRY:-0}

if [[ $YES -ne 1 ]]; then
  what="stack $STACK"; [[ $DELETE_DATA -eq 1 ]] && what="$what AND its tables and key"
  read -r -p "Delete $what? Type the stack name to confirm: " answer
  [[ "$answer" == "$STACK" ]] || { echo "destroy.sh: not confirmed, nothing deleted" >&2; exit 1; }
fi

# The retained resources: from the stack's outputs while it exists, else by their names
# (tables <stack>-tollgate and <stack>-app, the key by its description), so
# `--delete-data` also works after a plain destroy.
RETAINED=$(python3 - "$STACK" <<'PY'
import sys, boto3
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError
stack_name = sys.argv[1]
try:
    boto3.client("sts").get_caller_identity()
except (NoCredentialsError, NoRegionError, BotoCoreError, ClientError) as e:
    sys.exit(f"destroy.sh: no usable AWS credentials/region ({e}); set AWS_PROFILE / AWS_REGION")
try:
    stack = boto3.client("cloudformation").describe_stacks(StackName=stack_name)["Stacks"][0]
    out = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    print("present", out.get("TollgateTableName", ""), out.get("AppTableName", ""), out.get("KeyArn", "-"))
except ClientError as e:
    if "does not exist" not in str(e):
        raise
    kms, key = boto3.client("kms"), "-"
    for page in kms.get_paginator("list_keys").paginate():
        for k in page["Keys"]:
            try:
                meta = kms.describe_key(KeyId=k["KeyId"])["KeyMetadata"]
            except ClientError:
                continue
            if meta["Description"].startswith(f"tollgate {stack_name}:") and meta["KeyState"] == "Enabled":
                key = meta["Arn"]
    print("absent", f"{stack_name}-tollgate", f"{stack_name}-app", key)
PY
)
read -r STATE TOLLGATE_TABLE APP_TABLE KEY_ARN <<<"$RETAINED"

if [[ "$STATE" == "present" ]]; then
  echo "== sam delete $STACK"
  sam delete --stack-name "$STACK" --no-prompts
else
  echo "== stack $STACK does not exist"
fi

if [[ $DELETE_DATA -ne 1 ]]; then
  echo "Retained: tables $TOLLGATE_TABLE $APP_TABLE (deletion protection on), KMS key $KEY_ARN."
  echo "Delete them too with: infra/destroy.sh $STAGE --delete-data"
  exit 0
fi

echo "== deleting retained data: $TOLLGATE_TABLE $APP_TABLE, key $KEY_ARN"
python3 - "$TOLLGATE_TABLE" "$APP_TABLE" "$KEY_ARN" <<'PY'
import sys, boto3
ddb, kms = boto3.client("dynamodb"), boto3.client("kms")
*tables, key = sys.argv[1:]
for table in filter(None, tables):
    try:
        ddb.update_table(TableName=table, DeletionProtectionEnabled=False)
        ddb.get_waiter("table_exists").wait(TableName=table)
        ddb.delete_table(TableName=table)
        print(f"deleted table {table}")
    except ddb.exceptions.ResourceNotFoundException:
        print(f"table {table} already gone")
if key != "-":
    kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    print(f"key {key} scheduled for deletion in 7 days")
PY
