"""The Grafana dashboards (grafana/): generated JSON is current, well formed, datasource-independent, and
every query parses and names only metrics that exist."""

from __future__ import annotations

from typing import Any

import promql_parser
import pytest
import yaml

from gpumon.catalog import BY_NAME, METRICS
from grafana.generate import render
from grafana.generate.panels import UNITS
from tests.support.dashboards import (
    DASHBOARDS,
    DATASOURCE,
    GRAFANA,
    VARIABLES,
    label_values_selector,
    load,
    panels,
    selectors,
    substitute,
    targets,
)

NAMES = {"gpumon-fleet.json", "gpumon-gpu-detail.json", "gpumon-interconnect.json", "gpumon-health.json",
         "gpumon-waste.json"}

# Series that are not gpumon's but that the dashboards may read: Prometheus's own, and the client
# library's process collector (gpumon's exporter registers it).
OTHER_METRICS = {"ALERTS", "up", "scrape_duration_seconds", "process_cpu_seconds_total",
                 "process_resident_memory_bytes", "process_virtual_memory_bytes", "process_open_fds",
                 "process_max_fds", "process_start_time_seconds"}


@pytest.fixture(scope="module", params=DASHBOARDS, ids=lambda p: p.name)
def board(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load(request.param)


def test_the_four_dashboards_exist_and_are_generated_from_generate_py() -> None:
    assert {p.name for p in DASHBOARDS} == NAMES
    rendered = render()
    assert set(rendered) == NAMES
    for name, text in rendered.items():
        assert (GRAFANA / "dashboards" / name).read_text() == text, (
            f"{name} is stale: run `python -m grafana.generate`")


def test_dashboard_model(board: dict[str, Any]) -> None:
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"].startswith("gpumon-") and board["title"].startswith("gpumon / ")
    assert "gpumon" in board["tags"]
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    for p in panels(board):
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, p["title"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & occupied, f"panel {p['title']!r} overlaps another"
        occupied |= cells
        assert p["title"], "every panel has a title"


def test_dashboard_uids_are_unique() -> None:
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids))


