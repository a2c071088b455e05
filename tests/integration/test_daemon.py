"""`gpumon run` as a user runs it: replaying the bundled capture, scraped, signalled, given bad input."""

from __future__ import annotations

import ctypes.util
import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.net import free_port
from tests.support.processes import Gpumon, need, run_gpumon

pytestmark = pytest.mark.integration


def test_promtool_finds_nothing_to_complain_about(tmp_path: Path) -> None:
    with Gpumon(tmp_path, backend="replay:demo,loop,gpus=2") as g:
        time.sleep(1.2)  # one more fast round, so GPM series are present
        status, body = g.get("/metrics")
    assert status == 200
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"gpumon_gpu_info", "gpumon_sm_active_ratio", "gpumon_energy_joules", "gpumon_gpu_up"} <= names
    check = subprocess.run([need("promtool"), "check", "metrics"], input=body, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout == b"" and check.stderr == b""


def test_demo_data_is_labelled_loudly(tmp_path: Path) -> None:
    with Gpumon(tmp_path, backend="auto" if _no_nvml() else "replay:demo,loop") as g:
        _, metrics = g.get("/metrics")
        _, page = g.get("/")
        log = g.log
    assert b'gpumon_build_info{backend="replay",capture="bundled H200 demo capture"' in metrics
    assert b"DEMO DATA" in page and b"NVIDIA H200" in page
    assert "DEMO DATA" in log


def _no_nvml() -> bool:
    return ctypes.util.find_library("nvidia-ml") is None


@pytest.mark.skipif(not _no_nvml(), reason="this machine has NVML")
def test_nvml_backend_without_nvml_is_one_sentence_and_exit_2() -> None:
    r = run_gpumon("run", "--backend", "nvml", "--listen", f"127.0.0.1:{free_port()}")
    assert r.returncode == 2
    assert "could not be loaded" in r.stderr and "Traceback" not in r.stderr


def test_missing_capture_exit_2(tmp_path: Path) -> None:
    r = run_gpumon("run", "--backend", f"replay:{tmp_path / 'nope'}", "--listen", f"127.0.0.1:{free_port()}",
                   "--log-format", "console")
    assert r.returncode == 2
    assert "capture not found" in r.stderr and "Traceback" not in r.stderr


def test_corrupt_capture_names_file_and_line(tmp_path: Path, demo_path: Path) -> None:
    lines = (demo_path / "trace.jsonl").read_text().splitlines()
    lines[4] = lines[4][:40]
    (tmp_path / "trace.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "probe.json").write_text((demo_path / "probe.json").read_text())
    r = run_gpumon("snapshot", "--backend", f"replay:{tmp_path}")
    assert r.returncode == 2
    assert f"{tmp_path / 'trace.jsonl'}:5: invalid JSON" in r.stderr and "Traceback" not in r.stderr


def test_malformed_config_names_file_line_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "gpumon.yaml"
    cfg.write_text("web:\n  listen: ':9948'\nsampler:\n  fast_interval: 1s\n  slow_intervall: 30s\n")
    r = run_gpumon("run", "--config", str(cfg), "--check-config")
    assert r.returncode == 1
    assert f"{cfg}:5: sampler.slow_intervall: unknown key" in r.stderr and "Traceback" not in r.stderr
    cfg.write_text("sampler:\n  fast_interval: 1s\n")
    ok = run_gpumon("run", "--config", str(cfg), "--check-config")
    assert ok.returncode == 0, ok.stderr


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_gpumon("run", "--backend", "replay:demo", "--listen", f"127.0.0.1:{port}", "--log-format", "console")
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr


def test_sighup_keeps_running_config_when_new_one_is_invalid(tmp_path: Path) -> None:
    cfg = tmp_path / "gpumon.yaml"
    cfg.write_text("sampler:\n  fast_interval: 1s\n")
    with Gpumon(tmp_path, "--config", str(cfg)) as g:
        cfg.write_text("sampler:\n  fast_interval: never\n")
        g.signal(signal.SIGHUP)
        _wait_log(g, "reload failed")
        assert g.get("/metrics")[0] == 200
        assert "fast_interval" in g.log and f"{cfg}:2" in g.log
        cfg.write_text("sampler:\n  fast_interval: 500ms\n")
        g.signal(signal.SIGHUP)
        _wait_log(g, "configuration reloaded")
        assert g.get("/-/ready")[0] == 200


def _wait_log(g: Gpumon, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in g.log:
        assert time.monotonic() < deadline, f"{text!r} not in log:\n{g.log}"
        time.sleep(0.05)


def test_snapshot_json(tmp_path: Path) -> None:
    r = run_gpumon("snapshot", "--backend", "replay:demo,gpus=2", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["backend"] == "replay" and doc["demo"] is True
    assert [g["index"] for g in doc["gpus"]] == [0, 1]
    metrics = doc["gpus"][0]["metrics"]
    assert metrics["gpumon_memory_total_bytes"] == 150754820096
    assert "gpumon_sm_active_ratio" in metrics
    assert metrics["gpumon_temperature_threshold_celsius"]["threshold=slowdown"] == 89


def test_snapshot_table() -> None:
    r = run_gpumon("snapshot", "--backend", "replay:demo")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("DEMO DATA")
    assert "gpumon_memory_total_bytes" in r.stdout and "140.40 GiB" in r.stdout
