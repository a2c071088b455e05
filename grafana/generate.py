"""Generate gpumon's Grafana dashboards (grafana/dashboards/*.json) from one place.

Run `python grafana/generate.py` after editing; `tests/test_grafana.py` fails when the committed JSON
differs from what this script writes. Plain dictionaries in Grafana's dashboard JSON model (schema
39), so the script needs nothing beyond the standard library.

Conventions every dashboard keeps (and the tests check):
- the datasource is the `datasource` variable (type prometheus); no datasource UID is written down;
- `instance` and `gpu` variables come from `label_values` queries; every per-GPU query filters on both;
- every panel has a unit; ratios are `percentunit`, bytes `bytes`, rates `Bps`, and so on;
- only raw gpumon metrics (docs/metrics.md), Prometheus's own series (`ALERTS`, `up`, `scrape_*`) and
  the client library's `process_*` metrics; no recording rules, so a dashboard works on any Prometheus.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"
SCHEMA_VERSION = 39
DS = {"type": "prometheus", "uid": "${datasource}"}

Panel = dict[str, Any]

# Selectors: every per-GPU query is filtered by both variables, host-level ones by instance.
GPU = 'instance=~"$instance",gpu=~"$gpu"'
HOST = 'instance=~"$instance"'


def g(metric: str, extra: str = "") -> str:
    """A per-GPU selector filtered by the instance and gpu variables."""
    return f"{metric}{{{GPU}{',' + extra if extra else ''}}}"


def h(metric: str, extra: str = "") -> str:
    """A host-level selector filtered by the instance variable."""
    return f"{metric}{{{HOST}{',' + extra if extra else ''}}}"


# process_* and scrape_* come from every job; keep those of gpumon's targets only.
ONLY_GPUMON = "and on(instance, job) " + h("gpumon_build_info")


def target(expr: str, legend: str = "", *, instant: bool = False, table: bool = False) -> dict[str, Any]:
    t: dict[str, Any] = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto",
                         "range": not instant, "instant": instant, "editorMode": "code"}
    if table:
        t["format"] = "table"
    return t


def _panel(kind: str, title: str, targets: list[dict[str, Any]], unit: str, description: str,
           options: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None,
           overrides: list[dict[str, Any]] | None = None) -> Panel:
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i)
    return {
        "type": kind, "title": title, "description": description, "datasource": DS, "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit, **(defaults or {})}, "overrides": overrides or []},
        "options": options or {},
    }


def timeseries(title: str, targets: list[dict[str, Any]], unit: str, description: str = "", *,
               max_: float | None = None, stack: bool = False, bars: bool = False) -> Panel:
    custom: dict[str, Any] = {"drawStyle": "bars" if bars else "line", "lineWidth": 1, "fillOpacity": 10,
                              "showPoints": "never", "spanNulls": False}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    defaults: dict[str, Any] = {"custom": custom, "min": 0}
    if max_ is not None:
        defaults["max"] = max_
    return _panel("timeseries", title, targets, unit, description,
                  {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                   "tooltip": {"mode": "multi", "sort": "desc"}}, defaults)


def stat(title: str, targets: list[dict[str, Any]], unit: str, description: str = "", *,
         thresholds: list[tuple[float | None, str]] | None = None,
         mappings: list[dict[str, Any]] | None = None) -> Panel:
    steps = [{"value": v, "color": c} for v, c in (thresholds or [(None, "green")])]
    return _panel("stat", title, targets, unit, description,
                  {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "colorMode": "background", "graphMode": "none", "textMode": "auto"},
                  {"thresholds": {"mode": "absolute", "steps": steps}, "mappings": mappings or []})


def table(title: str, targets: list[dict[str, Any]], unit: str, description: str = "",
          links: list[dict[str, str]] | None = None) -> Panel:
    for t in targets:
        t.update(instant=True, range=False, format="table")
    p = _panel("table", title, targets, unit, description, {"showHeader": True, "cellHeight": "sm"},
               {"links": links or []})
    p["transformations"] = [{"id": "merge", "options": {}},
                            {"id": "organize", "options": {"excludeByName": {"Time": True, "__name__": True}}}]
    return p


def heatmap(title: str, targets: list[dict[str, Any]], unit: str, description: str) -> Panel:
    """One row per series (GPU), colour = value: the heatmap's 'rows from series' mode."""
    return _panel("heatmap", title, targets, unit, description,
                  {"calculate": False, "cellGap": 1, "rowsFrame": {"layout": "auto"},
                   "yAxis": {"axisPlacement": "left", "reverse": False},
                   "color": {"mode": "scheme", "scheme": "RdYlGn", "steps": 64, "fill": "dark-orange",
                             "scale": "linear", "exponent": 0.5, "min": 0, "max": 1, "reverse": False},
                   "cellValues": {"unit": unit}, "legend": {"show": True},
                   "tooltip": {"mode": "single", "yHistogram": False, "showColorScale": True},
                   "exemplars": {"color": "rgba(255,0,255,0.7)"}},
                  {"min": 0, "max": 1})


