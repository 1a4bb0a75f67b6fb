"""The scripts parse, and the smoke test's client imports (the official MCP SDK from .venv)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import INFRA

SCRIPTS = ["build.sh", "deploy.sh", "destroy.sh", "validate.sh", "stage.sh"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_shell_scripts_parse_and_are_executable(script):
    path = INFRA / script
    assert path.stat().st_mode & 0o111, f"{script} is not executable"
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_stage_lookup():
    out = subprocess.run([str(INFRA / "stage.sh"), "prod"], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "tollgate-prod"
    bad = subprocess.run([str(INFRA / "stage.sh"), "nope"], capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown stage" in bad.stderr


def test_smoke_script_loads_the_mcp_sdk():
    out = subprocess.run([sys.executable, str(INFRA / "smoke.py"), "--help"], check=True, capture_output=True, text=True)
    assert "initialize" in out.stdout and "tools/call" in out.stdout


def test_a_stage_picks_its_compute_form(tmp_path):
    """Classic Lambda unless the stage's build parameters name the managed-instances template;
    every stage of infra/samconfig.toml names a rendered template, and a managed stage passes
    the capacity provider's network and not ReserveConcurrency (which that form has not)."""
    import os
    import tomllib

    config = tmp_path / "samconfig.toml"
    config.write_text(
        'version = 0.1\n'
        '[busy.deploy.parameters]\nstack_name = "tollgate-busy"\n'
        'parameter_overrides = "Stage=busy ManagedInstancesSubnetIds=subnet-1,subnet-2 ManagedInstancesSecurityGroupIds=sg-1"\n'
        '[busy.build.parameters]\ntemplate_file = "infra/template.managed.yaml"\n'
        '[calm.deploy.parameters]\nstack_name = "tollgate-calm"\nparameter_overrides = "Stage=calm"\n'
    )
    env = {**os.environ, "SAMCONFIG": str(config)}
    pick = lambda stage: subprocess.run(  # noqa: E731
        [str(INFRA / "stage.sh"), stage, "template"], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()
    assert pick("busy") == "infra/template.managed.yaml"
    assert pick("calm") == "infra/template.yaml"
    real = tomllib.loads((INFRA / "samconfig.toml").read_text())
    for stage, block in real.items():
        if not isinstance(block, dict) or "deploy" not in block:
            continue
        template = block.get("build", {}).get("parameters", {}).get("template_file", "infra/template.yaml")
        assert template in ("infra/template.yaml", "infra/template.managed.yaml"), stage
        overrides = block["deploy"]["parameters"]["parameter_overrides"]
        if template.endswith("managed.yaml"):
            assert "ManagedInstancesSubnetIds=" in overrides and "ReserveConcurrency" not in overrides, stage
