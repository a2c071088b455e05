"""The poll loop: parallel GPUs under deadlines, lost GPUs, hung calls, XID events, self-metrics; on
each fake NVML in turn."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pynvml
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpumon import catalog
from gpumon import sampler as sampler_module
from gpumon.exporter import Exporter
from gpumon.model import Tier
from gpumon.sampler import Intervals, Sampler
from gpumon.sources.nvml import NvmlSource
from gpumon.store import Store
from tests.support.faults import Faults, FaultyNvml
from tests.support.nvml import NvmlFake

Build = Callable[..., Sampler]


def scraped(sampler: Sampler) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics as the exporter following the sampler's rounds would render it now."""
    exporter = Exporter(process_metrics=False)
    exporter.render(sampler.fresh(time.time()))
    out = {}
    for family in text_string_to_metric_families(exporter.body(False, False).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "uuid")))] = s.value
    return out


@pytest.fixture
async def build(nvml_fake: NvmlFake) -> AsyncIterator[Build]:
    """Samplers over the nvml source on each fake in turn, misbehaving as `faults` says (in real time)."""
    made: list[Sampler] = []

    def make(faults: Faults | None = None, gpus: int = 2, fast: float = 0.2, deadline: float | None = None) -> Sampler:
        nvml = FaultyNvml(nvml_fake.start(gpus=gpus), faults or Faults())
        source = NvmlSource(nvml, backend="replay")
        s = Sampler([source], Store(100), Intervals(fast, 5.0, deadline))
        made.append(s)
        return s
    yield make
    for s in made:
        await s.stop()


async def test_ready_after_first_complete_fast_poll(build: Build) -> None:
    s = build()
    await s.open()
    assert not s.ready.is_set()
    await s.poll_round(Tier.FAST)
    assert s.ready.is_set()
    got = scraped(s)
    assert got[("gpumon_gpu_up", (("gpu", "1"),))] == 1.0
    assert got[("gpumon_build_info", (("backend", "replay"), ("capture", ""), ("version", "0.1.0")))] == 1.0


async def test_lost_gpu_goes_down_and_comes_back_others_unaffected(
        build: Build, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sampler_module, "REINIT_BACKOFF_S", (0.3,))
    s = build(Faults(lost=[(1, 0.5, 1.5)]))
    await s.start()
    await asyncio.sleep(1.0)
    down = scraped(s)
    assert down[("gpumon_gpu_up", (("gpu", "1"),))] == 0.0
    assert ("gpumon_power_draw_watts", (("gpu", "1"),)) not in down  # withdrawn, not stale
    assert ("gpumon_power_draw_watts", (("gpu", "0"),)) in down
    assert ("gpumon_gpu_info", (("architecture", "hopper"), ("cuda_driver_version", "13.0"),
            ("driver_version", "580.159.04"), ("gpm", "true"), ("gpu", "1"), ("memory_info", "v2"),
            ("name", "NVIDIA H200"), ("pci_bus_id", "00000000:11:00.0"), ("sm_activity_source", "gpm"))) in down
    await asyncio.sleep(1.5)
    up = scraped(s)
    assert up[("gpumon_gpu_up", (("gpu", "1"),))] == 1.0
    assert up[("gpumon_gpu_reinit_total", (("gpu", "1"),))] == 1.0
    assert ("gpumon_power_draw_watts", (("gpu", "1"),)) in up
    assert ("gpumon_power_limit_max_watts", (("gpu", "1"),)) in up  # static facts re-read


async def test_hung_call_does_not_delay_other_gpus_or_rounds(build: Build) -> None:
    s = build(Faults(hangs=[("nvmlDeviceGetPowerUsage", 1, 0.3, 10.0)]), fast=0.2, deadline=0.15)
    await s.start()
    await asyncio.sleep(1.6)
    now = time.time()
    gpu0 = next(x for x in s.store.latest() if x.unit == "gpu0" and x.tier == "fast")
    assert now - gpu0.timestamp < 0.5  # GPU 0 kept being polled on time
    got = scraped(s)
    assert got[("gpumon_poll_deadline_exceeded_total", (("gpu", "1"), ("tier", "fast")))] >= 3
    assert got[("gpumon_poll_deadline_exceeded_total", (("gpu", "0"), ("tier", "fast")))] == 0
    assert got[("gpumon_poll_duration_seconds", (("tier", "fast"),))] < 0.3
    assert ("gpumon_power_draw_watts", (("gpu", "0"),)) in got
    # GPU 1's last fast sample is older than three intervals plus the deadline: no longer exported.
    assert ("gpumon_power_draw_watts", (("gpu", "1"),)) not in got
    assert got[("gpumon_gpu_up", (("gpu", "1"),))] == 1.0  # hung is not lost


async def test_xid_event_is_counted(build: Build) -> None:
    s = build(Faults(xids=[(0, 0.1, 48), (0, 0.2, 48), (1, 0.2, 79)]))
    await s.start()
    for _ in range(50):
        await asyncio.sleep(0.1)
        got = scraped(s)
        if got.get(("gpumon_xid_errors_total", (("gpu", "1"), ("xid", "79")))) == 1.0:
            break
    assert got[("gpumon_xid_errors_total", (("gpu", "0"), ("xid", "48")))] == 2.0
    assert got[("gpumon_last_xid_timestamp_seconds", (("gpu", "1"),))] == pytest.approx(time.time(), abs=10)


async def test_errors_are_exported_by_call(build: Build) -> None:
    s = build(Faults(errors=[("nvmlDeviceGetUtilizationRates", 0, pynvml.NVML_ERROR_TIMEOUT)]))
    await s.open()
    await s.poll_round(Tier.FAST)
    got = scraped(s)
    key = ("gpumon_nvml_errors_total", (("call", "nvmlDeviceGetUtilizationRates"), ("error", "NVMLError_Timeout")))
    assert got[key] == 1.0
    nvlink = sum(1 for m in catalog.METRICS  # none in the capture
                 if m.source == "nvml" and m.name.startswith("gpumon_nvlink_"))
    assert got[("gpumon_unsupported_metrics", (("gpu", "0"),))] == nvlink