def state_timeline(title: str, targets: list[dict[str, Any]], description: str) -> Panel:
    mappings = [{"type": "value", "options": {"0": {"text": "off", "color": "transparent", "index": 0},
                                              "1": {"text": "active", "color": "orange", "index": 1}}}]
    return _panel("state-timeline", title, targets, "none", description,
                  {"showValue": "never", "mergeValues": True, "alignValue": "left", "rowHeight": 0.8,
                   "legend": {"showLegend": False}},
                  {"mappings": mappings, "color": {"mode": "thresholds"},
                   "thresholds": {"mode": "absolute", "steps": [{"value": None, "color": "transparent"},
                                                                {"value": 1, "color": "orange"}]}})


def text(title: str, content: str) -> Panel:
    return {"type": "text", "title": title, "options": {"mode": "markdown", "content": content}}


class Board:
    """Lays panels out left to right, wrapping at Grafana's 24 columns, and numbers them."""

    def __init__(self) -> None:
        self.panels: list[Panel] = []
        self.x = self.y = self.row_h = 0

    def row(self, title: str) -> None:
        self._newline()
        self._place({"type": "row", "title": title, "collapsed": False, "panels": []}, 24, 1)
        self._newline()

    def add(self, panel: Panel, w: int = 12, h: int = 8) -> None:
        if self.x + w > 24:
            self._newline()
        self._place(panel, w, h)

    def _place(self, panel: Panel, w: int, h: int) -> None:
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_h
        self.x = self.row_h = 0


def variables(*, multi: bool) -> list[dict[str, Any]]:
    def query_var(name: str, label: str, query: str) -> dict[str, Any]:
        v: dict[str, Any] = {
            "type": "query", "name": name, "label": label, "datasource": DS,
            "definition": query, "query": {"query": query, "refId": f"{name}-variable"},
            "refresh": 2, "sort": 3, "multi": multi, "includeAll": multi,
            "current": {}, "options": [], "hide": 0,
        }
        if multi:
            v["allValue"] = ".*"
        return v

    return [
        {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus",
         "refresh": 1, "regex": "", "current": {}, "options": [], "hide": 0},
        query_var("instance", "Host", "label_values(gpumon_build_info, instance)"),
        query_var("gpu", "GPU", 'label_values(gpumon_gpu_info{instance=~"$instance"}, gpu)'),
    ]


def dashboard(uid: str, title: str, description: str, board: Board, *, multi: bool = True,
              refresh: str = "30s") -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "description": description, "tags": ["gpumon"],
        "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": True, "graphTooltip": 1,
        "time": {"from": "now-1h", "to": "now"}, "refresh": refresh, "timezone": "browser",
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
            "type": "dashboard"}]},
        "links": [{"type": "dashboards", "tags": ["gpumon"], "asDropdown": True, "title": "gpumon",
                   "includeVars": True, "keepTime": True}],
        "templating": {"list": variables(multi=multi)},
        "panels": board.panels,
    }


DETAIL_LINK = [{"title": "GPU detail", "url": "/d/gpumon-gpu-detail/gpumon-gpu-detail?var-datasource=${datasource}"
                "&var-instance=${__data.fields.instance}&var-gpu=${__data.fields.gpu}&${__url_time_range}"}]

# SM activity with the fallback for GPUs without GPM, each series labelled with what it measures.
SM_OR_UTIL = (
    f'label_replace({g("gpumon_sm_active_ratio")}, "source", "SM active (GPM)", "", "")'
    f' or label_replace({g("gpumon_gpu_utilization_ratio")} unless on(instance, gpu) {g("gpumon_sm_active_ratio")},'
    ' "source", "util.gpu fallback (not SM activity)", "", "")'
)


