"""Exposition rendering: text format 0.0.4, OpenMetrics, gzip variants, all from catalog metadata."""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as _parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from gpumon import catalog
from gpumon.exporter import OPENMETRICS_TYPE, TEXT_TYPE, Exporter, family, snapshot
from gpumon.model import Labels, Sample

GPU0: Labels = (("gpu", "0"), ("uuid", "GPU-x"))
GPU1: Labels = (("gpu", "1"), ("uuid", "GPU-y"))
INFO_LABELS: Labels = (("name", "NVIDIA H200"), ("pci_bus_id", "00000000:00:06.0"), ("architecture", "hopper"),
                       ("driver_version", "580.159.04"), ("cuda_driver_version", "13.0"), ("gpm", "true"),
                       ("sm_activity_source", "gpm"))


def gpu_sample(labels: Labels = GPU0, unit: str = "gpu0", scale: float = 1.0) -> Sample:
    """A hand-built poll of one GPU, values added out of catalog order on purpose."""
    s = Sample(unit, "fast", 1000.0)
    s.add("gpumon_energy_joules_total", labels, 12345.5 * scale)
    s.add("gpumon_power_draw_watts", labels, 350.25 * scale)
    s.add("gpumon_gpu_info", labels + INFO_LABELS, 1.0)
    s.add("gpumon_clock_event_reason_active", (*labels, ("reason", "gpu_idle")), 1.0)
    s.add("gpumon_clock_event_reason_active", (*labels, ("reason", "sw_power_cap")), 0.0)
    s.add("gpumon_sm_active_ratio", labels, 0.97)
    s.add("gpumon_gpu_up", labels, 1.0)
    return s


def build_info() -> Sample:
    s = Sample("gpumon", "fast", 1000.0)
    s.add("gpumon_build_info", (("version", "1.0"), ("backend", "replay"), ("capture", "demo")), 1.0)
    s.add("gpumon_poll_duration_seconds", (("tier", "fast"),), 0.004)
    return s


def parse_openmetrics(text: str) -> Iterator[Any]:
    return _parse_openmetrics(text)  # type: ignore[no-untyped-call,no-any-return]


def families(text: bytes) -> dict[str, object]:
    return {f.name: f for f in parse_text(text.decode())}


@pytest.fixture
def exporter() -> Exporter:
    return Exporter(process_metrics=False)


def test_body_before_render_is_empty(exporter: Exporter) -> None:
    for openmetrics in (False, True):
        for gzipped in (False, True):
            assert exporter.body(openmetrics, gzipped) == b""
    assert exporter.current is None


def test_render_parses_with_catalog_metadata(exporter: Exporter) -> None:
    rendered = exporter.render([gpu_sample(), build_info()])
    assert exporter.body(False, False) is rendered.text
    parsed = list(parse_text(rendered.text.decode()))
    by_name = {f.name: f for f in parsed}
    assert len(by_name) == len(parsed)  # each family once
    for f in parsed:
        metric = catalog.BY_NAME.get(f.name) or catalog.BY_NAME.get(f.name + "_total") \
            or catalog.BY_NAME[f.name + "_info"]
        assert f.documentation == metric.help
        expected_type = "gauge" if metric.type == catalog.INFO else metric.type  # 0.0.4 has no info
        assert f.type == expected_type, f.name

    power = by_name["gpumon_power_draw_watts"]
    assert [(s.name, s.labels, s.value) for s in power.samples] == [
        ("gpumon_power_draw_watts", {"gpu": "0", "uuid": "GPU-x"}, 350.25)]
    reasons = by_name["gpumon_clock_event_reason_active"]
    assert {s.labels["reason"]: s.value for s in reasons.samples} == {"gpu_idle": 1.0, "sw_power_cap": 0.0}


def test_families_in_catalog_order(exporter: Exporter) -> None:
    text = exporter.render([gpu_sample(), build_info()]).text.decode()
    order = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    catalog_order = [m.name for m in catalog.METRICS]
    positions = [catalog_order.index(name) for name in order]
    assert positions == sorted(positions)
    assert order[0] == "gpumon_gpu_info"  # first in the catalog, last added


def test_counter_has_total_suffix(exporter: Exporter) -> None:
    text = exporter.render([gpu_sample()]).text.decode()
    assert "# TYPE gpumon_energy_joules_total counter" in text
    assert 'gpumon_energy_joules_total{gpu="0",uuid="GPU-x"} 12345.5' in text
    energy = families(text.encode())["gpumon_energy_joules"]
    assert energy.type == "counter"  # type: ignore[attr-defined]
    assert [s.name for s in energy.samples] == ["gpumon_energy_joules_total"]  # type: ignore[attr-defined]


