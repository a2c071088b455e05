"""The metric table follows Prometheus conventions, and docs/metrics.md is generated from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gpumon import catalog, docgen

BASE_UNITS = {"", "bytes", "seconds", "joules", "celsius", "watts", "hertz", "ratio", "bytes_per_second"}


@pytest.mark.parametrize("metric", catalog.METRICS, ids=lambda m: m.name)
def test_metric_follows_conventions(metric: catalog.Metric) -> None:
    assert re.fullmatch(r"gpumon_[a-z0-9_]+", metric.name)
    assert metric.unit in BASE_UNITS
    assert (metric.type == catalog.COUNTER) == metric.name.endswith("_total")
    if metric.unit:
        assert metric.family.endswith("_" + metric.unit)
    if metric.type == catalog.INFO:
        assert metric.name.endswith("_info")
    assert metric.help.strip() and metric.help.endswith(".")
    labels = set(metric.labels) | ({"gpu", "uuid"} if metric.per_gpu else set())
    assert not labels & {"hostname", "instance", "job", "le", "quantile"}
    assert "percent" not in metric.name


def test_names_are_unique() -> None:
    names = [m.name for m in catalog.METRICS]
    assert len(names) == len(set(names))


def test_metrics_doc_is_current() -> None:
    doc = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
    assert doc.read_text() == docgen.render(), "docs/metrics.md is stale: run `make docs`"
