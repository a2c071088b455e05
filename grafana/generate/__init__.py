"""Generate gpumon's Grafana dashboards (grafana/dashboards/*.json) from one place.

Run `python -m grafana.generate` after editing; `tests/grafana/test_grafana.py` fails when the committed JSON
differs from what this script writes. Plain dictionaries in Grafana's dashboard JSON model (schema
39), built by the modules here: `panels` (builders, layout, catalog units) and one module per
dashboard.

Conventions every dashboard keeps (and the tests check):
- the datasource is the `datasource` variable (type prometheus); no datasource UID is written down;
- `instance` and `gpu` variables come from `label_values` queries; every per-GPU query filters on both;
- every panel has a unit; ratios are `percentunit`, bytes `bytes`, rates `Bps`, and so on;
- only raw gpumon metrics (docs/metrics.md), Prometheus's own series (`ALERTS`, `up`, `scrape_*`) and
  the client library's `process_*` metrics; no recording rules, so a dashboard works on any Prometheus.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from grafana.generate.fleet import fleet
from grafana.generate.gpu_detail import gpu_detail
from grafana.generate.health import health
from grafana.generate.interconnect import interconnect
from grafana.generate.waste import waste

DASHBOARDS: dict[str, Callable[[], dict[str, Any]]] = {
    "gpumon-fleet.json": fleet,
    "gpumon-gpu-detail.json": gpu_detail,
    "gpumon-interconnect.json": interconnect,
    "gpumon-health.json": health,
    "gpumon-waste.json": waste,
}


def render() -> dict[str, str]:
    """File name -> JSON text, exactly as committed."""
    return {name: json.dumps(build(), indent=2, ensure_ascii=False) + "\n" for name, build in DASHBOARDS.items()}
