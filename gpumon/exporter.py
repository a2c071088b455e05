"""Turns the store's latest samples into exposition bytes, once per poll.

A scrape never reaches NVML or even this module's rendering: `render()` runs after every poll round
(the exporter follows the sampler's rounds) and the web server serves the cached bytes (gzip and
OpenMetrics variants are made lazily, at most once per round).

prometheus-client formats everything: each family's HELP/TYPE/UNIT lines and each series' name and
labels are rendered by it once, the first time they appear, and kept; a render then only joins those
with the values (formatted by prometheus-client's `floatToGoString`). The series of a GPU do not
change from poll to poll, so this gives prometheus-client's output byte for byte (a test compares)
at a tenth of the cost of having it re-escape every label of every series on every poll, which on
the event loop was the tail of scrape latency.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client import generate_latest as generate_text
from prometheus_client.core import Metric as Family
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.utils import floatToGoString

from gpumon import catalog
from gpumon.model import Labels, Sample
from gpumon.rounds import Round, Rounds

TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
OPENMETRICS_EOF = "# EOF\n"
# Series come and go with per-process labels; past this many remembered lines, start afresh.
LINE_CACHE_MAX = 50_000

Generate = Callable[[Any], bytes]
format_value = cast(Callable[[float], str], floatToGoString)  # how both formats write a sample value
Points = dict[Labels, float]  # one family's series (labels sorted) and values


Families = list[tuple[catalog.Metric, Points]]


def snapshot(samples: Iterable[Sample]) -> Families:
    """The samples' series by catalog metric, in catalog order. A series two samples both carry is
    exposed once, with the later value: an exposition must not repeat a series."""
    by_metric: dict[str, Points] = {}
    for sample in samples:
        for name, label_pairs, value in sample.values:
            by_metric.setdefault(name, {})[tuple(sorted(label_pairs))] = value
    return [(metric, points) for metric in catalog.METRICS if (points := by_metric.get(metric.name))]


def family(metric: catalog.Metric, points: Points) -> Family:
    """A prometheus-client family of one metric's series."""
    name = metric.family.removesuffix("_info") if metric.type == catalog.INFO else metric.family
    fam = Family(name, metric.help, metric.type, metric.unit)
    for labels, value in points.items():
        fam.add_sample(metric.name, dict(labels), value)
    return fam


class _OneFamily:
    """A registry that holds one family: what prometheus-client's generators take."""

    def __init__(self, fam: Family) -> None:
        self.fam = fam

    def collect(self) -> Iterator[Family]:
        yield self.fam


class _Lines:
    """One exposition format's header and series prefixes, each rendered by prometheus-client once."""

    def __init__(self, generate: Generate) -> None:
        self._generate = generate
        self._headers: dict[str, str] = {}
        self._prefixes: dict[tuple[str, Labels], str] = {}

    def render(self, families: Families) -> list[str]:
        out: list[str] = []
        prefixes = self._prefixes
        for metric, points in families:
            header = self._headers.get(metric.name)
            if header is None:
                header = self._learn(metric, points)
            out.append(header)
            name = metric.name
            for labels, value in points.items():
                prefix = prefixes.get((name, labels))
                if prefix is None:
                    prefix = self._learn_series(metric, labels)
                out.append(f"{prefix}{format_value(value)}\n")
        return out

    def _library_lines(self, metric: catalog.Metric, labels: Labels) -> list[str]:
        text = self._generate(_OneFamily(family(metric, {labels: 0.0}))).decode()
        # split on "\n" only: label values may hold other line breaks, which the formats do not escape
        return [line + "\n" for line in text.split("\n")[:-1] if line + "\n" != OPENMETRICS_EOF]

    def _learn(self, metric: catalog.Metric, points: Points) -> str:
        lines = self._library_lines(metric, next(iter(points)))
        header = self._headers[metric.name] = "".join(line for line in lines if line.startswith("#"))
        return header

    def _learn_series(self, metric: catalog.Metric, labels: Labels) -> str:
        if len(self._prefixes) > LINE_CACHE_MAX:
            self._prefixes.clear()
        sample_line = self._library_lines(metric, labels)[-1]
        # "<name>{<labels>} 0.0\n": everything up to the value's separating space (values hold none)
        prefix = self._prefixes[(metric.name, labels)] = sample_line[:sample_line.rindex(" ") + 1]
        return prefix


@dataclass
class Rendered:
    """One poll's exposition, with the variants scrapers ask for cached on first use."""

    families: Families  # the snapshot both formats are rendered from
    text: bytes
    created: float = field(default_factory=time.time)
    variants: dict[tuple[bool, bool], bytes] = field(default_factory=dict)


class Exporter:
    """Renders snapshots; `body()` is what `/metrics` serves."""

    def __init__(self, process_metrics: bool = True) -> None:
        self._text = _Lines(lambda registry: generate_text(registry))
        self._openmetrics = _Lines(lambda registry: generate_openmetrics(registry))  # type: ignore[no-untyped-call]
        self._process: CollectorRegistry | None = None
        if process_metrics:
            self._process = CollectorRegistry(auto_describe=False)
            ProcessCollector(registry=self._process)
        self.current: Rendered | None = None

    def follow(self, rounds: Rounds, fresh: Callable[[float], list[Sample]]) -> None:
        """Render after every round announced on `rounds`, from the samples `fresh(now)` gives."""
        def render(_: Round) -> None:
            self.render(fresh(time.time()))
        rounds.subscribe("exposition", render)

    def render(self, samples: list[Sample]) -> Rendered:
        families = snapshot(samples)
        text = "".join(self._text.render(families)).encode()
        if self._process is not None:
            text += generate_text(self._process)
        self.current = Rendered(families, text)
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
            plain = rendered.variants.get((True, False)) or self._render_openmetrics(rendered.families)
            rendered.variants[(True, False)] = plain
        else:
            plain = rendered.text
        if gzipped:
            plain = gzip.compress(plain, compresslevel=5, mtime=0)
            rendered.variants[(openmetrics, True)] = plain
        return plain

    def _render_openmetrics(self, families: Families) -> bytes:
        body = "".join(self._openmetrics.render(families)).encode()
        if self._process is not None:
            return body + generate_openmetrics(self._process)  # type: ignore[no-untyped-call,no-any-return]
        return body + OPENMETRICS_EOF.encode()
