"""gpumon's nvml source and sampler on the real pynvml, bound to the fake libnvidia-ml.so.1.

The same source code runs on CaptureNvml (the Python fake) in tests/test_nvml_source.py; here it
goes through pynvml's ctypes structs into C, and every scripted fault is met the way gpumon meets
it on a real GPU.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpumon import catalog
from gpumon import sampler as sampler_module
from gpumon.exporter import Exporter
from gpumon.model import BackendUnavailable, Sample, Tier
from gpumon.sampler import Intervals, Sampler
from gpumon.sources.base import Unit, UnitLost
from gpumon.sources.capture import CaptureNvml, load_capture
from gpumon.sources.nvml import NvmlSource
from gpumon.sources.replay import DEMO_CAPTURE
from gpumon.store import Store
from tests.conftest import FakeClock
from tests.fakenvml import StartAt, edited_capture
from tests.fakenvml.conftest import Fake

# The H200 capture has no NVLink: its NVLink metrics are unsupported on every GPU.
# Counted by name: NVLink fields (90, 138, 139) and GPM totals have no "nvlink" in their reading or key.
NO_NVLINK = sum(1 for m in catalog.METRICS if m.source == "nvml" and m.name.startswith("gpumon_nvlink_"))

CAPTURE = load_capture(DEMO_CAPTURE)
TRACE = CAPTURE.traces[0]
T0 = TRACE[0]["t"]
LAP_JOULES = (TRACE[-1]["energy_mj_call"] - TRACE[0]["energy_mj_call"]) / 1000 * len(TRACE) / (len(TRACE) - 1)
Values = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def values(sample: Sample) -> Values:
    return {(name, labels): v for name, labels, v in sample.values}


def names(sample: Sample) -> set[str]:
    return {name for name, _, _ in sample.values}


def middle_of(phase: str) -> float:
    p = next(p for p in CAPTURE.phases if p["name"] == phase)
    return float((p["start"] + p["end"]) / 2 - T0)


def opened(fake: Fake, *, opt_ins: frozenset[str] = frozenset(), **settings: Any) -> tuple[NvmlSource, FakeClock]:
    """The nvml source on the fake library; its GPM spacing clock is moved by hand."""
    fake.configure(**settings)
    clock = FakeClock()
    source = NvmlSource(fake.nvml, clock=clock, opt_ins=opt_ins)
    source.open()
    return source, clock


@pytest.fixture
def resolved(fake: Fake, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The names of the C functions pynvml looks up, in order."""
    names: list[str] = []
    real = fake.nvml._nvmlGetFunctionPointer

    def recording(name: str) -> Any:
        names.append(name)
        return real(name)
    monkeypatch.setattr(fake.nvml, "_nvmlGetFunctionPointer", recording)
    yield names


# --- the source ----------------------------------------------------------------------------------


def test_static_facts(fake: Fake) -> None:
    source, _ = opened(fake, gpus=2)
    first, copy = source.devices
    assert (first.name, first.architecture, first.pci_bus_id) == ("NVIDIA H200", "hopper", "00000000:00:06.0")
    assert first.uuid == CAPTURE.probe["devices"][0]["getters"]["nvmlDeviceGetUUID"]["ok"]
    assert (first.driver_version, first.cuda_driver_version, first.gpm_supported) == ("580.159.04", "13.0", True)
    assert copy.uuid != first.uuid and copy.pci_bus_id == "00000000:11:00.0"
    static = values(source.read(0, Tier.STATIC))
    assert static[("gpumon_power_limit_max_watts", first.labels)] == 700.0
    assert static[("gpumon_sm_clock_max_hertz", first.labels)] == 1980e6
    source.close()


