"""Panel builders, selectors and the layout every gpumon dashboard shares (Grafana's dashboard JSON
model, schema 39, as plain dictionaries). A panel on one catalog metric takes its unit and description
from the catalog (`metric_panel`), so the dashboards say what docs/metrics.md says."""

from __future__ import annotations

from typing import Any

from gpumon.catalog import BY_NAME

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
          links: list[dict[str, str]] | None = None, mappings: list[dict[str, Any]] | None = None) -> Panel:
    for t in targets:
        t.update(instant=True, range=False, format="table")
    p = _panel("table", title, targets, unit, description, {"showHeader": True, "cellHeight": "sm"},
               {"links": links or [], **({"mappings": mappings} if mappings else {})})
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


# Grafana's unit ids for the catalog's units.
UNITS = {"ratio": "percentunit", "bytes": "bytes", "bytes_per_second": "Bps", "watts": "watt",
         "celsius": "celsius", "hertz": "hertz", "seconds": "s", "joules": "joule"}


def metric_panel(metric: str, title: str, legend: str = "", *, host: bool = False, note: str = "",
                 w: int = 12, h: int = 8, board: Board, **options: Any) -> None:
    """A time series of one catalog metric: unit and description from its catalog row (plus `note`)."""
    row = BY_NAME[metric]
    selector = (h_ if host else g)(metric)
    description = row.help + (" " + note if note else "")
    board.add(timeseries(title, [target(selector, legend)], UNITS.get(row.unit, "none"), description, **options), w, h)


h_ = h  # `h` is also the height argument of metric_panel