def test_info_rendered_with_value_one(exporter: Exporter) -> None:
    text = exporter.render([gpu_sample()]).text.decode()
    assert "# TYPE gpumon_gpu_info gauge" in text
    info = families(text.encode())["gpumon_gpu_info"]
    (s,) = info.samples  # type: ignore[attr-defined]
    assert s.name == "gpumon_gpu_info" and s.value == 1.0
    assert s.labels == dict(GPU0 + INFO_LABELS)


def test_openmetrics_body(exporter: Exporter) -> None:
    exporter.render([gpu_sample(), gpu_sample(GPU1, "gpu1", scale=2), build_info()])
    body = exporter.body(True, False)
    assert body.endswith(b"# EOF\n")
    parsed = {f.name: f for f in parse_openmetrics(body.decode())}
    info = parsed["gpumon_gpu"]
    assert info.type == "info"
    assert [s.name for s in info.samples] == ["gpumon_gpu_info"] * 2
    assert all(s.value == 1.0 for s in info.samples)
    assert parsed["gpumon_build"].type == "info"
    energy = parsed["gpumon_energy_joules"]
    assert energy.type == "counter" and energy.unit == "joules"
    assert sorted(s.value for s in energy.samples) == [12345.5, 24691.0]
    assert parsed["gpumon_sm_active_ratio"].unit == "ratio"
    assert parsed["gpumon_power_draw_watts"].documentation == catalog.BY_NAME["gpumon_power_draw_watts"].help
    assert exporter.body(True, False) is body  # cached


def test_every_catalog_metric_renders_in_both_formats(exporter: Exporter) -> None:
    s = Sample("gpu0", "fast", 1.0)
    for m in catalog.METRICS:
        labels = (GPU0 if m.per_gpu else ()) + tuple((name, "v") for name in m.labels)
        s.add(m.name, labels, 1.0 if m.type == catalog.INFO else 2.5)
    rendered = exporter.render([s])
    text_families = list(parse_text(rendered.text.decode()))
    om_families = list(parse_openmetrics(exporter.body(True, False).decode()))
    assert len(text_families) == len(om_families) == len(catalog.METRICS)
    for m, fam in zip(catalog.METRICS, om_families, strict=True):
        assert fam.samples[0].name == m.name  # the family and its unit did not rename the series
        assert fam.unit == m.unit
        assert fam.type == m.type


def test_gzip_variants_decompress_to_plain_and_are_cached(exporter: Exporter) -> None:
    exporter.render([gpu_sample(), build_info()])
    for openmetrics in (False, True):
        zipped = exporter.body(openmetrics, True)
        assert gzip.decompress(zipped) == exporter.body(openmetrics, False)
        assert exporter.body(openmetrics, True) is zipped
    assert exporter.body(False, True) != exporter.body(True, True)


def test_rerender_drops_cached_variants(exporter: Exporter) -> None:
    exporter.render([gpu_sample()])
    old_om, old_gz = exporter.body(True, False), exporter.body(False, True)
    exporter.render([gpu_sample(scale=3)])
    new_om, new_gz = exporter.body(True, False), exporter.body(False, True)
    assert new_om != old_om and new_gz != old_gz
    assert b"1050.75" in new_om  # 350.25 * 3
    assert gzip.decompress(new_gz) == exporter.body(False, False)


def test_openmetrics_after_rerender_uses_its_own_snapshot(exporter: Exporter) -> None:
    first = exporter.render([gpu_sample()])
    exporter.render([gpu_sample(GPU1, "gpu1")])
    assert exporter.current is not first
    om = exporter.body(True, False).decode()
    assert 'gpu="1"' in om and 'gpu="0"' not in om


def test_samples_of_several_gpus_share_one_family(exporter: Exporter) -> None:
    text = exporter.render([gpu_sample(), gpu_sample(GPU1, "gpu1")]).text
    assert text.decode().count("# TYPE gpumon_power_draw_watts gauge") == 1
    power = families(text)["gpumon_power_draw_watts"]
    assert [s.labels["gpu"] for s in power.samples] == ["0", "1"]  # type: ignore[attr-defined]


def test_repeated_series_is_exposed_once(exporter: Exporter) -> None:
    a, b = Sample("gpu0", "fast", 1.0), Sample("gpu0", "slow", 2.0)
    a.add("gpumon_gpu_up", GPU0, 0.0)
    b.add("gpumon_gpu_up", tuple(reversed(GPU0)), 1.0)  # same series, labels in another order
    text = exporter.render([a, b]).text.decode()
    lines = [line for line in text.splitlines() if line.startswith("gpumon_gpu_up{")]
    assert lines == ['gpumon_gpu_up{gpu="0",uuid="GPU-x"} 1.0']


def test_empty_and_unknown_metrics(exporter: Exporter) -> None:
    assert exporter.render([]).text == b""
    s = Sample("gpu0", "fast", 1.0)
    s.add("not_in_the_catalog", GPU0, 1.0)
    assert exporter.render([s]).text == b""
    assert exporter.body(True, False) == b"# EOF\n"