def fleet() -> dict[str, Any]:
    b = Board()
    b.add(stat("GPUs up", [target(f'count({g("gpumon_gpu_up")} == 1) or vector(0)', instant=True)], "none",
               "GPUs that answered their last poll."), 4, 4)
    b.add(stat("GPUs lost", [target(f'count({g("gpumon_gpu_up")} == 0) or vector(0)', instant=True)], "none",
               "GPUs gpumon could not read at its last poll (GpuIsLost and friends); gpumon re-initialises them.",
               thresholds=[(None, "green"), (1, "red")]), 4, 4)
    b.add(stat("Hosts", [target(f'count({h("gpumon_build_info")}) or vector(0)', instant=True)], "none",
               "gpumon instances scraped."), 4, 4)
    b.add(stat("Hosts replaying DEMO DATA",
               [target('count(' + h("gpumon_build_info", 'backend="replay"') + ') or vector(0)', instant=True)],
               "none", "gpumon instances replaying a recorded capture instead of reading GPUs: their numbers are "
               "not real.", thresholds=[(None, "green"), (1, "orange")]), 4, 4)
    b.add(stat("Alerts firing (gpumon)",
               [target('count(' + h("gpumon_alerts", 'alertstate="firing"') + ') or vector(0)', instant=True)],
               "none", "Alerts firing in gpumon's local rule evaluation.",
               thresholds=[(None, "green"), (1, "red")]), 4, 4)
    b.add(stat("GPUs without GPM",
               [target('count(' + g("gpumon_gpu_info", 'sm_activity_source!="gpm"') + ') or vector(0)',
                       instant=True)],
               "none", "GPUs with no NVML GPM (before Hopper): their SM activity panels show util.gpu instead, "
               "which only means 'a kernel was running'.", thresholds=[(None, "green"), (1, "yellow")]), 4, 4)

    b.row("Activity")
    b.add(heatmap("SM activity by GPU", [target(SM_OR_UTIL, "{{instance}} GPU {{gpu}} · {{source}}")],
                  "percentunit",
                  "One row per GPU. SM activity from NVML GPM (Hopper and later). GPUs without GPM fall back to "
                  "util.gpu, labelled 'util.gpu fallback': it reads ~100 % whenever any kernel or copy runs, so it "
                  "overstates real SM activity."), 24, 10)
    b.add(timeseries("Memory used", [target(f'{g("gpumon_memory_used_bytes")} / {g("gpumon_memory_total_bytes")}',
                                            "{{instance}} GPU {{gpu}}")],
                     "percentunit", "Device memory in use as a fraction of installed memory.", max_=1))
    b.add(timeseries("Power draw", [target(g("gpumon_power_draw_watts"), "{{instance}} GPU {{gpu}}")], "watt",
                     "Power draw, averaged by the driver over about a second."))
    b.add(timeseries("GPU temperature", [target(g("gpumon_gpu_temperature_celsius"), "{{instance}} GPU {{gpu}}")],
                     "celsius", "GPU die temperature."))
    b.add(timeseries("Power draw / limit",
                     [target(f'{g("gpumon_power_draw_watts")} / {g("gpumon_power_limit_watts")}',
                             "{{instance}} GPU {{gpu}}")],
                     "percentunit", "Power draw as a fraction of the enforced limit; near 1 the GPU is power "
                     "capped.", max_=1))

    b.row("Allocation and alerts")
    idle = (f'(avg_over_time({g("gpumon_sm_active_ratio")}[10m])'
            f' or avg_over_time({g("gpumon_gpu_utilization_ratio")}[10m])) < 0.1'
            f' and on(instance, gpu) {g("gpumon_compute_processes")} > 0')
    b.add(table("Idle but allocated GPUs", [target(idle)], "percentunit",
                "GPUs that compute processes hold while their SM activity (util.gpu where there is no GPM) "
                "averaged under 10 % over the last 10 minutes.", links=DETAIL_LINK), 12, 8)
    b.add(table("Compute processes per GPU", [target(g("gpumon_compute_processes"))], "none",
                "Compute processes on each GPU now.", links=DETAIL_LINK), 12, 8)
    b.add(table("Alerts firing (gpumon local rules)",
                [target(h("gpumon_alerts", 'alertstate="firing"')),
                 target(f'time() - {h("gpumon_alerts_active_since_timestamp_seconds")}')],
                "s", "gpumon_alerts: the alerts gpumon evaluates on the host. Value B is how long each alert has "
                "been active."), 12, 8)
    b.add(table("Alerts firing (Prometheus ALERTS)", [target('ALERTS{alertstate="firing",instance=~"$instance"}')],
                "none", "ALERTS: the same rules evaluated centrally by Prometheus, if it loads them "
                "(deploy/prometheus)."), 12, 8)
    return dashboard("gpumon-fleet", "gpumon / Fleet",
                     "Every GPU of every host: activity, memory, power, heat, allocation and alerts.", b)


