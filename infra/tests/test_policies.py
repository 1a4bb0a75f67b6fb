"""Least privilege over the rendered template: no wildcard actions on DynamoDB, Secrets Manager
or Lambda; no `*` resource except X-Ray's (which has no resource-level permissions); each tool
role reaches only its own resources; the gateway may invoke exactly the tool functions."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import function_name_of, serverless_functions

GUARDED_SERVICES = ("dynamodb", "secretsmanager", "lambda")
XRAY_ACTIONS = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def target(resource: Any) -> str:
    """A symbolic name for a policy resource: the logical id it points at, or the literal."""
    if isinstance(resource, str):
        return resource
    if "Fn::GetAtt" in resource:
        return resource["Fn::GetAtt"][0]
    if "Ref" in resource:
        return resource["Ref"]
    if "Fn::Sub" in resource:
        return resource["Fn::Sub"]
    if "Fn::If" in resource:
        _, yes, no = resource["Fn::If"]
        return f"{target(yes)}|{target(no)}"
    raise AssertionError(f"unrecognised policy resource {resource}")


def roles(resources) -> dict[str, tuple[str, list[dict]]]:
    """function name -> (role logical id, statements of its policies)."""
    out = {}
    for fn in serverless_functions(resources).values():
        role_id = fn["Properties"]["Role"]["Fn::GetAtt"][0]
        role = resources[role_id]["Properties"]
        statements = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
        out[function_name_of(fn)] = (role_id, statements)
    return out


def grants(statements) -> dict[str, set[str]]:
    """action -> the resources it is granted on."""
    out: dict[str, set[str]] = {}
    for s in statements:
        assert s["Effect"] == "Allow"
        for action in as_list(s["Action"]):
            out.setdefault(action, set()).update(target(r) for r in as_list(s["Resource"]))
    return out


def all_statements(resources):
    for lid, res in resources.items():
        if res["Type"] == "AWS::IAM::Role":
            for policy in res["Properties"].get("Policies", []):
                for s in policy["PolicyDocument"]["Statement"]:
                    yield lid, s


def test_no_wildcard_actions_on_guarded_services(resources):
    for lid, s in all_statements(resources):
        for action in as_list(s["Action"]):
            assert action != "*", lid
            service, _, name = action.partition(":")
            if service in GUARDED_SERVICES:
                assert "*" not in name and "?" not in name, f"{lid}: {action}"
        assert "NotAction" not in s and "NotResource" not in s, lid


def test_only_xray_gets_a_star_resource(resources):
    for lid, s in all_statements(resources):
        if "*" in [target(r) for r in as_list(s["Resource"])]:
            assert set(as_list(s["Action"])) <= XRAY_ACTIONS, f"{lid}: {s['Sid']} on *"


def test_roles_are_for_lambda_only_and_inline_only(resources):
    for lid, res in resources.items():
        if res["Type"] != "AWS::IAM::Role":
            continue
        props = res["Properties"]
        assert "ManagedPolicyArns" not in props, lid
        (trust,) = props["AssumeRolePolicyDocument"]["Statement"]
        assert trust["Principal"] == {"Service": "lambda.amazonaws.com"}
        assert trust["Action"] == "sts:AssumeRole"


def test_each_tool_role_reaches_only_its_resources(resources, functions, manifest):
    shared = set(manifest["shared"]["tollgate_table_actions"])
    by_fn = roles(resources)
    for fn in functions:
        if not fn.is_tool:
            continue
        _, statements = by_fn[fn.name]
        g = grants(statements)
        expected = {a: {"TollgateTable"} for a in shared}
        # OAuth agent records and connect-link states (conditioned on their key prefixes,
        # checked in test_writes_outside_the_shared_actions_are_limited_to_key_prefixes).
        expected["dynamodb:PutItem"] = {"TollgateTable"}
        for action in fn.settings["app_table"]:
            expected.setdefault(action, set()).add("AppTable")
        if fn.settings["tasks"]:
            # tasks/list on the caller's TASK# partition (conditioned, checked below).
            expected["dynamodb:Query"] = {"TollgateTable"}
        for st in fn.settings["statements"]:
            for action in as_list(st["Action"]):
                if action.startswith("dynamodb:"):
                    expected.setdefault(action, set()).update(as_list(st["Resource"]))
        dynamo = {a: r for a, r in g.items() if a.startswith("dynamodb:")}
        assert dynamo == expected, fn.name
        secrets = {
            "HashKeySecret|HashKeySecretArn",
            # The OAuth introspection credentials: one named secret of this account and region.
            "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}"
            ":secret:${OAuthIntrospectionSecretName}-??????",
        }
        # A tool acting on a third-party account reads its provider's client secret (tools.toml).
        secrets |= {
            st["Resource"]["Fn::Sub"] if isinstance(st["Resource"], dict) else st["Resource"]
            for st in fn.settings.get("statements", [])
            if "secretsmanager:GetSecretValue" in as_list(st["Action"])
        }
        assert {a: r for a, r in g.items() if a.startswith("secretsmanager:")} == {
            "secretsmanager:GetSecretValue": secrets
        }
        if not fn.settings["tasks"]:
            # (A task tool invokes itself only: test_task_tools_invoke_only_themselves...)
            assert not [a for a in g if a.startswith("lambda:")], f"{fn.name} may invoke functions"
        assert set(g) - set(expected) - {"secretsmanager:GetSecretValue"} <= XRAY_ACTIONS | {
            "logs:CreateLogStream",
            "logs:PutLogEvents",
            "kms:Decrypt",
            "kms:DescribeKey",
            "kms:Encrypt",
            "kms:GenerateDataKey",
        } | ({"lambda:InvokeFunction", "sqs:SendMessage"} if fn.settings["tasks"] else set()), fn.name


@pytest.mark.parametrize(
    "tool, app_actions",
    [
        ("lookup_customer", {"dynamodb:GetItem"}),
        ("open_ticket", {"dynamodb:GetItem", "dynamodb:PutItem"}),
        ("track_shipment", set()),
    ],
)
def test_example_tools_app_table_access(resources, tool, app_actions):
    _, statements = roles(resources)[tool]
    on_app = {a for a, r in grants(statements).items() if "AppTable" in r}
    assert on_app == app_actions


def test_kms_use_is_limited_to_the_stack_key_through_its_services(resources):
    for lid, s in all_statements(resources):
        actions = as_list(s["Action"])
        if any(a.startswith("kms:") for a in actions):
            assert all(a.startswith("kms:") for a in actions), lid
            assert [target(r) for r in as_list(s["Resource"])] == ["TollgateKey"], lid
            if s.get("Sid") == "ConnectionVault":
                # Direct use, only under the vault's encryption context for declared providers.
                assert sorted(actions) == ["kms:Decrypt", "kms:Encrypt"], lid
                assert s["Condition"]["Null"] == {"kms:EncryptionContext:tollgate:field": "false"}, lid
                assert s["Condition"]["StringEquals"]["kms:EncryptionContext:tollgate:provider"], lid
                continue
            via = s["Condition"]["StringEquals"]["kms:ViaService"]["Fn::Sub"]
            if s.get("Sid") == "TaskRunFailuresKeyViaSqs":
                # A task tool's failed runs land in its queue, encrypted with the stack key.
                assert via == "sqs.${AWS::Region}.${AWS::URLSuffix}", lid
                assert sorted(actions) == ["kms:Decrypt", "kms:GenerateDataKey"], lid
                continue
            assert via in ("dynamodb.${AWS::Region}.${AWS::URLSuffix}", "secretsmanager.${AWS::Region}.${AWS::URLSuffix}")


def test_logs_go_only_to_the_functions_own_log_group(resources):
    for fn_name, (_, statements) in roles(resources).items():
        fn_id = next(k for k, v in serverless_functions(resources).items() if function_name_of(v) == fn_name)
        own = resources[fn_id]["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
        for action, where in grants(statements).items():
            if action.startswith("logs:"):
                assert where == {own}, (fn_name, action)
                assert action in ("logs:CreateLogStream", "logs:PutLogEvents")


def test_gateway_invokes_exactly_the_tool_functions(resources, tool_folders):
    _, statements = roles(resources)["gateway"]
    g = grants(statements)
    tool_function_ids = {
        lid for lid, fn in serverless_functions(resources).items() if function_name_of(fn) in tool_folders
    }
    assert g["lambda:InvokeFunction"] == tool_function_ids
    assert [a for a in g if a.startswith("lambda:")] == ["lambda:InvokeFunction"]
    # It reads keys and updates budgets on the tollgate table, and never touches app data.
    assert not [a for a, r in g.items() if "AppTable" in r]
    assert "dynamodb:GetItem" in g and "dynamodb:UpdateItem" in g


def test_no_function_may_scan_query_or_delete(resources):
    forbidden = {"dynamodb:Scan", "dynamodb:Query", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem", "dynamodb:DeleteTable"}
    for fn_name, (_, statements) in roles(resources).items():
        unconditioned = [s for s in statements if "Condition" not in s]
        assert not forbidden & set(grants(unconditioned)), fn_name


def test_writes_outside_the_shared_actions_are_limited_to_key_prefixes(resources, manifest):
    """PutItem (OAuth agent records, connect states) and the gateway's DeleteItem (redeeming a
    connect state) on the tollgate table carry a dynamodb:LeadingKeys condition."""
    shared = set(manifest["shared"]["tollgate_table_actions"])
    for fn_name, (_, statements) in roles(resources).items():
        for s in statements:
            actions = set(as_list(s["Action"]))
            on_table = {target(r) for r in as_list(s["Resource"])} == {"TollgateTable"}
            extra = {a for a in actions if a.startswith("dynamodb:")} - shared
            if not (on_table and extra):
                continue
            keys = s["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"]
            if "dynamodb:DeleteItem" in extra:
                assert fn_name == "gateway" and keys == ["CONNSTATE#*"], (fn_name, s)
            elif "dynamodb:Query" in extra:
                # tasks/list: the task partitions only.
                assert extra == {"dynamodb:Query"} and keys == ["TASK#*"], (fn_name, s)
            else:
                assert extra == {"dynamodb:PutItem"} and keys == ["AGENT#*", "CONNSTATE#*"], (fn_name, s)


def test_only_functions_that_declare_providers_use_the_vault_key_for_their_providers(resources, functions):
    """A function without TOLLGATE_PROVIDERS gets no direct use of the stack key; one with it
    gets Encrypt/Decrypt only under an encryption context naming its own providers."""
    by_fn = roles(resources)
    seen_vault = set()
    for fn in functions:
        _, statements = by_fn[fn.name]
        raw = fn.settings.get("env", {}).get("TOLLGATE_PROVIDERS", "")
        providers = sorted({p.strip() for p in raw.split(",") if p.strip()})
        vault = [s for s in statements if s.get("Sid") == "ConnectionVault"]
        direct_kms = [s for s in statements
                      if any(a.startswith("kms:") for a in as_list(s["Action"])) and "kms:ViaService" not in str(s.get("Condition"))]
        assert direct_kms == vault, fn.name
        if not providers:
            assert not vault, f"{fn.name} declares no provider but may use the vault key"
            continue
        seen_vault.add(fn.name)
        (s,) = vault
        assert s["Condition"]["StringEquals"] == {"kms:EncryptionContext:tollgate:provider": providers}, fn.name
    assert {"gateway", "account_profile"} <= seen_vault, seen_vault
    assert "lookup_customer" not in seen_vault


def test_updates_on_the_tollgate_table_are_limited_to_runtime_items(resources, functions):
    """UpdateItem reaches budget buckets and idempotency records, plus task records for a
    function that runs tasks (and the gateway), and connections for a function that declares a
    provider: never agents, keys or tool policies."""
    by_fn = roles(resources)
    for fn in functions:
        _, statements = by_fn[fn.name]
        updates = [s for s in statements if "dynamodb:UpdateItem" in as_list(s["Action"])]
        assert updates, fn.name
        for s in updates:
            assert as_list(s["Action"]) == ["dynamodb:UpdateItem"], (fn.name, s)
            keys = s["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"]
            want = ["BUCKET#*", "IDEM#*"]
            if fn.settings["tasks"] or (not fn.is_tool and any(f.settings["tasks"] for f in functions)):
                want.append("TASK#*")
            if fn.settings.get("env", {}).get("TOLLGATE_PROVIDERS"):
                want.append("CONN#*")
            assert keys == want, (fn.name, keys)


def test_task_tools_invoke_only_themselves_and_queue_their_failures(resources, functions):
    by_fn = roles(resources)
    fns = serverless_functions(resources)
    task_tools = [f for f in functions if f.settings["tasks"]]
    assert task_tools, "export_tickets runs as a task"
    for fn in functions:
        g = grants(by_fn[fn.name][1])
        if fn.settings["tasks"]:
            own = "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:function:${AWS::StackName}-" + fn.name
            assert g["lambda:InvokeFunction"] == {own}, fn.name
            assert g["sqs:SendMessage"] == {f"{fn.logical}TaskFailures"}, fn.name
            config = fns[f"{fn.logical}Function"]["Properties"]["EventInvokeConfig"]
            assert config["DestinationConfig"]["OnFailure"] == {
                "Type": "SQS", "Destination": {"Fn::GetAtt": [f"{fn.logical}TaskFailures", "Arn"]}}
            queue = resources[f"{fn.logical}TaskFailures"]["Properties"]
            assert queue["KmsMasterKeyId"] == {"Ref": "TollgateKey"}
            alarm = resources[f"{fn.logical}TaskFailuresAlarm"]["Properties"]
            assert alarm["Namespace"] == "AWS/SQS" and alarm["Threshold"] == 1
        elif fn.is_tool:
            assert "lambda:InvokeFunction" not in g and "sqs:SendMessage" not in g, fn.name
            assert "EventInvokeConfig" not in fns[f"{fn.logical}Function"]["Properties"], fn.name