def test_special_values(exporter: Exporter) -> None:
    s = Sample("gpu0", "fast", 1.0)
    s.add("gpumon_power_draw_watts", GPU0, math.nan)
    s.add("gpumon_memory_used_bytes", GPU0, math.inf)
    s.add("gpumon_memory_free_bytes", GPU0, -0.0)
    s.add("gpumon_memory_total_bytes", GPU0, 150754820096.0)
    exporter.render([s])
    for body, parse in ((exporter.body(False, False), parse_text), (exporter.body(True, False), parse_openmetrics)):
        values = {f.name: f.samples[0].value for f in parse(body.decode())}
        assert math.isnan(values["gpumon_power_draw_watts"])
        assert values["gpumon_memory_used_bytes"] == math.inf
        assert values["gpumon_memory_total_bytes"] == 150754820096.0


def test_process_metrics_are_included_by_default() -> None:
    exporter = Exporter()
    exporter.render([gpu_sample()])
    text = exporter.body(False, False).decode()
    names = [f.name for f in parse_text(text)]
    assert names[0] == "gpumon_gpu_info"  # gpumon's families first
    if any(n.startswith("process_") for n in names):  # ProcessCollector needs /proc
        assert names.index("gpumon_gpu_up") < min(i for i, n in enumerate(names) if n.startswith("process_"))
    assert exporter.body(True, False).endswith(b"# EOF\n")
    list(parse_openmetrics(exporter.body(True, False).decode()))


def test_content_types() -> None:
    assert TEXT_TYPE.startswith("text/plain; version=0.0.4")
    assert OPENMETRICS_TYPE.startswith("application/openmetrics-text; version=1.0.0")


label_value = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)


@settings(max_examples=60, deadline=None)
@given(uuid=label_value, name=label_value, value=st.floats(allow_nan=False))
def test_label_values_roundtrip(uuid: str, name: str, value: float) -> None:
    exporter = Exporter(process_metrics=False)
    s = Sample("gpu0", "fast", 1.0)
    labels = (("gpu", "0"), ("uuid", uuid))
    s.add("gpumon_power_draw_watts", labels, value)
    s.add("gpumon_gpu_info", (*labels, ("name", name)), 1.0)
    exporter.render([s])
    for body, parse in ((exporter.body(False, False), parse_text), (exporter.body(True, False), parse_openmetrics)):
        parsed = {f.name: f.samples[0] for f in parse(body.decode())}
        power = parsed["gpumon_power_draw_watts"]
        assert power.labels == {"gpu": "0", "uuid": uuid}
        assert power.value == value
        info = parsed.get("gpumon_gpu_info") or parsed["gpumon_gpu"]
        assert info.labels["name"] == name


class _Snapshot:
    """prometheus-client rendering a whole snapshot itself: the reference the cached lines must equal."""

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples

    def collect(self) -> Iterator[Any]:
        for metric, points in snapshot(self.samples):
            yield family(metric, points)


def library_renders(samples: list[Sample]) -> tuple[bytes, bytes]:
    from prometheus_client import generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

    registry = _Snapshot(samples)
    return generate_latest(registry), generate_openmetrics(registry)  # type: ignore[arg-type,no-untyped-call]


def test_eight_h200s_render_as_prometheus_client_renders_them() -> None:
    """Every tier of 8 GPUs from the capture, twice (the second render comes from the caches)."""
    from gpumon.model import Tier
    from gpumon.sources.capture import load_capture
    from gpumon.sources.capture_nvml import CaptureNvml
    from gpumon.sources.nvml import NvmlSource
    from gpumon.sources.replay import DEMO_CAPTURE

    now = [10.0]
    source = NvmlSource(CaptureNvml(load_capture(DEMO_CAPTURE), gpus=8, clock=lambda: now[0]), clock=lambda: now[0])
    source.open()
    exporter = Exporter(process_metrics=False)
    for _ in range(2):
        now[0] += 1.0
        samples = [source.read(i, tier) for tier in Tier for i in range(8)]
        exporter.render(samples)
        assert (exporter.body(False, False), exporter.body(True, False)) == library_renders(samples)
    assert exporter.body(False, False).count(b"\n") > 500


@settings(max_examples=80, deadline=None)
@given(values=st.lists(st.tuples(label_value, st.floats()), min_size=1, max_size=5))
def test_cached_lines_equal_prometheus_clients_for_any_labels_and_values(values: list[tuple[str, float]]) -> None:
    exporter = Exporter(process_metrics=False)
    for round_ in range(2):  # values change, labels stay: the second render reuses every line
        s = Sample("gpu0", "fast", 1.0)
        for i, (uuid, value) in enumerate(values):
            s.add("gpumon_power_draw_watts", (("gpu", str(i)), ("uuid", uuid)), value + round_)
            s.add("gpumon_gpu_info", (("gpu", str(i)), ("name", uuid)), 1.0)
        exporter.render([s])
        assert (exporter.body(False, False), exporter.body(True, False)) == library_renders([s])
