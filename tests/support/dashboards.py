"""Reading the generated Grafana dashboards: their files, panels and queries, with Grafana's
variables substituted so a query can be sent to Prometheus without Grafana."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser

GRAFANA = Path(__file__).resolve().parents[2] / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))

# Values the variables take when a query is sent without Grafana (here and in the integration test).
VARIABLES = {"instance": ".*", "gpu": ".*", "price": "2.50", "__rate_interval": "1m", "__interval": "15s",
             "__range": "5m",
             "__range_s": "300", "__interval_ms": "15000"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def substitute(expr: str, values: dict[str, str] | None = None) -> str:
    """Replace Grafana's $var / ${var} / ${var:fmt} in a query; an unknown variable is an error."""
    values = VARIABLES if values is None else values

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise AssertionError(f"unknown Grafana variable ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", one, expr)


def load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for p in dashboard["panels"]:
        yield p
        yield from p.get("panels", [])


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every query of the dashboard."""
    for p in panels(dashboard):
        for t in p.get("targets", []):
            yield p, t


def selectors(expr: str) -> list[Any]:
    """The vector selectors of a PromQL expression (those inside range selectors too)."""
    found: list[Any] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def label_values_selector(query: str) -> str:
    m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
    assert m, f"not a label_values(selector, label) query: {query}"
    return m.group(1)
