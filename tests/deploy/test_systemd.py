"""deploy/systemd: the unit verifies, its hardening scores as documented, the example config is valid."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.deploy import DEPLOY, ROOT, VENV_BIN, gpumon, run
from tests.support.net import free_port
from tools.fakenvml import build, environment

UNIT = DEPLOY / "systemd" / "gpumon.service"
CONFIG = DEPLOY / "systemd" / "gpumon.yaml"
INSTALL_DOC = ROOT / "docs" / "install.md"
EXEC_START = "/usr/local/bin/gpumon"
# The exposure the issue asks for (systemd-analyze security: 0 = fully locked down, 10 = unprotected).
EXPOSURE_TARGET = 2.5


def _directives(unit: Path) -> dict[str, list[str]]:
    """Every `Key=value` of the unit, values in file order (systemd keys may repeat)."""
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _exposure() -> float:
    result = run("systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT))
    match = re.search(r"Overall exposure level for gpumon\.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


def test_unit_verifies(tmp_path: Path) -> None:
    # verify checks that ExecStart exists; this machine has gpumon in the virtualenv, not in /usr/local/bin,
    # so verify a copy that differs in that path only. Unknown or misspelt keys are only warnings (exit 0):
    # any output fails the test.
    text = UNIT.read_text()
    assert f"ExecStart={EXEC_START} " in text
    copy = tmp_path / "gpumon.service"
    copy.write_text(text.replace(f"ExecStart={EXEC_START} ", f"ExecStart={VENV_BIN / 'gpumon'} "))
    result = run("systemd-analyze", "verify", "--man=no", str(copy))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_catches_a_misspelt_key(tmp_path: Path) -> None:
    """The verify test above would notice a typo: systemd reports it (as a warning) on stderr."""
    copy = tmp_path / "gpumon.service"
    copy.write_text(UNIT.read_text().replace(f"ExecStart={EXEC_START} ", f"ExecStart={VENV_BIN / 'gpumon'} ")
                    .replace("ProtectHome=yes", "ProtectHme=yes"))
    result = run("systemd-analyze", "verify", "--man=no", str(copy))
    assert "Unknown key 'ProtectHme'" in result.stderr


def test_security_exposure_within_target_and_documented() -> None:
    exposure = _exposure()
    assert exposure <= EXPOSURE_TARGET
    # The number in docs/install.md and in the unit's header is the one systemd computes today.
    # (Another systemd version may weigh the settings differently: then update both numbers.)
    assert f"exposure level {exposure}" in INSTALL_DOC.read_text(), f"docs/install.md: record {exposure}"
    assert f"exposure {exposure} " in UNIT.read_text(), f"gpumon.service's header: record {exposure}"


def test_unit_runs_unprivileged_and_hardened() -> None:
    d = _directives(UNIT)
    assert d["User"] == ["gpumon"] and d["Group"] == ["gpumon"]
    assert d["ExecStart"] == [f"{EXEC_START} run --config /etc/gpumon/gpumon.yaml"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["Restart"] == ["on-failure"]
    assert d["StateDirectory"] == ["gpumon"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "MemoryDenyWriteExecute", "LockPersonality",
                "RestrictNamespaces", "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs"):
        assert d[key] == ["yes"], key
    assert d["ProtectSystem"] == ["strict"]
    assert d["CapabilityBoundingSet"] == [""] and d["AmbientCapabilities"] == [""]
    assert d["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert d["SystemCallFilter"][0] == "@system-service"
    # NVML's device nodes, including GPUs beyond /dev/nvidia0 (device groups are globs over /proc/devices).
    allowed = {v.split()[0] for v in d["DeviceAllow"]}
    assert {"/dev/nvidiactl", "/dev/nvidia-uvm", "char-nvidia-frontend", "char-nvidia", "char-nvidia-uvm"} <= allowed
    assert d["DevicePolicy"] == ["closed"]
    # The connection cap (web.max_connections, 512) plus gpumon's own files fit under the file limit.
    from gpumon.config import WebConfig
    from gpumon.daemon import FILES_RESERVED
    assert int(d["LimitNOFILE"][0]) >= WebConfig().max_connections + FILES_RESERVED


def test_sysusers_creates_the_units_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    for name in ("passwd", "group"):
        (tmp_path / "etc" / name).touch()
    result = run("systemd-sysusers", f"--root={tmp_path}", str(DEPLOY / "systemd" / "gpumon.sysusers"))
    assert result.returncode == 0, result.stderr
    (entry,) = (tmp_path / "etc" / "passwd").read_text().splitlines()
    name, _, uid, gid, _, home, shell = entry.split(":")
    assert (name, home, shell) == ("gpumon", "/var/lib/gpumon", "/usr/sbin/nologin")
    assert 0 < int(uid) < 1000 and 0 < int(gid) < 1000  # a system user
    assert (tmp_path / "etc" / "group").read_text().startswith(f"gpumon:x:{gid}:")


def test_the_state_dir_systemd_creates_is_the_one_gpumon_uses() -> None:
    assert "state_dir: /var/lib/gpumon\n" in CONFIG.read_text()


@pytest.mark.parametrize("config", [CONFIG, DEPLOY / "kubernetes" / "base" / "gpumon.yaml"], ids=["systemd", "k8s"])
def test_example_config_is_valid(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = gpumon(capsys, "run", "--config", str(config), "--check-config")
    assert code == 0, err


def test_no_ctypes_callbacks_so_memory_deny_write_execute_is_safe() -> None:
    """MemoryDenyWriteExecute=yes forbids W+X mappings. ctypes needs one only for a callback (a libffi
    closure: CFUNCTYPE/PYFUNCTYPE/WINFUNCTYPE instances); plain calls into libnvidia-ml do not."""
    import pynvml

    sources = [*sorted((ROOT / "gpumon").rglob("*.py")), Path(pynvml.__file__)]
    for source in sources:
        text = source.read_text()
        assert not re.search(r"\b(CFUNCTYPE|PYFUNCTYPE|WINFUNCTYPE)\b", text), source


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except OSError:
        return 0, ""


def test_gpumon_runs_under_memory_deny_write_execute(tmp_path: Path) -> None:
    """The daemon, reading GPUs through the real nvml source and the fake libnvidia-ml.so.1, serves SM
    activity under the seccomp filter systemd installs for MemoryDenyWriteExecute=yes (tests/support/mdwe.py).
    Not covered: whether NVIDIA's own libnvidia-ml.so.1 asks for an executable stack (docs/install.md)."""
    probe = subprocess.run([sys.executable, "-m", "tests.support.mdwe", sys.executable, "-c",
                            "import mmap; mmap.mmap(-1, 4096, prot=7)"], cwd=ROOT, capture_output=True,
                           text=True, timeout=30, check=False)
    assert "PermissionError" in probe.stderr, "the filter must refuse a writable and executable mapping"

    library = build(tmp_path / "lib")
    port = free_port()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "tests.support.mdwe", str(VENV_BIN / "gpumon"), "run", "--backend", "nvml",
         "--listen", f"127.0.0.1:{port}", "--state-dir", str(tmp_path / "state"), "--log-format", "json",
         "--fast-interval", "250ms"],
        cwd=ROOT, env=environment(library, gpus=2), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while _get(f"http://127.0.0.1:{port}/-/ready")[0] != 200:
            assert daemon.poll() is None, daemon.communicate()[1]
            assert time.monotonic() < deadline, "gpumon not ready within 20 s"
            time.sleep(0.1)
        deadline = time.monotonic() + 5  # GPM needs two samples; the first complete poll may precede them
        while not re.search(r"^gpumon_sm_active_ratio\{", _get(f"http://127.0.0.1:{port}/metrics")[1], re.M):
            assert time.monotonic() < deadline, "no gpumon_sm_active_ratio"
            time.sleep(0.2)
    finally:
        daemon.terminate()
        _, err = daemon.communicate(timeout=20)
    assert daemon.returncode == 0, err
    assert "Operation not permitted" not in err and "PermissionError" not in err


def test_the_attribution_drop_in_opens_proc_and_nothing_else(tmp_path: Path) -> None:
    """The drop-in lets gpumon read other users' /proc entries (docs/attribution.md); the exposure it
    leaves is within the target and recorded in docs/attribution.md."""
    drop_in = UNIT.parent / "attribution.conf"  # not in gpumon.service.d here: systemd would load it with the unit
    settings = _directives(drop_in)
    assert settings == {"ProtectProc": ["default"], "PrivateUsers": ["no"]}
    combined = tmp_path / "gpumon.service"  # a drop-in's [Service] lines override the unit's
    combined.write_text(UNIT.read_text() + "\n" + drop_in.read_text())
    result = run("systemd-analyze", "security", "--offline=true", "--no-pager", str(combined))
    match = re.search(r"Overall exposure level for gpumon\.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    assert exposure <= EXPOSURE_TARGET
    doc = (ROOT / "docs" / "attribution.md").read_text()
    assert f"exposure level {exposure}" in doc, f"docs/attribution.md: record {exposure}"
