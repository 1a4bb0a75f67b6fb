"""Fixtures for the offline infrastructure tests: the committed template and OpenAPI document,
the tool folders, the manifest, and the template after the SAM transform (run locally)."""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

INFRA = Path(__file__).resolve().parent.parent
ROOT = INFRA.parent
sys.path.insert(0, str(INFRA))

import render  # noqa: E402  (infra/render.py)


TEMPLATES = ("template.yaml", "template.managed.yaml")


@pytest.fixture(scope="session", params=TEMPLATES)
def template(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Each rendered form: classic Lambda, and Lambda Managed Instances. Every test that reads
    the template runs on both."""
    return yaml.safe_load((INFRA / request.param).read_text())


@pytest.fixture(scope="session")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    return template["Resources"]


@pytest.fixture(scope="session")
def openapi() -> dict[str, Any]:
    return yaml.safe_load((INFRA / "openapi.yaml").read_text())


@pytest.fixture(scope="session")
def tool_folders() -> list[str]:
    """Tool folders as the file system has them, found independently of render.py."""
    return sorted(
        d.name
        for d in (ROOT / "functions").iterdir()
        if (d / "Cargo.toml").is_file() and d.name != "gateway"
    )


@pytest.fixture(scope="session")
def manifest() -> dict[str, Any]:
    return tomllib.loads((INFRA / "tools.toml").read_text())


@pytest.fixture(scope="session")
def functions() -> list[render.Function]:
    return render.load_functions()


@pytest.fixture(scope="session")
def transformed(template: dict[str, Any]) -> dict[str, Any]:
    """The CloudFormation template the SAM transform makes of ours, computed offline (local
    CodeUri paths swapped for S3 URIs the way `sam package` would)."""
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    from samtranslator.translator.transform import transform

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    doc = yaml.safe_load(yaml.safe_dump(template))
    for res in doc["Resources"].values():
        if res["Type"] == "AWS::Serverless::Function":
            res["Properties"]["CodeUri"] = "s3://artifacts/function.zip"
    return transform(doc, {}, NoManagedPolicies())


def serverless_functions(resources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in resources.items() if v["Type"] == "AWS::Serverless::Function"}


def function_name_of(res: dict[str, Any]) -> str:
    """`${AWS::StackName}-<name>` -> `<name>`."""
    sub = res["Properties"]["FunctionName"]["Fn::Sub"]
    prefix = "${AWS::StackName}-"
    assert sub.startswith(prefix), sub
    return sub[len(prefix) :]


def integration_target(op: dict[str, Any]) -> str:
    """The function an API Gateway integration invokes (its name without the stack prefix)."""
    uri = op["x-amazon-apigateway-integration"]["uri"]["Fn::Sub"]
    marker = ":function:${AWS::StackName}-"
    assert marker in uri and uri.endswith("/invocations"), uri
    return uri.split(marker, 1)[1][: -len("/invocations")]


HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def routes(definition: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in definition["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def definition_body(resources: dict[str, Any]) -> dict[str, Any]:
    return resources["HttpApi"]["Properties"]["DefinitionBody"]
