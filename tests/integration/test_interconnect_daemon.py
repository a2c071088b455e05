"""InfiniBand counters from the running daemon: a fake sysfs tree, scraped, promtool-clean."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import Gpumon, need
from tools.ibsysfs import IbSysfs

pytestmark = pytest.mark.integration


def test_infiniband_ports_are_exported(tmp_path: Path) -> None:
    fs = IbSysfs(tmp_path / "sys")
    fs.add_device("mlx5_0", ["pci0000:00", "0000:00:01.0", "0000:01:00.0"])
    with Gpumon(tmp_path, "--infiniband-root", str(fs.ib_root)) as g:
        time.sleep(1.2)
        status, body = g.get("/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert "gpumon_ib_port_transmit_bytes" in families and "gpumon_ib_port_up" in families
    up = families["gpumon_ib_port_up"].samples[0]
    assert up.labels == {"device": "mlx5_0", "port": "1"} and up.value == 1.0
    assert "gpumon_ib_gpu_affinity" not in families  # replayed GPUs are not in this host's PCIe tree
    check = subprocess.run([need("promtool"), "check", "metrics"], input=body, capture_output=True)
    assert check.returncode == 0 and check.stdout == b"" and check.stderr == b"", check.stdout + check.stderr
