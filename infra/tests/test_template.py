"""The SAM template: one function, role, log group and route set per tool folder; the runtime
contract (build, runtime, timeouts, environment); data, logging, alarms and dashboard."""

from __future__ import annotations

import json
import re

import pytest
from conftest import (
    definition_body,
    function_name_of,
    integration_target,
    render,
    routes,
    serverless_functions,
)

REQUIRED_ENV = {
    "TOLLGATE_TABLE",
    "TOLLGATE_RESOURCE_URL",
    "TOLLGATE_SERVICE",
    "TOLLGATE_AUTH_METHODS",
    "TOLLGATE_HASH_KEY_SECRET",
    "TOLLGATE_OAUTH_ISSUER",
    "TOLLGATE_OAUTH_AUDIENCE",
    "TOLLGATE_OAUTH_JWKS_URL",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "TOLLGATE_AGENT_PER_MINUTE",
    "TOLLGATE_AGENT_PER_DAY",
}


def by_name(resources):
    return {function_name_of(res): (lid, res) for lid, res in serverless_functions(resources).items()}


def test_every_tool_folder_has_exactly_one_function_role_log_group_and_route_set(resources, tool_folders):
    functions = by_name(resources)
    assert sorted(functions) == sorted(tool_folders + ["gateway"])
    assert len(serverless_functions(resources)) == len(tool_folders) + 1
    body = definition_body(resources)
    api_routes = routes(body)
    for name, (lid, fn) in functions.items():
        props = fn["Properties"]
        assert props["CodeUri"] == f"../functions/{name}"
        assert fn["Metadata"]["BuildProperties"]["Binary"] == name
        role = props["Role"]["Fn::GetAtt"][0]
        assert resources[role]["Type"] == "AWS::IAM::Role"
        other_users = [k for k, f in serverless_functions(resources).items() if f["Properties"]["Role"]["Fn::GetAtt"][0] == role]
        assert other_users == [lid], f"role {role} shared"
        group = props["LoggingConfig"]["LogGroup"]["Ref"]
        assert resources[group]["Properties"]["LogGroupName"] == {"Fn::Sub": f"/aws/lambda/${{AWS::StackName}}-{name}"}
        served = {(m, p) for m, p in api_routes if integration_target(body["paths"][p][m.lower()]) == name}
        if name == "gateway":
            assert served == {
                ("POST", "/mcp"),
                ("GET", "/mcp"),
                ("DELETE", "/mcp"),
                ("GET", "/.well-known/oauth-protected-resource"),
                ("GET", "/.well-known/oauth-protected-resource/{proxy+}"),
                ("GET", "/connect/callback"),
                ("GET", "/connect/start"),
                ("POST", "/connect/start"),
                ("GET", "/connect/login"),
            }
        else:
            path = f"/tools/{name}/mcp"
            assert served == {("POST", path), ("GET", path), ("DELETE", path)}, name
    assert len([r for r in resources.values() if r["Type"] == "AWS::IAM::Role"]) == len(functions)


def test_functions_are_rust_on_al2023_arm64_built_with_cargo_lambda(resources):
    for lid, fn in serverless_functions(resources).items():
        props = fn["Properties"]
        assert fn["Metadata"]["BuildMethod"] == "rust-cargolambda", lid
        assert props["Runtime"] == "provided.al2023"
        assert props["Architectures"] == ["arm64"]
        assert props["Handler"] == "bootstrap"
        assert props["Tracing"] == "Active"
        logging = props["LoggingConfig"]
        # Lambda sets AWS_LAMBDA_LOG_LEVEL from ApplicationLogLevel (log-level control).
        assert logging["LogFormat"] == "JSON" and logging["ApplicationLogLevel"] == {"Ref": "LogLevel"}


def test_timeouts_nest_inside_api_gateways_integration_timeout(resources):
    body = definition_body(resources)
    limit_ms = min(
        op["x-amazon-apigateway-integration"]["timeoutInMillis"] for item in body["paths"].values() for op in item.values()
    )
    assert limit_ms <= 30_000
    functions = by_name(resources)
    gateway = functions.pop("gateway")[1]["Properties"]["Timeout"]
    assert gateway * 1000 < limit_ms
    for name, (_, fn) in functions.items():
        sync_cap = fn["Properties"]["Environment"]["Variables"].get("TOLLGATE_SYNC_TIMEOUT_MS")
        if sync_cap is not None:
            # A task tool: its timeout covers task runs; calls are capped under the gateway's.
            assert int(sync_cap) + 2000 <= gateway * 1000, name
            assert "EventInvokeConfig" in fn["Properties"], name
            continue
        assert fn["Properties"]["Timeout"] + 2 <= gateway, f"{name} must answer before the gateway gives up"


