"""Every query of every Grafana dashboard, sent to a real Prometheus scraping gpumon replaying the H200
capture: each one is valid PromQL to Prometheus and returns data, except those listed below with the
reason the capture cannot give them data. The capture is the synthetic shared-GPU one (the recorded
H200 with processes, tests/fixtures/procs) on two GPUs, with a kubelet, /proc and a job mapping, so
that the owner panels have data too. Queries are range queries over one whole loop of the capture,
as Grafana asks for a panel's time range."""

from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.procs.generate import OUT_DIR as PROCS
from tests.support.attribution import attributed_host
from tests.support.dashboards import (
    DASHBOARDS,
    label_values_selector,
    load,
    substitute,
    targets,
)
from tests.support.processes import Gpumon, Prometheus, http_get

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
INTERVAL = "500ms"
SPEED = 4.0
SETTLE = 1.1 * 42 / SPEED  # one whole loop of the 42 s capture: every recorded phase, whatever the start offset

# GPU detail's MIG panels (title -> refIds).
MIG_PANELS = {"MIG mode": "A", "Instances": "A", "SM activity by GPU instance (GPM)": "A",
              "Memory used by GPU instance": "A", "Occupancy, tensor, DRAM and engine by GPU instance (GPM)": "ABCD",
              "Compute processes by GPU instance": "A", "Memory used by GPU instance (bytes)": "A",
              "Memory of each GPU instance": "A"}

# (dashboard, panel title, refId) -> why the bundled capture gives it no series. Nothing else may be empty.
MAY_BE_EMPTY: dict[tuple[str, str, str], str] = {
    ("gpumon-fleet.json", "Idle but allocated GPUs", "A"):
        "its 10-minute average mixes busy and idle phases of the short run; checked with a 1 s window below",
    ("gpumon-fleet.json", "Alerts firing (gpumon local rules)", "A"):
        "the bundled rules need minutes of a condition (`for: 5m`); the test runs seconds",
    ("gpumon-fleet.json", "Alerts firing (gpumon local rules)", "B"): "as above, and pending alerts count too",
    ("gpumon-fleet.json", "Alerts firing (Prometheus ALERTS)", "A"): "as above, for Prometheus evaluating them",
    ("gpumon-gpu-detail.json", "XID errors", "A"): "the capture recorded no XID errors",
    ("gpumon-fleet.json", "Doctor checks not ok", "A"): "every doctor check of the healthy capture is ok",
    ("gpumon-fleet.json", "Doctor checks not ok", "B"): "replayed GPUs are not this host's: no PCI bus check",
    ("gpumon-gpu-detail.json", "Last XID", "A"): "the capture recorded no XID errors",
    **{("gpumon-gpu-detail.json", "NVSwitch fabric", ref): "the capture's H200 is not on an NVSwitch fabric"
       for ref in "ABCDEF"},
    ("gpumon-interconnect.json", "PCIe links below their maximum", "A"): "the capture's link runs at gen 5 x16",
    ("gpumon-interconnect.json", "PCIe links below their maximum", "B"): "the capture's link runs at gen 5 x16",
    ("gpumon-health.json", "NVML errors by call", "A"): "no NVML call fails while replaying the capture",
    ("gpumon-health.json", "Kubelet errors", "A"): "the test's kubelet answers every refresh",
    **{("gpumon-interconnect.json", title, ref): "the test host has no RDMA NIC and runs no NCCL job"
       for title, refs in {"RDMA receive, per port": "A", "RDMA transmit, per port": "A", "Link errors": "ABCDE",
                           "Other port errors": "ABCDEFG", "Congestion": "ABC", "Unicast and multicast packets": "ABCD",
                           "Saturated counters": "A", "Ports": "ABCDEFG", "Link rate": "A",
                           "GPU to NIC (PCIe distance)": "A", "RAS answering": "A", "Ranks": "A",
                           "Collective stall": "A", "Lost ranks": "A", "Collectives per second": "A",
                           "Job health": "ABCDEFGH", "RAS query time": "A"}.items() for ref in refs},
    **{(board, title, ref): "the H200 capture was recorded in a VM without NVLink peers"
       for board in ("gpumon-gpu-detail.json", "gpumon-interconnect.json")
       for title, refs in {"NVLink receive, per link": "A", "NVLink transmit, per link": "A",
                           "NVLink utilisation, per link": "A", "NVLink throughput, per GPU": "AB",
                           "NVLink errors": "A", "NVLink links up": "A", "NVLink link speed": "A"}.items()
       for ref in refs},
    **{("gpumon-gpu-detail.json", title, ref): "MIG is off in this capture: tests/integration/test_mig_daemon.py "
       "runs these on the MIG capture"
       for title, refs in MIG_PANELS.items() for ref in refs},
    **{("gpumon-health.json", title, ref): "notification series are per receiver or Alertmanager; none is configured"
       for title, refs in [("Outbox queue", "A"), ("Oldest queued notification", "A"), ("Delivery latency", "A"),
                           ("Delivery outcomes", "ABCD"), ("Alertmanager pushes", "AB")] for ref in refs},
}

# Queries with data from Prometheus but none from gpumon's own query API (docs/query-api.md), and why.
NOT_FROM_GPUMON: dict[tuple[str, str, str], str] = {
    **{key: "a slow-tier counter (every 30 s) has one point per slow poll in gpumon's history, where Prometheus "
            "has one per scrape: this short run's $__rate_interval (1m) holds one point, too few for rate()"
       for key in [("gpumon-gpu-detail.json", "ECC errors", "A"), ("gpumon-gpu-detail.json", "ECC errors", "B"),
                   ("gpumon-gpu-detail.json", "PCIe replays", "A"), ("gpumon-interconnect.json", "PCIe replays", "A"),
                   ("gpumon-gpu-detail.json", "Power", "E"),
                   ("gpumon-gpu-detail.json", "Time throttled, by reason", "A")]},
    **{key: "process_* and scrape_duration_seconds are the process collector's and Prometheus's own series, "
            "not in gpumon's history"
       for key in [("gpumon-health.json", "CPU", "A"), ("gpumon-health.json", "Resident memory", "A"),
                   ("gpumon-health.json", "Scrape duration", "A")]},
}