def gpu_detail() -> dict[str, Any]:
    b = Board()
    b.add(table("Identity", [target(g("gpumon_gpu_info"))], "none", "gpumon_gpu_info: name, bus id, driver, GPM."),
          16, 4)
    b.add(stat("Up", [target(g("gpumon_gpu_up"), instant=True)], "none", "1 when the GPU answered its last poll.",
               thresholds=[(None, "red"), (1, "green")],
               mappings=[{"type": "value", "options": {"0": {"text": "LOST"}, "1": {"text": "UP"}}}]), 4, 4)
    b.add(stat("Replay phase (demo data only)", [target(g("gpumon_replay_phase") + " == 1", "{{phase}}",
                                                        instant=True)],
               "none", "Only when gpumon replays a capture: the recorded load phase.",
               thresholds=[(None, "orange")]), 4, 4)

    b.row("Activity")
    b.add(timeseries("SM activity (GPM)", [target(g("gpumon_sm_active_ratio"), "SM active"),
                                           target(g("gpumon_sm_occupancy_ratio"), "SM occupancy"),
                                           target(g("gpumon_tensor_active_ratio"), "tensor active"),
                                           target(g("gpumon_dram_active_ratio"), "DRAM bandwidth"),
                                           target(g("gpumon_graphics_engine_active_ratio"), "graphics engine")],
                     "percentunit", "Real SM activity from NVML GPM (Hopper and later). Empty on older GPUs.",
                     max_=1))
    b.add(timeseries("Pipe activity (GPM)", [target(g("gpumon_fp64_active_ratio"), "FP64"),
                                             target(g("gpumon_fp32_active_ratio"), "FP32"),
                                             target(g("gpumon_fp16_active_ratio"), "FP16")],
                     "percentunit", "Fraction of cycles each pipe was active.", max_=1))
    b.add(timeseries("util.gpu and util.memory (NVML)",
                     [target(g("gpumon_gpu_utilization_ratio"), "util.gpu (a kernel was running; not SM activity)"),
                      target(g("gpumon_memory_utilization_ratio"), "util.memory")],
                     "percentunit", "NVML utilisation: util.gpu reads ~100 % during pure PCIe copies with idle SMs.",
                     max_=1))
    b.add(timeseries("Compute processes", [target(g("gpumon_compute_processes"), "processes")], "none",
                     "Compute processes running on the GPU."))

    b.row("Memory")
    b.add(timeseries("Device memory", [target(g("gpumon_memory_used_bytes"), "used"),
                                       target(g("gpumon_memory_free_bytes"), "free"),
                                       target(g("gpumon_memory_reserved_bytes"), "reserved"),
                                       target(g("gpumon_memory_total_bytes"), "total"),
                                       target(g("gpumon_compute_processes_memory_bytes"), "compute processes")],
                     "bytes", "Used, free, reserved and installed device memory."))
    b.add(timeseries("Memory by process (opt-in)", [target(g("gpumon_process_memory_bytes"), "pid {{pid}}")],
                     "bytes", "Per-process device memory; empty unless gpumon runs with metrics.process_pids.",
                     stack=True))

    b.row("Thermal and power")
    b.add(timeseries("Temperature", [target(g("gpumon_gpu_temperature_celsius"), "GPU"),
                                     target(g("gpumon_memory_temperature_celsius"), "HBM"),
                                     target(g("gpumon_temperature_threshold_celsius"), "threshold {{threshold}}")],
                     "celsius", "Die and memory temperature against the GPU's slowdown and shutdown thresholds."))
    b.add(timeseries("Power", [target(g("gpumon_power_draw_watts"), "draw"),
                               target(g("gpumon_power_limit_watts"), "enforced limit"),
                               target(g("gpumon_power_limit_min_watts"), "min settable limit"),
                               target(g("gpumon_power_limit_max_watts"), "max settable limit"),
                               target(f'rate({g("gpumon_energy_joules_total")}[$__rate_interval])',
                                      "from energy counter")],
                     "watt", "Power draw and limits; the energy counter's rate is the average over the interval."))
    b.add(stat("Energy since driver load", [target(g("gpumon_energy_joules_total"), instant=True)], "joule",
               "Energy counter (slow tier)."), 6, 4)
    b.add(stat("Performance state", [target(g("gpumon_performance_state"), instant=True)], "none",
               "P-state: 0 is fastest, 15 slowest.", thresholds=[(None, "green"), (1, "yellow")]), 6, 4)

    b.row("Clocks")
    b.add(timeseries("Clocks", [target(g("gpumon_sm_clock_hertz"), "SM"),
                                target(g("gpumon_sm_clock_max_hertz"), "SM max"),
                                target(g("gpumon_memory_clock_hertz"), "memory"),
                                target(g("gpumon_memory_clock_max_hertz"), "memory max")],
                     "hertz", "Current clocks against their maxima."))
    b.add(state_timeline("Clock event reasons", [target(g("gpumon_clock_event_reason_active"), "{{reason}}")],
                         "What holds the clocks down, over time (gpu_idle is harmless; power and thermal are not)."))
    b.add(timeseries("Time throttled, by reason",
                     [target(f'rate({g("gpumon_clock_throttle_seconds_total")}[$__rate_interval])', "{{reason}}")],
                     "percentunit", "Fraction of time the clocks were held below the requested value (NVML "
                     "violation counters, slow tier: steps every 30 s).", max_=1), 24, 8)

    b.row("PCIe")
    b.add(timeseries("PCIe throughput", [target(g("gpumon_pcie_rx_bytes_per_second"), "rx"),
                                         target(g("gpumon_pcie_tx_bytes_per_second"), "tx")],
                     "Bps", "PCIe bytes per second from GPM (no 20 ms nvmlDeviceGetPcieThroughput stall)."))
    b.add(timeseries("PCIe link vs maximum", [target(g("gpumon_pcie_link_generation"), "generation"),
                                              target(g("gpumon_pcie_link_max_generation"), "max generation"),
                                              target(g("gpumon_pcie_link_width"), "width (lanes)"),
                                              target(g("gpumon_pcie_link_max_width"), "max width (lanes)")],
                     "none", "A link below its maximum generation or width (outside idle power saving) is degraded."))
    b.add(timeseries("PCIe replays", [target(f'increase({g("gpumon_pcie_replays_total")}[$__rate_interval])',
                                             "replays")],
                     "none", "Link-level retransmissions per interval.", bars=True))

    b.row("Errors")
    b.add(timeseries("ECC errors", [
        target(f'increase({g("gpumon_ecc_volatile_errors_total")}[$__rate_interval])', "volatile {{severity}}"),
        target(f'increase({g("gpumon_ecc_aggregate_errors_total")}[$__rate_interval])', "aggregate {{severity}}")],
        "none", "New ECC errors per interval, by severity.", bars=True))
    b.add(timeseries("XID errors", [target(f'increase({g("gpumon_xid_errors_total")}[$__rate_interval])',
                                           "XID {{xid}}")],
                     "none", "XID errors reported by the driver per interval, by code. Empty when there were none.",
                     bars=True))
    b.add(stat("Last XID", [target(f'{g("gpumon_last_xid_timestamp_seconds")} * 1000', instant=True)],
               "dateTimeFromNow", "When the driver last reported an XID for this GPU (empty: never).",
               thresholds=[(None, "red")]), 6, 4)
    b.add(stat("ECC errors (lifetime)", [target(g("gpumon_ecc_aggregate_errors_total"), "{{severity}}",
                                                instant=True)],
               "none", "Aggregate ECC errors over the GPU's life.", thresholds=[(None, "green"), (1, "yellow")]),
          6, 4)
    b.add(stat("Remapped rows", [target(g("gpumon_remapped_rows_total"), "{{cause}}", instant=True)], "none",
               "Memory rows remapped, by cause.", thresholds=[(None, "green"), (1, "yellow")]), 6, 4)
    b.add(stat("Row remap pending / failed", [target(g("gpumon_row_remap_pending"), "pending", instant=True),
                                              target(g("gpumon_row_remap_failed"), "failed", instant=True)],
               "none", "Pending: reset the GPU to apply. Failed: the GPU needs service.",
               thresholds=[(None, "green"), (1, "red")]), 6, 4)

    b.row("gpumon on this GPU")
    b.add(timeseries("Poll duration", [target(g("gpumon_gpu_poll_duration_seconds"), "{{tier}}")], "s",
                     "Wall time of this GPU's last poll, per tier."), 8, 8)
    b.add(timeseries("Deadline misses", [target(
        f'increase({g("gpumon_poll_deadline_exceeded_total")}[$__rate_interval])', "{{tier}}")],
        "none", "Polls of this GPU that missed the tier's deadline.", bars=True), 8, 8)
    b.add(timeseries("Unsupported metrics and re-inits", [
        target(g("gpumon_unsupported_metrics"), "unsupported metrics"),
        target(f'increase({g("gpumon_gpu_reinit_total")}[$__rate_interval])', "re-initialisations")],
        "none", "Metrics NVML does not support on this GPU (they have no series), and re-inits after a loss."),
        8, 8)
    nvlink_panels(b)
    return dashboard("gpumon-gpu-detail", "gpumon / GPU detail",
                     "One GPU: every metric gpumon reads for it.", b, multi=False, refresh="10s")


