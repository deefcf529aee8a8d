"""Users' apps run other openai SDK majors than the server's own environment (litellm pins
openai<3): run the same flows with the last 1.x and the newest 3.x from throwaway venvs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FLOWS = Path(__file__).with_name("sdk_compat") / "flows.py"
CACHE = Path(os.environ.get("OPENGROVE_SDK_COMPAT_DIR", Path(__file__).parents[1] / ".sdk-compat"))

SDK_VERSIONS = ["1.109.1", "3.54.0"]


def sdk_python(version: str) -> Path:
    venv = CACHE / f"openai-{version}"
    python = venv / "bin" / "python"
    if not python.exists():
        uv = [sys.executable, "-m", "uv"]
        subprocess.run([*uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
        subprocess.run(
            [*uv, "pip", "install", "--quiet", "--python", str(python), f"openai=={version}"],
            check=True,
        )
    return python


def run_python_flows(version: str, base_url: str, key: str | None = None) -> None:
    """The flows with that SDK version; `key`: a real key for a server with keys."""
    python = sdk_python(version)
    env = {**os.environ, **({"OPENGROVE_TEST_KEY": key} if key else {})}
    result = subprocess.run(
        [str(python), str(FLOWS), f"{base_url}/v1"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"(openai {version})" in result.stdout
    assert f"{len(result.stdout.splitlines()) - 1} passed, 0 failed" in result.stdout


@pytest.mark.parametrize("version", SDK_VERSIONS)
def test_flows_with_sdk_version(version: str, base_url: str) -> None:
    run_python_flows(version, base_url)


NODE_DIR = Path(__file__).with_name("sdk_compat")


def node_script(*args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a script of sdk_compat/ with the official Node SDK (npm `openai`, pinned in
    sdk_compat/package-lock.json), installed on first use."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not (node and npm):
        if os.environ.get("OPENGROVE_REQUIRE_NODE"):
            pytest.fail("node/npm not found and OPENGROVE_REQUIRE_NODE is set")
        pytest.skip("node/npm not installed")
    if not (NODE_DIR / "node_modules" / "openai").exists():
        subprocess.run(
            [npm, "ci", "--silent", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            check=True,
            timeout=300,
        )
    env = {**os.environ, **({"OPENGROVE_TEST_KEY": key} if key else {})}
    return subprocess.run(
        [node, *args], cwd=NODE_DIR, capture_output=True, text=True, timeout=300, env=env
    )


def test_flows_with_node_sdk(base_url: str) -> None:
    result = node_script("flows.mjs", f"{base_url}/v1", "fake-model")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed, 0 failed" in result.stdout
