"""Whole programs on the fake library, loaded the way a real driver is: by LD_LIBRARY_PATH.

`gpumon run --backend nvml` with eight GPUs, scraped and checked by promtool; and a third-party
NVML client (gpustat, from PyPI) that reads the capture's GPU and degrades, rather than crashes,
on what the library does not implement.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpumon.sources.capture import load_capture
from gpumon.sources.replay import DEMO_CAPTURE
from tests.support.net import free_port
from tests.support.processes import Gpumon, need, run_gpumon
from tools.fakenvml import environment

pytestmark = pytest.mark.integration

CAPTURE = load_capture(DEMO_CAPTURE)
TRACE = CAPTURE.traces[0]
MIB = 1024 * 1024


def use_fake(monkeypatch: pytest.MonkeyPatch, library: Path, **settings: Any) -> None:
    """Make subprocesses started from here load the fake library."""
    for name, value in environment(library, **settings).items():
        monkeypatch.setenv(name, value)


def test_gpumon_run_on_eight_fake_gpus(libfakenvml: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_fake(monkeypatch, libfakenvml, gpus=8, latency=1)
    with Gpumon(tmp_path, backend="nvml") as g:
        time.sleep(1.3)  # one more fast round, so GPM series are present
        status, body = g.get("/metrics")
        log = g.log
    assert status == 200
    samples = [s for f in text_string_to_metric_families(body.decode()) for s in f.samples]
    up = {s.labels["gpu"]: s.value for s in samples if s.name == "gpumon_gpu_up"}
    assert up == {str(i): 1.0 for i in range(8)}
    info = [s.labels for s in samples if s.name == "gpumon_gpu_info"]
    assert {i["name"] for i in info} == {"NVIDIA H200"}
    assert len({i["uuid"] for i in info}) == len({i["pci_bus_id"] for i in info}) == 8
    assert {s.labels["gpu"] for s in samples if s.name == "gpumon_sm_active_ratio"} == {str(i) for i in range(8)}
    build = next(s for s in samples if s.name == "gpumon_build_info")
    assert build.labels["backend"] == "nvml"
    # With recorded latencies slept, a fast round costs what it costs on an H200 (GPM alone ~1-4 ms).
    fast = next(s for s in samples if s.name == "gpumon_poll_duration_seconds" and s.labels.get("tier") == "fast")
    assert fast.value > 0.001
    assert '"level": "error"' not in log and '"level": "warning"' not in log, log
    check = subprocess.run([need("promtool"), "check", "metrics"], input=body, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout == b"" and check.stderr == b""


def test_gpumon_run_when_nvml_init_fails(libfakenvml: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    faults = tmp_path / "faults.txt"
    faults.write_text("init_error DriverNotLoaded\n")
    use_fake(monkeypatch, libfakenvml, faults=faults)
    r = run_gpumon("run", "--backend", "nvml", "--listen", f"127.0.0.1:{free_port()}", "--state-dir",
                   str(tmp_path / "state"))
    assert r.returncode == 2
    assert "The NVIDIA kernel driver is not loaded" in r.stderr and "Traceback" not in r.stderr


def gpustat(library: Path, **settings: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpustat", *settings.pop("args", ())], capture_output=True,
                          text=True, timeout=30, env=environment(library, **settings))


def test_gpustat_reads_the_capture(libfakenvml: Path) -> None:
    rec = next(r for r in TRACE if r["util"]["gpu"] > 50 and r["mem"]["used"] > 0)
    r = gpustat(libfakenvml, gpus=2, speed=0, start=rec["t"] - TRACE[0]["t"], args=["--json"])
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["driver_version"] == "580.159.04"
    first = report["gpus"][0]
    assert first["name"] == "NVIDIA H200"
    assert first["memory.total"] == rec["mem"]["total"] // MIB
    assert first["memory.used"] == rec["mem"]["used"] // MIB
    assert first["utilization.gpu"] == rec["util"]["gpu"]
    assert first["power.draw"] == rec["power_mw"] // 1000
    assert first["fan.speed"] is None  # recorded NotSupported
    # nvmlDeviceGetEncoderUtilization is not exported: gpustat meets FunctionNotFound, as on an
    # old driver, and leaves the field empty.
    assert first["utilization.enc"] is None and first["utilization.dec"] is None
    assert report["gpus"][1]["uuid"] != first["uuid"]


def test_gpustat_shows_a_lost_gpu_and_carries_on(libfakenvml: Path, tmp_path: Path) -> None:
    faults = tmp_path / "faults.txt"
    faults.write_text("lost 1 0 3600\n")
    r = gpustat(libfakenvml, gpus=2, faults=faults, args=["--no-color"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "NVIDIA H200" in lines[1] and "143771 MB" in lines[1]
    assert "((GPU is lost))" in lines[2]
