"""The daemon on the SYNTHETIC MIG capture (tests/fixtures/mig): every GPU instance measured with its
profile, the reconfiguration halfway through followed without a restart, promtool-clean, and GPU
detail's MIG panels answered by a real Prometheus scraping it."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.mig.generate import OUT_DIR as MIG
from tests.integration.test_grafana_queries import MIG_PANELS, query
from tests.support.dashboards import load, substitute, targets
from tests.support.processes import Gpumon, Prometheus, need

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SPEED = 4.0  # the 42 s capture in 10.5 s: the reconfiguration comes every 5.25 s
BEFORE, AFTER = {"2", "3", "9", "10"}, {"2", "9", "10", "11", "12"}
GIB, MIB = 1 << 30, 1 << 20


def test_mig_instances_are_measured_and_followed_through_a_reconfiguration(tmp_path: Path) -> None:
    layouts: list[set[str]] = []
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "0.9").write_text("4242 alice\n")  # the idle 1g instance's job, as dcgm-exporter's files name it
    config = tmp_path / "gpumon.yaml"
    config.write_text(f'attribution: {{jobs: {{mapping_dir: "{jobs}"}}}}\n')
    with Gpumon(tmp_path, "--fast-interval", "250ms", "--config", str(config),
                backend=f"replay:{MIG},loop,speed={SPEED}") as g:
        scrape = f"""
global: {{scrape_interval: 500ms, scrape_timeout: 500ms}}
scrape_configs:
  - job_name: gpumon
    static_configs: [{{targets: ["127.0.0.1:{g.port}"]}}]
"""
        with Prometheus(tmp_path, scrape) as prom:
            start = time.time()
            deadline = start + 14.0
            while time.time() < deadline:
                status, body = g.get("/metrics")
                assert status == 200
                families = {f.name: f for f in text_string_to_metric_families(body.decode())}
                assert [s.value for s in families["gpumon_gpu_up"].samples] == [1.0]
                sm = families.get("gpumon_mig_sm_active_ratio")
                if sm is not None:
                    layouts.append({s.labels["gpu_instance"] for s in sm.samples})
                    if layouts[-1] == BEFORE:
                        checked = families
                time.sleep(0.2)
            end = time.time()
            results = {(panel["title"], t["refId"]): query(prom, substitute(t["expr"]), start, end)
                       for panel, t in targets(load(ROOT / "grafana" / "dashboards" / "gpumon-gpu-detail.json"))
                       if panel["title"] in MIG_PANELS}
        log = g.log

    assert BEFORE in layouts and AFTER in layouts, layouts  # both layouts, in one run, no restart
    # Never a mix: a destroyed instance's series go as it goes (new ones need two GPM samples to appear).
    assert [x for x in layouts if x & {"3"} and x & {"11", "12"}] == [], layouts
    # Each GPU instance once, with its profile; the 2g.35gb instance's two compute instances share its memory.
    used = {s.labels["gpu_instance"]: (s.labels["mig_profile"], s.value)
            for s in checked["gpumon_mig_memory_used_bytes"].samples}
    assert used == {"2": ("3g.71gb", 60 * GIB), "3": ("2g.35gb", 20 * GIB), "9": ("1g.18gb", 10 * GIB),
                    "10": ("1g.18gb", 17000 * MIB)}
    info = checked["gpumon_mig_instance_info"].samples
    assert sorted((s.labels["gpu_instance"], s.labels["compute_instance"], s.labels["compute_profile"])
                  for s in info) == [
        ("10", "0", "1g.18gb"), ("2", "0", "3g.71gb"), ("3", "0", "1c.2g.35gb"), ("3", "1", "1c.2g.35gb"),
        ("9", "0", "1g.18gb")]
    assert all(s.labels["mig_uuid"].startswith("MIG-") and s.labels["placement"] for s in info)
    owner = [(s.labels["gpu_instance"], s.labels["job_id"]) for s in checked["gpumon_gpu_job_info"].samples]
    assert owner == [("9", "4242")]
    sm = {s.labels["gpu_instance"]: s.value for s in checked["gpumon_mig_sm_active_ratio"].samples}
    assert sm["2"] > 0.85 and sm["9"] < 0.01  # the busy 3g and the idle 1g
    # util.gpu is refused under MIG: no series, not a zero.
    assert "gpumon_gpu_utilization_ratio" not in checked
    assert "Traceback" not in log and "MIG instances changed" in log
    check = subprocess.run([need("promtool"), "check", "metrics"], input=body, capture_output=True)
    assert check.returncode == 0 and check.stdout == b"" and check.stderr == b"", check.stdout + check.stderr
    empty = sorted(key for key, result in results.items() if not result)
    assert not empty, f"MIG panels without data: {empty}"
    assert set(results) == {(title, ref) for title, refs in MIG_PANELS.items() for ref in refs}