@pytest.mark.parametrize("phase", ["idle", "compute", "membw", "pcie", "memfull", "bursty"])
def test_every_tier_reads_what_the_python_fake_reads(fake: Fake, phase: str) -> None:
    """The C library and capture.py agree on everything gpumon exports, at each load phase."""
    position = middle_of(phase)
    source, clock = opened(fake, gpus=2, speed=0, start=position, opt_ins=frozenset({"process_pids"}))
    oracle_nvml = CaptureNvml(load_capture(DEMO_CAPTURE), gpus=2, clock=StartAt(position))
    oracle = NvmlSource(oracle_nvml, clock=clock, opt_ins=frozenset({"process_pids"}))
    oracle.open()
    clock.advance(1.0)  # GPM: two samples at least 100 ms apart
    assert source.devices == oracle.devices
    first: dict[Tier, Values] = {}
    for gpu in (0, 1):
        for tier in Tier:
            got, want = values(source.read(gpu, tier)), values(oracle.read(gpu, tier))
            first.setdefault(tier, dict(got))
            # The one deliberate difference: the C library's energy counter keeps counting when
            # the trace loops (GPU 1 plays half a trace ahead), where capture.py's starts again.
            energy = ("gpumon_energy_joules_total", source.devices[gpu].labels)
            if energy in got:
                laps = (position + gpu * CAPTURE.duration(0) / 2) // CAPTURE.duration(0)
                assert got.pop(energy) == pytest.approx(want.pop(energy) + laps * LAP_JOULES)
            assert got == want, (gpu, tier, set(got.items()) ^ set(want.items()))
        assert source.unsupported_count(gpu) == oracle.unsupported_count(gpu)
    assert source.error_counts() == oracle.error_counts() == {}
    fast, labels = first[Tier.FAST], source.devices[0].labels
    if phase == "pcie":  # a kernel is "running" but the SMs idle: only GPM tells
        assert fast[("gpumon_gpu_utilization_ratio", labels)] > 0.9
        assert fast[("gpumon_sm_active_ratio", labels)] < 0.05
    if phase == "compute":
        assert fast[("gpumon_tensor_active_ratio", labels)] > 0.8
    source.close()


def test_gpumon_calls_nothing_the_library_lacks(fake: Fake, resolved: list[str]) -> None:
    source, clock = opened(fake, gpus=2, faults="xid 0 0 13\n")
    got = threading.Event()
    source.start_events(lambda gpu, xid, at: got.set())
    for tier in Tier:
        clock.advance(1.0)
        for gpu in (0, 1):
            source.read(gpu, tier)
    source.reopen(Unit("gpu1", gpu=1))
    assert got.wait(5)
    source.close()
    # Every function pynvml looked up was there (a missing one raises FunctionNotFound, which
    # the source would count as unsupported): nothing is absent that the H200 has.
    assert source.error_counts() == {}
    assert source.unsupported_count(0) == NO_NVLINK + 0
    assert {"nvmlInitWithFlags", "nvmlGpmMetricsGet", "nvmlDeviceGetFieldValues", "nvmlEventSetWait_v2",
            "nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetMemoryInfo_v2"} <= set(resolved)
    assert all(hasattr(fake.nvml.nvmlLib, name) for name in set(resolved))


def test_gpm_over_a_window_while_time_runs(fake: Fake) -> None:
    """With the trace playing, the second GPM sample averages what happened in between."""
    source, clock = opened(fake, speed=10, start=middle_of("pcie") - 2.0)
    time.sleep(0.3)  # three trace seconds of PCIe copies
    clock.advance(1.0)
    got = values(source.read(0, Tier.FAST))
    labels = source.devices[0].labels
    assert got[("gpumon_sm_active_ratio", labels)] < 0.05
    assert got[("gpumon_pcie_tx_bytes_per_second", labels)] + got[("gpumon_pcie_rx_bytes_per_second", labels)] > 1e9
    source.close()


def test_recorded_not_supported_makes_metrics_absent(fake: Fake, tmp_path: Path) -> None:
    def edit(probe: dict[str, Any], records: list[dict[str, Any]]) -> None:
        probe["devices"][0]["getters"]["nvmlDeviceGetPcieReplayCounter"] = {"err": "NVMLError_NotSupported(3)"}
        for r in records:
            r["power_mw"] = {"err": "NVMLError_NotSupported"}
            r["fields"]["mem_temp_c"] = {"err": 3}
    source, clock = opened(fake, capture=edited_capture(tmp_path / "capture", edit))
    for _ in range(2):
        clock.advance(1.0)
        fast, slow = source.read(0, Tier.FAST), source.read(0, Tier.SLOW)
    assert {"gpumon_power_draw_watts", "gpumon_memory_temperature_celsius"}.isdisjoint(names(fast))
    assert "gpumon_pcie_replays_total" not in names(slow)
    assert "gpumon_memory_used_bytes" in names(fast)
    assert source.unsupported_count(0) == NO_NVLINK + 3
    assert source.error_counts() == {}
    source.close()