# The panels a dashboard is for: these must return data whatever else changes.
CORE = [
    ("gpumon-fleet.json", "SM activity by GPU"),
    ("gpumon-fleet.json", "Memory used"),
    ("gpumon-fleet.json", "Power draw"),
    ("gpumon-fleet.json", "GPU temperature"),
    ("gpumon-health.json", "Poll duration per tier"),
]


def query(server: Prometheus | Gpumon, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    """The series a range query returns over [start, end], as Grafana asks for a panel's time range (from
    Prometheus, or from gpumon's own query API)."""
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": 0.25})
    status, body = http_get(f"{server.url}/api/v1/query_range?{params}", timeout=10.0)
    answer: dict[str, Any] = json.loads(body)
    assert status == 200 and answer["status"] == "success", f"{expr!r}: {status} {body!r}"
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def config_file(tmp: Path, attribution: str) -> Path:
    """Who is on each GPU, so that the owner panels have data: a kubelet, /proc, a job mapping."""
    path = tmp / "gpumon.yaml"
    path.write_text(attribution)
    return path


def fleet_idle_query() -> str:
    fleet = load(ROOT / "grafana" / "dashboards" / "gpumon-fleet.json")
    (panel,) = [p for p in fleet["panels"] if p["title"] == "Idle but allocated GPUs"]
    expr: str = panel["targets"][0]["expr"]
    assert "[10m]" in expr
    return substitute(expr)


def test_every_dashboard_query_returns_data_from_a_real_prometheus(tmp_path: Path) -> None:
    rules = ROOT / "rules" / "gpumon.rules.yml"
    with attributed_host(tmp_path) as attribution, Gpumon(
            tmp_path, "--fast-interval", INTERVAL, "--process-pids",
            "--config", str(config_file(tmp_path, attribution)),
            backend=f"replay:{PROCS},loop,gpus=2,speed={SPEED}") as g:
        config = f"""
global: {{scrape_interval: {INTERVAL}, scrape_timeout: {INTERVAL}, evaluation_interval: 1s}}
rule_files: ["{rules}"]
scrape_configs:
  - job_name: gpumon
    static_configs: [{{targets: ["127.0.0.1:{g.port}"]}}]
  - job_name: prometheus
    static_configs: [{{targets: ["127.0.0.1:PROMETHEUS_PORT"]}}]
"""
        prom = Prometheus(tmp_path, config)
        # Prometheus scrapes itself too, so the `process_*` queries must pick gpumon's series out.
        (prom.dir / "prometheus.yml").write_text(config.replace("PROMETHEUS_PORT", str(prom.port)))
        with prom:
            start = time.time()
            time.sleep(SETTLE)
            end = time.time()
            results: dict[tuple[str, str, str], list[Any]] = {}
            for path in DASHBOARDS:
                dash = load(path)
                for v in dash["templating"]["list"]:
                    if v["type"] == "query":
                        selector = substitute(label_values_selector(v["query"]["query"]))
                        assert query(prom, selector, start, end), f"{path.name}: ${v['name']} has no values"
                for panel, t in targets(dash):
                    key = (path.name, panel["title"], t["refId"])
                    results[key] = query(prom, substitute(t["expr"]), start, end)
            # The same queries against gpumon's own query API, as a Grafana using one gpumon as its data
            # source would send them: every one answers, and those without data there are listed.
            ours = {key: query(g, substitute(t["expr"]), start, end) for path in DASHBOARDS
                    for panel, t in targets(load(path)) if (key := (path.name, panel["title"], t["refId"]))}
            # The idle-but-allocated query over a 1 s window instead of 10 minutes: it must catch the
            # capture's phases in which a process holds the GPU and the SMs idle (pure PCIe copies, memory
            # filled), and only those.
            idle = fleet_idle_query().replace("[10m]", "[1s]")
            idle_phases = {s["metric"]["phase"] for s in query(
                prom, f'gpumon_replay_phase == 1 and on(instance, gpu) ({idle})', start, end)}

    assert set(MAY_BE_EMPTY) <= set(results), f"stale entries: {set(MAY_BE_EMPTY) - set(results)}"
    only_in_prometheus = sorted(k for k in results if results[k] and not ours[k])
    assert only_in_prometheus == sorted(NOT_FROM_GPUMON), "\n".join(map(str, only_in_prometheus))
    empty = sorted(key for key, result in results.items() if not result and key not in MAY_BE_EMPTY)
    assert not empty, f"queries without data: {empty}"
    for dashboard, title in CORE:
        keys = [k for k in results if k[:2] == (dashboard, title)]
        assert keys and all(results[k] for k in keys), (dashboard, title)
    # SM activity comes from GPM on the H200, labelled as such (not the util.gpu fallback).
    sm = results[("gpumon-fleet.json", "SM activity by GPU", "A")]
    assert {s["metric"]["source"] for s in sm} == {"SM active (GPM)"}
    assert {"pcie", "memfull"} <= idle_phases, idle_phases
    assert not idle_phases & {"compute", "membw"}, idle_phases
    # process_* series of the Prometheus job are filtered out: one series, gpumon's.
    rss = results[("gpumon-health.json", "Resident memory", "A")]
    assert [s["metric"]["job"] for s in rss] == ["gpumon"]