def nvlink_panels(b: Board) -> None:
    """NVLink per link; a GPU without NVLink (or a PCIe card) has no such series."""
    b.row("NVLink")
    b.add(timeseries("NVLink receive, per link", [target(g("gpumon_nvlink_rx_bytes_per_second"),
                                                        "{{instance}} GPU {{gpu}} link {{link}}")],
                     "Bps", "Bytes per second received on each active link (GPM per-link rate)."))
    b.add(timeseries("NVLink transmit, per link", [target(g("gpumon_nvlink_tx_bytes_per_second"),
                                                         "{{instance}} GPU {{gpu}} link {{link}}")],
                     "Bps", "Bytes per second sent on each active link (GPM per-link rate)."))
    b.add(timeseries("NVLink utilisation, per link", [target(g("gpumon_nvlink_utilization_ratio"),
                                                            "{{instance}} GPU {{gpu}} link {{link}} {{direction}}")],
                     "percentunit", "Each active link's rate as a fraction of its speed, per direction (GPM per-link "
                     "rate / NVLink speed). Empty without GPM or where NVML gives no link speed.", max_=1))
    rx_total = (f'{g("gpumon_nvlink_total_rx_bytes_per_second")} '
                f'or rate({g("gpumon_nvlink_rx_bytes_total")}[$__rate_interval])')
    tx_total = (f'{g("gpumon_nvlink_total_tx_bytes_per_second")} '
                f'or rate({g("gpumon_nvlink_tx_bytes_total")}[$__rate_interval])')
    b.add(timeseries("NVLink throughput, per GPU", [target(rx_total, "{{instance}} GPU {{gpu}} rx"),
                                                    target(tx_total, "{{instance}} GPU {{gpu}} tx")],
                     "Bps", "All of a GPU's links together: the GPM total rate where the GPU has GPM, the rate of "
                     "the NVLink throughput counters (fields 138/139) otherwise."))
    b.add(timeseries("NVLink errors", [target(f'increase({g("gpumon_nvlink_errors_total")}[$__rate_interval])',
                                              "{{instance}} GPU {{gpu}} link {{link}} {{type}}")],
                     "none", "Data-link replays, recoveries and CRC errors per interval; a steady rate points at a "
                     "failing link.", bars=True))
    b.add(table("NVLink links up", [target(g("gpumon_nvlink_up"))], "none",
                "1 for each link that was active at initialisation and is still up; 0 for one that went down."), 6, 8)
    b.add(table("NVLink link speed", [target(g("gpumon_nvlink_speed_bytes_per_second"))], "Bps",
                "Speed of each active link, per direction (NVML's one value common to the GPU's active links)."),
          6, 8)