def test_datasource_is_a_variable_and_no_uid_is_hard_coded(board: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in board["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "datasource":
                    builtin = value == {"type": "grafana", "uid": "-- Grafana --"} and ".annotations" in path
                    assert value == DATASOURCE or builtin, f"{path}.datasource = {value!r}"
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk(board, "")
    for p in panels(board):
        if p["type"] not in ("row", "text"):
            assert p["datasource"] == DATASOURCE, p["title"]
            assert p["targets"], f"panel {p['title']!r} has no query"
            for t in p["targets"]:
                assert t["datasource"] == DATASOURCE


def test_instance_and_gpu_variables_come_from_label_values(board: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in board["templating"]["list"]}
    for name in ("instance", "gpu"):
        v = variables[name]
        assert v["type"] == "query" and v["datasource"] == DATASOURCE
        selector = label_values_selector(v["query"]["query"])
        assert v["definition"] == v["query"]["query"]
        assert v["query"]["query"].endswith(f", {name})")
        for s in selectors(substitute(selector)):
            assert s.name in BY_NAME, s.name
    assert 'instance=~"$instance"' in variables["gpu"]["query"]["query"], "gpu choices follow the host"


def test_every_query_parses_and_names_existing_metrics(board: dict[str, Any]) -> None:
    count = 0
    for p, t in targets(board):
        expr = substitute(t["expr"])
        try:
            found = selectors(expr)
        except ValueError as exc:
            raise AssertionError(f"{p['title']!r}: {expr!r} does not parse: {exc}") from exc
        assert found, f"{p['title']!r}: {expr!r} reads no series"
        for s in found:
            assert s.name in BY_NAME or s.name in OTHER_METRICS, f"{p['title']!r}: unknown metric {s.name}"
        count += 1
    assert count >= 10


def test_every_query_filters_on_the_variables(board: dict[str, Any]) -> None:
    marked = {**VARIABLES, "instance": "<instance>", "gpu": "<gpu>"}
    for p, t in targets(board):
        for s in selectors(substitute(t["expr"], marked)):
            matchers = {(m.name, m.value) for m in s.matchers.matchers}
            if s.name in BY_NAME and BY_NAME[s.name].per_gpu:
                assert {("instance", "<instance>"), ("gpu", "<gpu>")} <= matchers, (
                    f"{p['title']!r}: {s.name} is not filtered by $instance and $gpu")
            elif s.name in BY_NAME or s.name == "ALERTS":
                assert ("instance", "<instance>") in matchers, f"{p['title']!r}: {s.name} ignores $instance"
            elif s.name in OTHER_METRICS:
                assert ("instance", "<instance>") in matchers, f"{p['title']!r}: {s.name} ignores $instance"
                assert "gpumon_build_info" in t["expr"], f"{p['title']!r}: {s.name} is not limited to gpumon jobs"


def test_every_panel_has_a_unit_and_bare_metrics_use_their_catalog_unit(board: dict[str, Any]) -> None:
    for p in panels(board):
        if p["type"] in ("row", "text"):
            continue
        unit = p["fieldConfig"]["defaults"].get("unit")
        assert unit, f"panel {p['title']!r} has no unit"
        for t in p["targets"]:
            node = promql_parser.parse(substitute(t["expr"]))
            if isinstance(node, promql_parser.VectorSelector) and node.name in BY_NAME:
                want = UNITS.get(BY_NAME[node.name].unit)
                if want is not None:
                    assert unit == want, f"{p['title']!r}: {node.name} is in {want}, the panel says {unit}"


# Metric sources whose panels are not built yet, and why. A new source fails the test below until it is
# on a dashboard or listed here.
NOT_ON_DASHBOARDS_YET: dict[str, str] = {}


def test_every_metric_appears_on_a_dashboard_and_every_gpu_metric_on_gpu_detail() -> None:
    used: dict[str, set[str]] = {}
    for path in DASHBOARDS:
        names = {s.name for _, t in targets(load(path)) for s in selectors(substitute(t["expr"]))}
        used[path.name] = names
    everywhere = set().union(*used.values())
    missing = sorted({m.name for m in METRICS if m.source not in NOT_ON_DASHBOARDS_YET} - everywhere)
    assert not missing, f"metrics on no dashboard (add panels in grafana/generate/): {missing}"
    assert {m.source for m in METRICS} >= set(NOT_ON_DASHBOARDS_YET), "stale NOT_ON_DASHBOARDS_YET entries"
    hardware = {m.name for m in METRICS if m.per_gpu and m.source in ("nvml", "device", "events")}
    assert hardware - used["gpumon-gpu-detail.json"] == set()


def test_fleet_labels_the_util_gpu_fallback_of_sm_activity() -> None:
    fleet = load(GRAFANA / "dashboards" / "gpumon-fleet.json")
    heat = next(p for p in fleet["panels"] if p["type"] == "heatmap")
    expr = " ".join(t["expr"] for t in heat["targets"])
    assert "gpumon_sm_active_ratio" in expr and "gpumon_gpu_utilization_ratio" in expr
    assert "util.gpu fallback" in expr and "fallback" in heat["description"]
    assert heat["fieldConfig"]["defaults"]["unit"] == "percentunit"


def test_gpu_detail_shows_clock_event_reasons_as_a_state_timeline() -> None:
    detail = load(GRAFANA / "dashboards" / "gpumon-gpu-detail.json")
    timelines = [p for p in panels(detail) if p["type"] == "state-timeline"]
    assert any("gpumon_clock_event_reason_active" in t["expr"] for p in timelines for t in p["targets"])
    variables = {v["name"]: v for v in detail["templating"]["list"]}
    assert not variables["gpu"]["multi"] and not variables["instance"]["multi"], "one GPU at a time"


def test_interconnect_shows_nvlink_infiniband_and_nccl() -> None:
    dash = load(GRAFANA / "dashboards" / "gpumon-interconnect.json")
    exprs = [t["expr"] for _, t in targets(dash)]
    for family in ("gpumon_nvlink_", "gpumon_ib_", "gpumon_nccl_"):
        assert any(family in e for e in exprs), family


def test_provisioning_files() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "gpumon.yaml").read_text())
    assert datasources["apiVersion"] == 1
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["access"] == "proxy" and ds["url"].startswith("http")
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "gpumon.yaml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


def test_a_panel_on_one_catalog_metric_describes_it_as_the_catalog_does(board: dict[str, Any]) -> None:
    """Units and descriptions live in gpumon/catalog.py once; a panel of one bare metric repeats them."""
    for p in panels(board):
        if p["type"] != "timeseries" or len(p["targets"]) != 1:
            continue
        node = promql_parser.parse(substitute(p["targets"][0]["expr"]))
        if isinstance(node, promql_parser.VectorSelector) and node.name in BY_NAME:
            assert p["description"].startswith(BY_NAME[node.name].help), p["title"]