def test_old_driver_fallbacks(fake: Fake) -> None:
    """Without MemoryInfo_v2 and the ClocksEvent names (drivers before 515 and 535), gpumon falls
    back to v1 memory and the ClocksThrottle names; the library answers both."""
    source, clock = opened(fake, faults=(
        "error nvmlDeviceGetMemoryInfo_v2 FunctionNotFound\n"
        "error nvmlDeviceGetSupportedClocksEventReasons FunctionNotFound\n"
        "error nvmlDeviceGetCurrentClocksEventReasons FunctionNotFound\n"))
    clock.advance(1.0)
    fast = values(source.read(0, Tier.FAST))
    labels = source.devices[0].labels
    assert ("gpumon_memory_used_bytes", labels) in fast
    assert not any(name == "gpumon_memory_reserved_bytes" for name, _ in fast)
    assert fast[("gpumon_clock_event_reason_active", (*labels, ("reason", "gpu_idle")))] == 1.0
    source.close()


def test_without_gpm_sm_activity_is_absent(fake: Fake, tmp_path: Path) -> None:
    def edit(probe: dict[str, Any], records: list[dict[str, Any]]) -> None:
        probe["devices"][0]["gpm"]["support"] = {"version": 1, "isSupportedDevice": 0}
    source, clock = opened(fake, capture=edited_capture(tmp_path / "capture", edit))
    assert not source.devices[0].gpm_supported
    clock.advance(1.0)
    fast = names(source.read(0, Tier.FAST))
    assert "gpumon_sm_active_ratio" not in fast and "gpumon_gpu_utilization_ratio" in fast
    assert source.unsupported_count(0) == NO_NVLINK + sum(1 for m in catalog.METRICS if m.reading == "gpm"
                                                               and not m.name.startswith("gpumon_nvlink_"))
    source.close()


def test_process_list(fake: Fake) -> None:
    rec = next(r for r in TRACE if r["procs"])
    source, _ = opened(fake, speed=0, start=rec["t"] - T0, opt_ins=frozenset({"process_pids"}))
    got = values(source.read(0, Tier.FAST))
    labels = source.devices[0].labels
    pid, used = rec["procs"][0]["pid"], rec["procs"][0]["used"]
    assert got[("gpumon_process_memory_bytes", (*labels, ("pid", str(pid))))] == used
    assert got[("gpumon_compute_processes", labels)] == 1
    source.close()


def test_xid_events_reach_the_callback(fake: Fake) -> None:
    source, _ = opened(fake, gpus=2, faults="xid 1 0.05 79\n")
    got: list[tuple[int, int]] = []
    done = threading.Event()

    def on_xid(gpu: int, xid: int, at: float) -> None:
        got.append((gpu, xid))
        done.set()
    source.start_events(on_xid)
    assert done.wait(5.0)
    t = time.monotonic()
    source.close()
    assert time.monotonic() - t < 2.0
    assert got == [(1, 79)]


@pytest.mark.parametrize("code", ["GpuIsLost", "Unknown"])
def test_lost_gpu_raises_device_lost_and_reopens(fake: Fake, code: str) -> None:
    before = time.monotonic()
    source, _ = opened(fake, gpus=2, faults=f"error nvmlDeviceGetPowerUsage {code} 1\nlost 1 0.3 0.8\n")
    after = time.monotonic()  # nvmlInit happened in between: the fault times count from it
    source.read(0, Tier.FAST)
    with pytest.raises(UnitLost) as info:
        source.read(1, Tier.FAST)
    assert info.value.unit == Unit("gpu1", gpu=1)
    time.sleep(max(0.0, after + 0.35 - time.monotonic()))
    assert time.monotonic() - before < 0.8
    with pytest.raises(UnitLost):  # lost now: re-acquiring it by UUID fails too
        source.reopen(Unit("gpu1", gpu=1))
    time.sleep(max(0.0, after + 0.85 - time.monotonic()))
    source.reopen(Unit("gpu1", gpu=1))
    source.read(1, Tier.SLOW)
    source.close()


@pytest.mark.parametrize(("fault", "message"), [
    ("init_error LibraryNotFound", r"libnvidia-ml.so.1\) could not be loaded"),
    ("init_error DriverNotLoaded", "driver is not loaded"),
    ("init_error NoPermission", r"NVML failed to initialise: Insufficient Permissions \(NVMLError_NoPermission\)"),
])
def test_init_failure_is_a_clear_message(fake: Fake, fault: str, message: str) -> None:
    fake.configure(faults=fault + "\n")
    with pytest.raises(BackendUnavailable, match=message):
        NvmlSource(fake.nvml).open()