def infiniband_panels(b: Board) -> None:
    """InfiniBand/RoCE ports (sysfs) and NCCL jobs (RAS); empty on hosts without them."""
    b.row("InfiniBand / RoCE")
    rx, tx = h("gpumon_ib_port_receive_bytes_total"), h("gpumon_ib_port_transmit_bytes_total")
    b.add(timeseries("RDMA receive, per port", [target(f"rate({rx}[$__rate_interval])",
                                                      "{{instance}} {{device}}/{{port}}")],
                     "Bps", "Bytes per second received on each port (port_rcv_data x 4)."))
    b.add(timeseries("RDMA transmit, per port", [target(f"rate({tx}[$__rate_interval])",
                                                       "{{instance}} {{device}}/{{port}}")],
                     "Bps", "Bytes per second sent on each port (port_xmit_data x 4)."))
    b.add(timeseries("Link errors", [
        target(f'increase({h("gpumon_ib_port_symbol_errors_total")}[$__rate_interval])',
               "{{device}}/{{port}} symbol"),
        target(f'increase({h("gpumon_ib_port_link_downed_total")}[$__rate_interval])',
               "{{device}}/{{port}} downed"),
        target(f'increase({h("gpumon_ib_port_link_error_recovery_total")}[$__rate_interval])',
               "{{device}}/{{port}} recovered"),
        target(f'increase({h("gpumon_ib_port_receive_errors_total")}[$__rate_interval])',
               "{{device}}/{{port}} rcv err"),
        target(f'increase({h("gpumon_ib_port_transmit_discards_total")}[$__rate_interval])',
               "{{device}}/{{port}} discards")],
        "none", "Error counters per interval; symbol errors and recoveries precede link-downs.", bars=True))
    b.add(timeseries("Congestion", [
        target(f'rate({h("gpumon_ib_port_transmit_wait_ticks_total")}[$__rate_interval])',
               "{{device}}/{{port}} wait"),
        target(f'rate({h("gpumon_ib_port_hw_events_total")}[$__rate_interval])',
               "{{device}}/{{port}} {{counter}}")],
        "none", "Credit waits (InfiniBand) and hardware counters such as CNPs and retransmissions (RoCE), per second."))
    b.add(table("Ports", [target(h("gpumon_ib_port_up")), target(h("gpumon_ib_port_state")),
                          target(h("gpumon_ib_port_physical_state")),
                          target(h("gpumon_ib_port_width_lanes")), target(h("gpumon_ib_port_info")),
                          target(h("gpumon_ib_port_receive_packets_total")),
                          target(h("gpumon_ib_port_transmit_packets_total"))],
                "none", "A: up; B/C: logical/physical state; D: lanes; E: identity; F/G: packets."), 16, 8)
    b.add(table("Link rate", [target(h("gpumon_ib_port_rate_bytes_per_second"))], "Bps",
                "Each port's link rate as the kernel reports it."), 8, 8)
    b.add(table("GPU to NIC (PCIe distance)", [target(g("gpumon_ib_gpu_affinity_info"))], "none",
                "Each GPU's distance to each RDMA device; nearest=\"true\" marks the NIC its NCCL traffic should use."),
          24, 6)
    b.row("NCCL (RAS)")
    b.add(stat("RAS answering", [target(h("gpumon_nccl_ras_up"), instant=True)], "none",
               "1 when the NCCL RAS service answered the last query.", thresholds=[(None, "red"), (1, "green")]), 6, 4)
    b.add(stat("Ranks", [target(h("gpumon_nccl_ranks"), instant=True)], "none", "World size of the job."), 6, 4)
    b.add(stat("Collective stall", [target(h("gpumon_nccl_collective_stall_seconds"), instant=True)], "s",
               "Seconds since the collective count last advanced while ranks run.",
               thresholds=[(None, "green"), (300, "red")]), 6, 4)
    b.add(stat("Lost ranks", [target(f'{h("gpumon_nccl_dead_processes")} + {h("gpumon_nccl_missing_ranks")}',
                                     instant=True)], "none", "Dead processes plus missing ranks.",
               thresholds=[(None, "green"), (1, "red")]), 6, 4)
    b.add(timeseries("Collectives per second", [
        target(f'rate({h("gpumon_nccl_collective_operations_total")}[$__rate_interval])', "{{operation}}")],
        "ops", "Collective operations launched per second, by operation."))
    b.add(table("Job health", [target(h("gpumon_nccl_info")), target(h("gpumon_nccl_communicators")),
                               target(h("gpumon_nccl_unresponsive_processes")),
                               target(h("gpumon_nccl_async_error_ranks")), target(h("gpumon_nccl_init_error_ranks")),
                               target(h("gpumon_nccl_ras_timeouts")),
                               target(f'increase({h("gpumon_nccl_ras_query_failures_total")}[$__rate_interval])')],
                "none", "Version, communicators, unresponsive processes, async and init errors, RAS timeouts and "
                "query failures."), 12, 8)
    b.add(timeseries("RAS query time", [target(h("gpumon_nccl_ras_query_duration_seconds"), "{{endpoint}}")], "s",
                     "Wall time of each status query (a collective over the job's RAS network)."))




def interconnect() -> dict[str, Any]:
    b = Board()
    b.row("PCIe")
    b.add(timeseries("PCIe receive, per GPU", [target(g("gpumon_pcie_rx_bytes_per_second"),
                                                      "{{instance}} GPU {{gpu}}")],
                     "Bps", "Bytes per second the GPU received over PCIe (GPM)."))
    b.add(timeseries("PCIe transmit, per GPU", [target(g("gpumon_pcie_tx_bytes_per_second"),
                                                       "{{instance}} GPU {{gpu}}")],
                     "Bps", "Bytes per second the GPU sent over PCIe (GPM)."))
    b.add(timeseries("PCIe throughput, per host", [
        target(f'sum by (instance) ({g("gpumon_pcie_rx_bytes_per_second")})', "{{instance}} rx"),
        target(f'sum by (instance) ({g("gpumon_pcie_tx_bytes_per_second")})', "{{instance}} tx")],
        "Bps", "All GPUs of a host together."))
    b.add(timeseries("PCIe replays", [target(f'increase({g("gpumon_pcie_replays_total")}[$__rate_interval])',
                                             "{{instance}} GPU {{gpu}}")],
                     "none", "Link-level retransmissions per interval; a steady rate points at a bad riser, slot or "
                     "cable.", bars=True))
    b.add(table("PCIe replays now", [target(g("gpumon_pcie_replays_total"))], "none",
                "Replay counter of every GPU (since the driver loaded).", links=DETAIL_LINK), 12, 8)
    b.add(table("PCIe link: current and maximum", [target(g("gpumon_pcie_link_generation")),
                                                     target(g("gpumon_pcie_link_max_generation")),
                                                     target(g("gpumon_pcie_link_width")),
                                                     target(g("gpumon_pcie_link_max_width"))],
                "none", "Value A/B: current/maximum generation; C/D: current/maximum lanes.", links=DETAIL_LINK),
          12, 8)
    b.add(table("PCIe links below their maximum", [
        target(f'{g("gpumon_pcie_link_generation")} < {g("gpumon_pcie_link_max_generation")}'),
        target(f'{g("gpumon_pcie_link_width")} < {g("gpumon_pcie_link_max_width")}')],
        "none", "GPUs whose link trained below its maximum generation (A) or width (B). Idle power saving can lower "
        "the generation briefly; a lower width is always a hardware problem.", links=DETAIL_LINK), 24, 6)
    nvlink_panels(b)
    infiniband_panels(b)
    return dashboard("gpumon-interconnect", "gpumon / Interconnect",
                     "PCIe rates, replays and link state, NVLink, InfiniBand/RoCE ports and NCCL jobs.", b)