def test_runtime_environment_contract(resources, functions):
    settings = {f.name: f.settings for f in functions}
    for name, (_, fn) in by_name(resources).items():
        env = fn["Properties"]["Environment"]["Variables"]
        assert REQUIRED_ENV <= set(env), (name, REQUIRED_ENV - set(env))
        assert env["TOLLGATE_TABLE"] == {"Ref": "TollgateTable"}
        assert env["TOLLGATE_SERVICE"] == {"Ref": "AWS::StackName"}
        assert "AWS_LAMBDA_LOG_LEVEL" not in env, "Lambda sets it from LoggingConfig.ApplicationLogLevel"
        assert ("TOLLGATE_APP_TABLE" in env) == bool(settings[name]["app_table"]), name
        if name == "gateway":
            # The gateway invokes `<prefix><tool>`: the prefix must produce the tool functions' names.
            assert env["TOLLGATE_FUNCTION_PREFIX"] == {"Fn::Sub": "${AWS::StackName}-"}
        else:
            assert "TOLLGATE_FUNCTION_PREFIX" not in env
    track = by_name(resources)["track_shipment"][1]["Properties"]["Environment"]["Variables"]
    assert track["TRACK_SHIPMENT_API_URL"] == {"Fn::Sub": "${TrackShipmentApiUrl}"}


def test_tool_function_names_fit_lambdas_limit_for_every_allowed_stack_name(tool_folders):
    for tool in tool_folders:
        assert render.MAX_STACK_NAME + 1 + len(tool) <= 64, tool


def test_tollgate_table(resources):
    props = resources["TollgateTable"]["Properties"]
    assert props["TableName"] == {"Fn::Sub": "${AWS::StackName}-tollgate"}
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}]
    (gsi,) = props["GlobalSecondaryIndexes"]
    assert gsi["IndexName"] == "gsi1"
    assert [k["AttributeName"] for k in gsi["KeySchema"]] == ["gsi1pk", "gsi1sk"]
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at_s", "Enabled": True}


