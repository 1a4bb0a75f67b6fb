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
