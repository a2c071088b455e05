"""Turns the store's latest samples into exposition bytes, once per poll.

A scrape never reaches NVML or even this module's rendering: the sampler calls `render()` after
every poll round and the web server serves the cached bytes (gzip and OpenMetrics variants are made
lazily, at most once per round).
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client import generate_latest as generate_text
from prometheus_client.core import Metric as Family
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from gpumon import catalog
from gpumon.model import Sample

TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


class _SnapshotCollector:
    """A prometheus-client collector over one snapshot of samples, families in catalog order."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []

    def collect(self) -> Iterator[Family]:
        # name -> series (labels in a canonical order) -> value. A series that two samples both
        # carry is exposed once, with the later value: an exposition must not repeat a series.
        by_metric: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for sample in self.samples:
            for name, label_pairs, value in sample.values:
                by_metric.setdefault(name, {})[tuple(sorted(label_pairs))] = value
        for metric in catalog.METRICS:
            points = by_metric.get(metric.name)
            if not points:
                continue
            family_name = metric.family.removesuffix("_info") if metric.type == catalog.INFO else metric.family
            family = Family(family_name, metric.help, metric.type, metric.unit)
            sample_name = metric.name
            for labels, value in points.items():
                family.add_sample(sample_name, dict(labels), value)
            yield family

    def describe(self) -> Iterable[Family]:
        return ()  # unchecked collector: families vary with the hardware


@dataclass
class Rendered:
    """One poll's exposition, with the variants scrapers ask for cached on first use."""

    samples: list[Sample]
    text: bytes
    created: float = field(default_factory=time.time)
    variants: dict[tuple[bool, bool], bytes] = field(default_factory=dict)


class Exporter:
    """Renders snapshots; `body()` is what `/metrics` serves."""

    def __init__(self, process_metrics: bool = True) -> None:
        self._collector = _SnapshotCollector()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self._collector)
        if process_metrics:
            ProcessCollector(registry=self._registry)
        self.current: Rendered | None = None

    def render(self, samples: list[Sample]) -> Rendered:
        self._collector.samples = samples
        self.current = Rendered(samples, generate_text(self._registry))
        return self.current

    def body(self, openmetrics: bool, gzipped: bool) -> bytes:
        """The current exposition; empty before the first render."""
        rendered = self.current
        if rendered is None:
            return b""
        variant = rendered.variants.get((openmetrics, gzipped))
        if variant is not None:
            return variant
        if openmetrics:
            self._collector.samples = rendered.samples
            plain = rendered.variants.get((True, False)) or generate_openmetrics(self._registry)  # type: ignore[no-untyped-call]
            rendered.variants[(True, False)] = plain
        else:
            plain = rendered.text
        if gzipped:
            plain = gzip.compress(plain, compresslevel=5, mtime=0)
            rendered.variants[(openmetrics, True)] = plain
        return plain