def health() -> dict[str, Any]:
    b = Board()
    b.add(table("gpumon instances", [target(h("gpumon_build_info"))], "none",
                "Version and backend of every gpumon; backend=replay means DEMO DATA, not real GPUs."), 16, 5)
    b.add(stat("GPUs up / total", [target(f'sum({g("gpumon_gpu_up")})', "up", instant=True),
                                   target(f'count({g("gpumon_gpu_up")})', "total", instant=True)],
               "none", "GPUs answering their last poll, and all GPUs."), 8, 5)

    b.row("Polling")
    b.add(timeseries("Poll duration per tier", [target(h("gpumon_poll_duration_seconds"), "{{instance}} {{tier}}")],
                     "s", "Wall time of the last complete poll round of each tier (all GPUs in parallel). It should "
                     "stay well under the tier's interval."))
    b.add(timeseries("Slowest GPU poll per tier", [target(
        f'max by (instance, tier) ({g("gpumon_gpu_poll_duration_seconds")})', "{{instance}} {{tier}}")],
        "s", "The slowest GPU's last poll in each tier."))
    b.add(timeseries("Last successful poll, age", [target(
        f'time() - {h("gpumon_last_poll_success_timestamp_seconds")}', "{{instance}} {{tier}}")],
        "s", "Seconds since every GPU last answered a poll round of the tier. The fast tier should stay near its "
        "interval, the slow one under 30 s; the static tier only polls at start and after a re-init."))
    b.add(timeseries("Deadline misses", [target(
        f'sum by (instance, tier) (increase({g("gpumon_poll_deadline_exceeded_total")}[$__rate_interval]))',
        "{{instance}} {{tier}}")],
        "none", "GPU polls that missed the tier's deadline (a hung NVML call) or were skipped.", bars=True))

    b.row("NVML and GPUs")
    b.add(timeseries("NVML errors by call", [target(
        f'sum by (instance, call, error) (increase({h("gpumon_nvml_errors_total")}[$__rate_interval]))',
        "{{instance}} {{call}}: {{error}}")],
        "none", "NVML calls that failed, by call and error, per interval. Empty when nothing failed.", bars=True))
    b.add(timeseries("Unsupported metrics", [target(g("gpumon_unsupported_metrics"), "{{instance}} GPU {{gpu}}")],
                     "none", "Metrics a GPU does not support: they have no series (not NaN, not 0)."))
    b.add(timeseries("GPU up", [target(g("gpumon_gpu_up"), "{{instance}} GPU {{gpu}}")], "none",
                     "1 when the GPU answered, 0 while it is lost.", max_=1))
    b.add(timeseries("GPU re-initialisations", [target(
        f'increase({g("gpumon_gpu_reinit_total")}[$__rate_interval])', "{{instance}} GPU {{gpu}}")],
        "none", "Re-initialisations after a GPU was lost.", bars=True))

    b.row("Rules")
    b.add(timeseries("Rule group duration", [target(h("gpumon_rule_group_last_duration_seconds"),
                                                    "{{instance}} {{rule_group}}")],
                     "s", "Wall time of the last evaluation of each local rule group."))
    b.add(timeseries("Rule evaluation failures", [target(h("gpumon_rule_evaluation_failures"),
                                                         "{{instance}} {{rule_group}}")],
                     "none", "Rules whose last evaluation failed; /api/v1/rules on the host names the error."))

    b.row("Notifications")
    b.add(timeseries("Outbox queue", [target(h("gpumon_notification_queue_length"), "{{instance}} {{receiver}}")],
                     "none", "Notifications waiting in the outbox, per receiver. A queue that only grows means "
                     "the receiver is down or slow; delivery never blocks polling.", stack=True), 8, 8)
    b.add(timeseries("Oldest queued notification", [target(h("gpumon_notification_oldest_queued_age_seconds"),
                                                           "{{instance}} {{receiver}}")],
                     "s", "Age of the oldest notification waiting (0 when the outbox is empty)."), 8, 8)
    b.add(timeseries("Delivery latency", [target(h("gpumon_notification_delivery_latency_seconds"),
                                                 "{{instance}} {{receiver}}")],
                     "s", "Queueing to acceptance, for the receiver's last delivered notification."), 8, 8)
    b.add(timeseries("Delivery outcomes", [
        target(f'sum by (instance, receiver) (increase({h("gpumon_notifications_sent_total")}[$__rate_interval]))',
               "{{instance}} {{receiver}} sent"),
        target(f'sum by (instance, receiver) (increase({h("gpumon_notifications_retried_total")}[$__rate_interval]))',
               "{{instance}} {{receiver}} retried"),
        target(f'sum by (instance, receiver) (increase({h("gpumon_notifications_failed_total")}[$__rate_interval]))',
               "{{instance}} {{receiver}} failed"),
        target(f'sum by (instance, receiver) '
               f'(increase({h("gpumon_notifications_dead_lettered_total")}[$__rate_interval]))',
               "{{instance}} {{receiver}} dead-lettered")],
        "none", "Per interval: accepted, retried (5xx, 408, 429, network), rejected (other 4xx) and given up.",
        bars=True), 16, 8)
    b.add(stat("Receivers disabled", [target(f'count({h("gpumon_notification_receiver_enabled")} == 0) or vector(0)',
                                             instant=True)],
               "none", "Receivers that answered 410 Gone; re-enabled by the next reload.",
               thresholds=[(None, "green"), (1, "red")]), 8, 8)

    b.row("Faults and defences")
    b.add(state_timeline("Degraded components", [target(f'1 - {h("gpumon_component_healthy")}',
                                                        "{{instance}} {{component}}")],
                         "A state file the disk refuses (kept in memory meanwhile) or a background task that failed "
                         "and was restarted; /-/ready on the host names the problem. Alert: GpumonDegraded."), 12, 8)
    b.add(timeseries("Task restarts and corrupt state files", [
        target(f'sum by (instance, task) (increase({h("gpumon_task_restarts_total")}[$__rate_interval]))',
               "{{instance}} {{task}} restarted"),
        target(f'sum by (instance, file) (increase({h("gpumon_state_files_quarantined_total")}[$__rate_interval]))',
               "{{instance}} {{file}} moved aside")],
        "none", "Background tasks their supervisor restarted after a failure, and state files found corrupt, moved "
        "aside (NAME.corrupt-TIME) and started afresh.", bars=True), 12, 8)
    b.add(timeseries("HTTP connections", [target(h("gpumon_http_connections"), "{{instance}} open")], "none",
                     "Open connections to gpumon's listener; capped by web.max_connections below the file limit."),
          8, 7)
    b.add(timeseries("Connections closed by gpumon", [target(
        f'sum by (instance, reason) (increase({h("gpumon_http_connections_closed_total")}[$__rate_interval]))',
        "{{instance}} {{reason}}")],
        "none", "evicted: the connection limit was reached and the oldest idle connection made room. "
        "header_timeout: no complete request in time (slow-headers clients).", bars=True), 8, 7)
    b.add(timeseries("Log lines suppressed", [target(
        f'increase({h("gpumon_log_messages_suppressed_total")}[$__rate_interval])', "{{instance}}")],
        "none", "Repeats of one log message beyond 10 in 10 s, left out of the log.", bars=True), 8, 7)

    b.add(timeseries("Alertmanager pushes", [
        target(f'sum by (instance, alertmanager) (increase({h("gpumon_alertmanager_pushes_total")}[$__rate_interval]))',
               "{{instance}} → {{alertmanager}} accepted"),
        target(f'sum by (instance, alertmanager) '
               f'(increase({h("gpumon_alertmanager_push_failures_total")}[$__rate_interval]))',
               "{{instance}} → {{alertmanager}} failed")],
        "none", "Pushes of the active alerts to each configured Alertmanager, per interval; a failed push is "
        "resent with the next evaluation.", bars=True), 24, 7)

    b.row("Process")
    b.add(timeseries("CPU", [target(f'rate({h("process_cpu_seconds_total")}[$__rate_interval]) {ONLY_GPUMON}',
                                    "{{instance}}")],
                     "percentunit", "CPU time of the gpumon process (1 = one core)."), 8, 8)
    b.add(timeseries("Resident memory", [target(f'{h("process_resident_memory_bytes")} {ONLY_GPUMON}',
                                                "{{instance}}")],
                     "bytes", "Resident set size of the gpumon process."), 8, 8)
    b.add(timeseries("Scrape duration", [target(f'{h("scrape_duration_seconds")} {ONLY_GPUMON}', "{{instance}}")],
                     "s", "How long Prometheus takes to scrape gpumon (a scrape never touches NVML)."), 8, 8)
    return dashboard("gpumon-health", "gpumon / Health",
                     "gpumon itself: polling, NVML errors, GPUs, rules and the process.", b)


DASHBOARDS = {
    "gpumon-fleet.json": fleet,
    "gpumon-gpu-detail.json": gpu_detail,
    "gpumon-interconnect.json": interconnect,
    "gpumon-health.json": health,
}


def render() -> dict[str, str]:
    """File name -> JSON text, exactly as committed."""
    return {name: json.dumps(build(), indent=2, ensure_ascii=False) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, content in render().items():
        path = OUT / name
        if check:
            if not path.exists() or path.read_text() != content:
                stale.append(name)
        else:
            path.parent.mkdir(exist_ok=True)
            path.write_text(content)
    if stale:
        print(f"stale: {', '.join(stale)}; run python grafana/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