def test_bad_capture_is_a_clear_message(fake: Fake, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    fake.configure(capture=tmp_path / "missing")
    with pytest.raises(BackendUnavailable, match=r"NVML failed to initialise: Unknown Error \(NVMLError_Unknown\)"):
        NvmlSource(fake.nvml).open()
    assert "missing: capture not found" in capfd.readouterr().err


# --- the sampler ---------------------------------------------------------------------------------


def scraped(sampler: Sampler) -> Values:
    """/metrics as the exporter following the sampler's rounds would render it now."""
    exporter = Exporter(process_metrics=False)
    exporter.render(sampler.fresh(time.time()))
    out = {}
    for family in text_string_to_metric_families(exporter.body(False, False).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "uuid")))] = s.value
    return out


Build = Callable[..., Sampler]


@pytest.fixture
async def build(fake: Fake) -> AsyncIterator[Build]:
    made: list[Sampler] = []

    def make(faults: str = "", gpus: int = 2, fast: float = 0.2, deadline: float | None = None) -> Sampler:
        fake.configure(gpus=gpus, faults=faults)
        s = Sampler([NvmlSource(fake.nvml)], Store(100), Intervals(fast, 5.0, deadline))
        made.append(s)
        return s
    yield make
    for s in made:
        await s.stop()


async def test_sampler_lost_gpu_goes_down_and_comes_back(build: Build, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sampler_module, "REINIT_BACKOFF_S", (0.3,))
    s = build("lost 1 0.5 1.5\n")
    await s.start()
    await asyncio.sleep(1.0)
    down = scraped(s)
    assert down[("gpumon_gpu_up", (("gpu", "1"),))] == 0.0
    assert ("gpumon_power_draw_watts", (("gpu", "1"),)) not in down
    assert ("gpumon_power_draw_watts", (("gpu", "0"),)) in down
    await asyncio.sleep(1.5)
    up = scraped(s)
    assert up[("gpumon_gpu_up", (("gpu", "1"),))] == 1.0
    assert up[("gpumon_gpu_reinit_total", (("gpu", "1"),))] == 1.0
    assert ("gpumon_power_draw_watts", (("gpu", "1"),)) in up
    assert ("gpumon_power_limit_max_watts", (("gpu", "1"),)) in up  # static facts re-read


async def test_sampler_hung_call_does_not_stall_other_gpus(build: Build) -> None:
    s = build("hang nvmlDeviceGetPowerUsage 10 1 0.3\n", fast=0.2, deadline=0.15)
    await s.start()
    await asyncio.sleep(1.6)
    now = time.time()
    gpu0 = next(x for x in s.store.latest() if x.unit == "gpu0" and x.tier == "fast")
    assert now - gpu0.timestamp < 0.5
    got = scraped(s)
    assert got[("gpumon_poll_deadline_exceeded_total", (("gpu", "1"), ("tier", "fast")))] >= 3
    assert got[("gpumon_poll_deadline_exceeded_total", (("gpu", "0"), ("tier", "fast")))] == 0
    assert ("gpumon_power_draw_watts", (("gpu", "0"),)) in got
    assert ("gpumon_power_draw_watts", (("gpu", "1"),)) not in got
    assert got[("gpumon_gpu_up", (("gpu", "1"),))] == 1.0  # hung is not lost
    t = time.monotonic()
    await s.stop()  # nvmlShutdown releases the hung call
    assert time.monotonic() - t < 3.0


async def test_sampler_counts_xids(build: Build) -> None:
    s = build("xid 0 0.1 48\nxid 0 0.2 48\nxid 1 0.2 79\n")
    await s.start()
    got: Values = {}
    for _ in range(50):
        await asyncio.sleep(0.1)
        got = scraped(s)
        if got.get(("gpumon_xid_errors_total", (("gpu", "1"), ("xid", "79")))) == 1.0:
            break
    assert got[("gpumon_xid_errors_total", (("gpu", "0"), ("xid", "48")))] == 2.0
    assert got[("gpumon_last_xid_timestamp_seconds", (("gpu", "1"),))] == pytest.approx(time.time(), abs=10)


async def test_sampler_exports_errors_by_call(build: Build) -> None:
    s = build("error nvmlDeviceGetUtilizationRates Timeout 0\n")
    await s.open()
    await s.poll_round(Tier.FAST)
    got = scraped(s)
    key = ("gpumon_nvml_errors_total", (("call", "nvmlDeviceGetUtilizationRates"), ("error", "NVMLError_Timeout")))
    assert got[key] == 1.0
    assert ("gpumon_gpu_utilization_ratio", (("gpu", "1"),)) in got
    assert ("gpumon_gpu_utilization_ratio", (("gpu", "0"),)) not in got