@pytest.mark.parametrize("table", ["TollgateTable", "AppTable"])
def test_tables_are_encrypted_backed_up_and_retained(resources, table):
    res = resources[table]
    props = res["Properties"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["SSESpecification"] == {"SSEEnabled": True, "SSEType": "KMS", "KMSMasterKeyId": {"Ref": "TollgateKey"}}
    assert props["DeletionProtectionEnabled"] is True
    assert res["DeletionPolicy"] == res["UpdateReplacePolicy"] == "Retain"
    # The key encrypting retained data is retained too.
    assert resources["TollgateKey"]["DeletionPolicy"] == "Retain"
    assert resources["TollgateKey"]["Properties"]["EnableKeyRotation"] is True


def test_log_groups_have_retention_encryption_and_data_protection(resources):
    groups = {k: v for k, v in resources.items() if v["Type"] == "AWS::Logs::LogGroup"}
    assert len(groups) == len(serverless_functions(resources)) + 1  # + API access logs
    for lid, group in groups.items():
        props = group["Properties"]
        assert props["RetentionInDays"] == {"Ref": "LogRetentionDays"}, lid
        assert props["KmsKeyId"] == {"Fn::GetAtt": ["TollgateKey", "Arn"]}, lid
        if lid != "ApiAccessLogGroup":
            ops = [next(iter(s["Operation"])) for s in props["DataProtectionPolicy"]["Statement"]]
            assert ops == ["Audit", "Deidentify"], lid


def test_api_access_log_never_records_headers_or_bodies(resources):
    fmt = resources["HttpApi"]["Properties"]["AccessLogSettings"]["Format"]
    fields = json.loads(fmt)
    for value in fields.values():
        assert not re.search(r"header|authorization|requestBody|querystring", value, re.I), value


def test_checkov_skips_carry_their_reason(resources):
    for lid, res in resources.items():
        for skip in res.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert re.fullmatch(r"CKV2?_AWS_\d+", skip["id"]), lid
            assert len(skip.get("comment", "")) >= 40, f"{lid}: skip {skip['id']} without a real reason"


def alarms(resources, kind="AWS::CloudWatch::Alarm"):
    return {k: v for k, v in resources.items() if v["Type"] == kind}


def test_per_tool_alarms(resources, functions):
    all_alarms = alarms(resources)
    for fn in functions:
        assert f"{fn.logical}ThrottlesAlarm" in all_alarms
        assert f"{fn.logical}FunctionErrorsAlarm" in all_alarms
        if not fn.is_tool:
            continue
        assert f"{fn.logical}ErrorRateAnomalyAlarm" in all_alarms
        latency = all_alarms[f"{fn.logical}LatencyP99Alarm"]["Properties"]
        assert latency["ExtendedStatistic"] == "p99" and latency["MetricName"] == "Latency"
        assert latency["Threshold"] == fn.settings["p99_latency_ms"]
        assert {"Name": "Tool", "Value": fn.name} in latency["Dimensions"]
        budget = all_alarms[f"{fn.logical}BudgetExhaustedAlarm"]["Properties"]
        assert budget["MetricName"] == "BudgetRefusals"
        assert {"Name": "Layer", "Value": "tool"} in budget["Dimensions"]


def test_error_rate_and_auth_failures_use_anomaly_bands_not_static_thresholds(resources, functions):
    anomaly = ["AuthFailureAnomalyAlarm"] + [f"{fn.logical}ErrorRateAnomalyAlarm" for fn in functions if fn.is_tool]
    for lid in anomaly:
        props = resources[lid]["Properties"]
        assert props["ComparisonOperator"] == "GreaterThanUpperThreshold"
        assert "Threshold" not in props
        band = next(m for m in props["Metrics"] if m["Id"] == props["ThresholdMetricId"])
        assert band["Expression"].startswith("ANOMALY_DETECTION_BAND(")


def test_one_composite_alarm_covers_every_alarm_and_is_the_only_one_that_notifies(resources):
    (composite,) = alarms(resources, "AWS::CloudWatch::CompositeAlarm").values()
    rule = composite["Properties"]["AlarmRule"]["Fn::Sub"]
    children = set(re.findall(r'ALARM\("\$\{(\w+)\}"\)', rule))
    assert children == set(alarms(resources))
    assert composite["Properties"]["AlarmActions"] == {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
    for lid, alarm in alarms(resources).items():
        for key in ("AlarmActions", "OKActions", "InsufficientDataActions"):
            assert key not in alarm["Properties"], f"{lid} would page on its own"


def test_dashboard_shows_calls_errors_latency_and_refusals_per_tool(resources, functions):
    body = resources["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    dashboard = json.loads(body)
    titles = [w["properties"].get("title", "") for w in dashboard["widgets"]]
    for fn in functions:
        if fn.is_tool:
            for what in ("calls and errors by status", "latency p50 / p99", "budget refusals by layer"):
                assert f"{fn.name}: {what}" in " | ".join(titles), (fn.name, what)
    # Fn::Sub must only see the placeholders we mean.
    assert set(re.findall(r"\$\{([^}]+)\}", body)) <= {"AWS::Region", "AWS::StackName", "AWS::AccountId", "AWS::Partition", "HttpApi"}


def test_sam_transform_succeeds_and_keeps_our_roles(transformed, resources):
    out = transformed["Resources"]
    # No function role generated by SAM: each function runs with the role rendered for it. The
    # one role SAM adds is the capacity provider's operator role (managed form): Lambda's, to
    # run the EC2 instances, with AWS's managed policy for exactly that and nothing else.
    generated = {k for k, v in out.items() if v["Type"] == "AWS::IAM::Role"} - {
        k for k, v in resources.items() if v["Type"] == "AWS::IAM::Role"
    }
    assert generated == ({"CapacityProviderOperatorRole"} if "CapacityProvider" in resources else set())
    for lid in generated:
        role = out[lid]["Properties"]
        assert role["ManagedPolicyArns"] == ["arn:aws:iam::aws:policy/AWSLambdaManagedEC2ResourceOperator"]
        assert "Policies" not in role
        [stmt] = role["AssumeRolePolicyDocument"]["Statement"]
        assert stmt["Principal"] == {"Service": ["lambda.amazonaws.com"]}
        cp = out["CapacityProvider"]["Properties"]
        assert cp["PermissionsConfig"]["CapacityProviderOperatorRoleArn"] == {"Fn::GetAtt": [lid, "Arn"]}
    api = out["HttpApi"]
    assert api["Type"] == "AWS::ApiGatewayV2::Api"
    assert set(api["Properties"]["Body"]["paths"]) == set(definition_body(resources)["paths"])
    stage = out["HttpApiApiGatewayDefaultStage"]["Properties"]
    assert stage["StageName"] == "$default" and stage["AutoDeploy"] is True
    assert "AccessLogSettings" in stage and "ThrottlingRateLimit" in stage["DefaultRouteSettings"]


def test_api_permissions_are_scoped_to_this_api_and_route(resources):
    body = definition_body(resources)
    perms = {k: v["Properties"] for k, v in resources.items() if v["Type"] == "AWS::Lambda::Permission"}
    covered = set()
    for lid, p in perms.items():
        assert p["Principal"] == "apigateway.amazonaws.com"
        arn = p["SourceArn"]["Fn::Sub"]
        assert arn.startswith("arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${HttpApi}/*/*/"), lid
        fn = function_name_of(resources[p["FunctionName"]["Ref"]])
        covered.add((fn, arn.split("${HttpApi}/*/*", 1)[1]))
    needed = {
        (integration_target(op), re.sub(r"\{[^}]+\}", "*", path))
        for path, item in body["paths"].items()
        for op in item.values()
    }
    assert covered == needed


def test_samconfig_stages_name_their_stacks_and_pass_their_stage():
    import tomllib

    from conftest import INFRA

    config = tomllib.loads((INFRA / "samconfig.toml").read_text())
    stages = {k: v for k, v in config.items() if isinstance(v, dict) and "deploy" in v}
    assert {"dev", "prod"} <= set(stages)
    for stage, block in stages.items():
        params = block["deploy"]["parameters"]
        assert params["stack_name"] == f"tollgate-{stage}"
        assert len(params["stack_name"]) <= render.MAX_STACK_NAME
        assert re.fullmatch(r"[a-z][a-z0-9-]{0,15}", stage)
        assert f"Stage={stage}" in params["parameter_overrides"].split()
        assert params["capabilities"] == "CAPABILITY_IAM"


def test_generated_hashing_key_is_valid_base64_of_at_least_32_bytes(resources):
    # shared/src/audit/hash_key.rs reads the secret as base64 of >= 32 bytes. Letters and digits only
    # (no punctuation, no space) are base64 characters; a length that is a multiple of 4 needs no
    # padding; 6 bits per character.
    gen = resources["HashKeySecret"]["Properties"]["GenerateSecretString"]
    assert gen["ExcludePunctuation"] is True and gen["IncludeSpace"] is False
    assert gen["PasswordLength"] % 4 == 0 and gen["PasswordLength"] * 6 // 8 >= 32


def test_compute_form_classic_or_managed_instances(template, resources, functions):
    """Classic: reserved concurrency per function, no capacity provider. Managed instances: one
    capacity provider (VPC, arm64 instance types, vCPU ceiling, CPU target) that every function
    runs on, with its per-environment concurrency and environment counts from tools.toml."""
    settings = {f.name: f.settings for f in functions}
    managed = "CapacityProvider" in resources
    for name, (_, fn) in by_name(resources).items():
        props = fn["Properties"]
        s = settings[name]
        if not managed:
            assert "CapacityProviderConfig" not in props and "FunctionScalingConfig" not in props
            assert props["ReservedConcurrentExecutions"]["Fn::If"][1] == s["reserved_concurrency"]
            continue
        assert "ReservedConcurrentExecutions" not in props, name
        assert "VpcConfig" not in props, "the capacity provider holds the VPC"
        cp = props["CapacityProviderConfig"]
        assert cp["Arn"] == render.CAPACITY_PROVIDER_ARN
        assert cp["PerExecutionEnvironmentMaxConcurrency"] == s["managed_max_concurrency"] > 1
        # 2 GiB per vCPU at least 1 vCPU: Lambda's smallest managed environment.
        assert props["MemorySize"] == s["managed_memory_mb"] >= 2048
        assert props["MemorySize"] % (1024 * cp["ExecutionEnvironmentMemoryGiBPerVCpu"]) == 0
        scaling = props["FunctionScalingConfig"]
        assert 1 <= scaling["MinExecutionEnvironments"] <= scaling["MaxExecutionEnvironments"]
    if not managed:
        assert "ReserveConcurrency" in template["Parameters"]
        assert not any(k.startswith("ManagedInstances") for k in template["Parameters"])
        return
    assert "ReserveConcurrency" not in template["Parameters"]
    cp = resources["CapacityProvider"]
    assert cp["Type"] == "AWS::Serverless::CapacityProvider"
    props = cp["Properties"]
    assert props["VpcConfig"] == {
        "SubnetIds": {"Ref": "ManagedInstancesSubnetIds"},
        "SecurityGroupIds": {"Ref": "ManagedInstancesSecurityGroupIds"},
    }
    # The instances run the functions' binaries: the same architecture.
    archs = {a for _, fn in by_name(resources).values() for a in fn["Properties"]["Architectures"]}
    assert props["InstanceRequirements"]["Architectures"] == sorted(archs) == ["arm64"]
    assert props["ScalingConfig"] == {
        "MaxVCpuCount": {"Ref": "ManagedInstancesMaxVCpus"},
        "AverageCPUUtilization": {"Ref": "ManagedInstancesTargetCpu"},
    }
    for p in ("ManagedInstancesSubnetIds", "ManagedInstancesSecurityGroupIds"):
        assert "Default" not in template["Parameters"][p], f"{p}: a stage must name its own"
