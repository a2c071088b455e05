"""A real Prometheus scrapes gpumon replaying the H200 capture: PromQL shows what the capture shows,
and the same rule file, evaluated by Prometheus and by gpumon, fires the same alerts."""

from __future__ import annotations

import json
import statistics
import time
import urllib.parse
from pathlib import Path

import pytest

from tests.support.processes import Gpumon, Prometheus, http_get

pytestmark = pytest.mark.integration

SPEED = 4.0  # the 42 s capture plays in 10.5 s
INTERVAL = "200ms"
RULES = """
groups:
  - name: live
    interval: 200ms
    rules:
      - alert: PcieCopiesNotCompute
        expr: gpumon_gpu_utilization_ratio > 0.9 and gpumon_sm_active_ratio < 0.2
      - alert: MemoryFull
        expr: gpumon_memory_used_bytes / gpumon_memory_total_bytes > 0.9
        for: 400ms
      - alert: TensorBusy
        expr: gpumon_tensor_active_ratio > 0.8
      - alert: NeverOnThisCapture
        expr: gpumon_gpu_up == 0 or gpumon_memory_used_bytes > gpumon_memory_total_bytes
"""


def query_range(prom: Prometheus, expr: str, start: float, end: float) -> list[float]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": 0.2})
    status, body = http_get(f"{prom.url}/api/v1/query_range?{params}")
    assert status == 200, body
    result = json.loads(body)["data"]["result"]
    return [float(v) for series in result for _, v in series["values"]]


def in_phase(metric: str, phase: str) -> str:
    return f'{metric} and on(gpu) gpumon_replay_phase{{phase="{phase}"}}'


def fired(prom: Prometheus, series: str) -> set[str]:
    expr = f'count by (alertname) (count_over_time({series}{{alertstate="firing"}}[5m]))'
    status, body = http_get(f"{prom.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert status == 200, body
    return {r["metric"]["alertname"] for r in json.loads(body)["data"]["result"]}


def test_prometheus_sees_the_recorded_phases(tmp_path: Path) -> None:
    rules = tmp_path / "live.rules.yml"
    rules.write_text(RULES)
    with Gpumon(tmp_path, "--fast-interval", INTERVAL, "--rules", str(rules),
                backend=f"replay:demo,loop,speed={SPEED}") as g:
        config = f"""
global: {{scrape_interval: {INTERVAL}, scrape_timeout: {INTERVAL}, evaluation_interval: {INTERVAL}}}
rule_files: ["{rules}"]
scrape_configs:
  - job_name: gpumon
    static_configs: [{{targets: ["127.0.0.1:{g.port}"]}}]
"""
        with Prometheus(tmp_path, config) as prom:
            start = time.time()
            time.sleep(1.6 * 42 / SPEED)  # every phase at least once, whatever the start offset
            end = time.time()
            util = query_range(prom, in_phase("gpumon_gpu_utilization_ratio", "pcie"), start, end)
            sm = query_range(prom, in_phase("gpumon_sm_active_ratio", "pcie"), start, end)
            mem = query_range(prom, in_phase("gpumon_memory_used_bytes / gpumon_memory_total_bytes", "memfull"),
                              start, end)
            tensor = query_range(prom, in_phase("gpumon_tensor_active_ratio", "compute"), start, end)
            up = query_range(prom, 'up{job="gpumon"}', start, end)
            by_prometheus = fired(prom, "ALERTS")
            by_gpumon = fired(prom, "gpumon_alerts")  # gpumon's own alerts, scraped from its /metrics
    assert up and min(up) == 1.0
    assert len(util) >= 3 and len(sm) >= 3 and len(mem) >= 3 and len(tensor) >= 3
    # util.gpu says "busy" during pure PCIe copies while the SMs are idle.
    assert statistics.median(util) == pytest.approx(0.99, abs=0.02)
    assert statistics.median(sm) < 0.05
    assert statistics.median(mem) > 0.9
    assert statistics.median(tensor) > 0.8
    # One rule file, two evaluators, the same alerts.
    assert by_prometheus == by_gpumon == {"PcieCopiesNotCompute", "MemoryFull", "TensorBusy"}
