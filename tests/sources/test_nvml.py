"""The nvml source against the pynvml API answered from the H200 capture (real pynvml exceptions)."""

from __future__ import annotations

import math
import threading
from typing import Any

import pynvml
import pytest

from gpumon import catalog
from gpumon.model import BackendUnavailable, Sample, Tier
from gpumon.sources.base import Unit, UnitLost
from gpumon.sources.capture import Capture, CaptureNvml, Faults
from gpumon.sources.nvml import NvmlSource
from tests.conftest import FakeClock

# The H200 capture has no NVLink: its NVLink metrics are unsupported on every GPU.
# Counted by name: NVLink fields (90, 138, 139) and GPM totals have no "nvlink" in their reading or key.
NO_NVLINK = sum(1 for m in catalog.METRICS if m.source == "nvml" and m.name.startswith("gpumon_nvlink_"))

NOT_SUPPORTED = {"err": "NVMLError_NotSupported(3)", "us_first": 1.0, "us_med": 1.0, "us_p90": 1.0}


def values(sample: Sample) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(name, tuple(p for p in labels if p[0] not in ("gpu", "uuid"))): v for name, labels, v in sample.values}


def names(sample: Sample) -> set[str]:
    return {name for name, _, _ in sample.values}


def opened(capture: Capture, clock: FakeClock, **kw: Any) -> tuple[NvmlSource, CaptureNvml]:
    fake = CaptureNvml(capture, clock=clock, **{k: v for k, v in kw.items() if k != "opt_ins"})
    source = NvmlSource(fake, clock=clock, **{k: v for k, v in kw.items() if k == "opt_ins"})
    source.open()
    return source, fake


def probe(capture: Capture, getter: str) -> Any:
    return capture.probe["devices"][0]["getters"][getter]["ok"]


def test_static_facts_match_probe(capture: Capture, clock: FakeClock) -> None:
    source, _ = opened(capture, clock)
    (device,) = source.devices
    assert device.uuid == probe(capture, "nvmlDeviceGetUUID")
    assert device.name == "NVIDIA H200"
    assert device.pci_bus_id == "00000000:00:06.0"
    assert device.architecture == "hopper"
    assert device.gpm_supported
    assert device.driver_version == "580.159.04"
    assert device.cuda_driver_version == "13.0"
    static = values(source.read(0, Tier.STATIC))
    assert static[("gpumon_power_limit_max_watts", ())] == 700.0
    assert static[("gpumon_pcie_link_max_generation", ())] == 5
    assert static[("gpumon_temperature_threshold_celsius", (("threshold", "slowdown"),))] == 89
    assert static[("gpumon_sm_clock_max_hertz", ())] == 1980e6


def test_fast_tier_follows_the_trace_in_base_units(capture: Capture, clock: FakeClock) -> None:
    source, fake = opened(capture, clock)
    clock.advance(1.0)  # GPM needs two samples >= 100 ms apart
    sample = source.read(0, Tier.FAST)
    rec = fake._record(0)
    got = values(sample)
    assert got[("gpumon_power_draw_watts", ())] == pytest.approx(rec["power_mw"] / 1000)
    assert got[("gpumon_memory_used_bytes", ())] == rec["mem"]["used"]
    assert got[("gpumon_memory_reserved_bytes", ())] == rec["mem"]["reserved"]
    assert got[("gpumon_gpu_utilization_ratio", ())] == pytest.approx(rec["util"]["gpu"] / 100)
    assert got[("gpumon_sm_clock_hertz", ())] == rec["sm_clock_mhz"] * 1e6
    assert got[("gpumon_memory_temperature_celsius", ())] == rec["fields"]["mem_temp_c"]
    assert got[("gpumon_clock_event_reason_active", (("reason", "gpu_idle"),))] == 1.0
    assert ("gpumon_sm_active_ratio", ()) in got
    assert "gpumon_energy_joules_total" not in names(sample)  # slow tier
    # Every value is finite and every name is in the catalog.
    assert all(math.isfinite(v) for v in got.values())
    assert names(sample) <= set(catalog.BY_NAME)


def test_gpm_distinguishes_pcie_copies_from_sm_activity(capture: Capture, clock: FakeClock) -> None:
    source, _ = opened(capture, clock)
    phases = {p["name"]: p for p in capture.phases}
    t0 = capture.traces[0][0]["t"]
    clock.advance(phases["pcie"]["start"] - t0 + 1.0)
    source.read(0, Tier.FAST)
    clock.advance(2.0)
    got = values(source.read(0, Tier.FAST))
    assert got[("gpumon_gpu_utilization_ratio", ())] > 0.9
    assert got[("gpumon_sm_active_ratio", ())] < 0.05
    assert got[("gpumon_pcie_tx_bytes_per_second", ())] + got[("gpumon_pcie_rx_bytes_per_second", ())] > 1e9


def test_first_gpm_poll_too_soon_yields_nothing(capture: Capture, clock: FakeClock) -> None:
    source, _ = opened(capture, clock)
    clock.advance(0.05)
    assert "gpumon_sm_active_ratio" not in names(source.read(0, Tier.FAST))
    clock.advance(0.1)
    assert "gpumon_sm_active_ratio" in names(source.read(0, Tier.FAST))


def test_non_finite_gpm_values_are_dropped(capture: Capture, clock: FakeClock) -> None:
    for rec in capture.traces[0]:
        rec["gpm"]["sm_util"] = float("nan")
    source, _ = opened(capture, clock)
    clock.advance(1.0)
    sample = source.read(0, Tier.FAST)
    assert "gpumon_sm_active_ratio" not in names(sample)
    assert "gpumon_tensor_active_ratio" in names(sample)


def test_slow_tier(capture: Capture, clock: FakeClock) -> None:
    source, _ = opened(capture, clock)
    got = values(source.read(0, Tier.SLOW))
    assert got[("gpumon_energy_joules_total", ())] == pytest.approx(capture.traces[0][0]["energy_mj_call"] / 1000)
    assert got[("gpumon_ecc_aggregate_errors_total", (("severity", "corrected"),))] == 31
    assert got[("gpumon_remapped_rows_total", (("cause", "uncorrectable"),))] == 0
    assert got[("gpumon_pcie_replays_total", ())] == 1
    assert got[("gpumon_pcie_link_width", ())] == 16
    assert got[("gpumon_clock_throttle_seconds_total", (("reason", "low_utilization"),))] == pytest.approx(44.296647136)
    # Violation policies the driver rejects are simply absent.
    assert all(k[1] != (("reason", "sync_boost_x"),) for k in got)


def test_not_supported_means_no_series_counted_and_logged_once(
        capture: Capture, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    capture.probe["devices"][0]["getters"]["nvmlDeviceGetPcieReplayCounter"] = NOT_SUPPORTED
    for rec in capture.traces[0]:
        rec["power_mw"] = {"err": "NVMLError_NotSupported"}
    logged: list[dict[str, Any]] = []
    from gpumon.sources import nvml as nvml_module
    monkeypatch.setattr(nvml_module.log, "info", lambda event, **kw: logged.append({"event": event, **kw}))
    source, fake = opened(capture, clock)
    calls = {"n": 0}
    real = fake.nvmlDeviceGetPowerUsage

    def counting(handle: Any) -> int:
        calls["n"] += 1
        return real(handle)
    fake.nvmlDeviceGetPowerUsage = counting  # type: ignore[method-assign]
    for _ in range(3):
        clock.advance(1.0)
        fast = source.read(0, Tier.FAST)
        slow = source.read(0, Tier.SLOW)
    assert "gpumon_power_draw_watts" not in names(fast)
    assert "gpumon_pcie_replays_total" not in names(slow)
    assert calls["n"] == 1  # not asked again once NVML said NotSupported
    assert source.unsupported_count(0) == NO_NVLINK + 2
    assert [e["reading"] for e in logged if e["event"].startswith("metric not available")] == [
        "power_usage", "pcie_replay"]
    assert source.error_counts() == {}


def test_per_field_not_supported(capture: Capture, clock: FakeClock) -> None:
    for rec in capture.traces[0]:
        rec["fields"]["mem_temp_c"] = {"err": 3}
    source, _ = opened(capture, clock)
    assert "gpumon_memory_temperature_celsius" not in names(source.read(0, Tier.FAST))
    assert source.unsupported_count(0) == NO_NVLINK + 1


def test_without_gpm_sm_activity_is_absent_not_faked(capture: Capture, clock: FakeClock) -> None:
    capture.probe["devices"][0]["gpm"]["support"] = {"version": 1, "isSupportedDevice": 0}
    source, _ = opened(capture, clock)
    assert not source.devices[0].gpm_supported
    clock.advance(1.0)
    got = names(source.read(0, Tier.FAST))
    assert "gpumon_sm_active_ratio" not in got
    assert "gpumon_gpu_utilization_ratio" in got
    assert source.unsupported_count(0) == NO_NVLINK + sum(1 for m in catalog.METRICS if m.reading == "gpm"
                                                               and not m.name.startswith("gpumon_nvlink_"))


def test_memory_info_v1_fallback_on_old_driver(capture: Capture, clock: FakeClock) -> None:
    source, fake = opened(capture, clock)
    real = fake.nvmlDeviceGetMemoryInfo

    def v1_only(handle: Any, version: int | None = None) -> Any:
        if version:
            raise pynvml.NVMLError_FunctionNotFound()
        return real(handle)
    fake.nvmlDeviceGetMemoryInfo = v1_only  # type: ignore[method-assign]
    got = names(source.read(0, Tier.FAST))
    assert "gpumon_memory_used_bytes" in got
    assert "gpumon_memory_reserved_bytes" not in got


def test_other_errors_are_counted_and_skipped(capture: Capture, clock: FakeClock) -> None:
    faults = Faults(errors=[("nvmlDeviceGetUtilizationRates", None, pynvml.NVML_ERROR_TIMEOUT)])
    source, _ = opened(capture, clock, faults=faults)
    for _ in range(2):
        sample = source.read(0, Tier.FAST)
    assert "gpumon_gpu_utilization_ratio" not in names(sample)
    assert "gpumon_memory_used_bytes" in names(sample)
    assert source.error_counts() == {("nvmlDeviceGetUtilizationRates", "NVMLError_Timeout"): 2}
    assert source.unsupported_count(0) == NO_NVLINK + 0  # a transient error is not "unsupported"


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_GPU_IS_LOST, pynvml.NVML_ERROR_UNKNOWN])
def test_lost_gpu_raises_device_lost_and_reopens(capture: Capture, clock: FakeClock, code: int) -> None:
    faults = Faults(errors=[("nvmlDeviceGetPowerUsage", 1, code)], lost=[(1, 10.0, 20.0)])
    source, fake = opened(capture, clock, faults=faults, gpus=2)
    source.read(0, Tier.FAST)
    with pytest.raises(UnitLost) as info:
        source.read(1, Tier.FAST)
    assert info.value.unit == Unit("gpu1", gpu=1)
    fake.faults.errors.clear()
    clock.advance(10.0)
    with pytest.raises(UnitLost):
        source.reopen(Unit("gpu1", gpu=1))
    clock.advance(10.0)
    source.reopen(Unit("gpu1", gpu=1))
    source.read(1, Tier.FAST)


def test_opt_in_process_pids(capture: Capture, clock: FakeClock) -> None:
    t0 = capture.traces[0][0]["t"]
    with_procs = next(r for r in capture.traces[0] if r["procs"])
    source, _ = opened(capture, clock, opt_ins=frozenset({"process_pids"}))
    clock.advance(with_procs["t"] - t0)
    got = values(source.read(0, Tier.FAST))
    pid = str(with_procs["procs"][0]["pid"])
    assert got[("gpumon_process_memory_bytes", (("pid", pid),))] == with_procs["procs"][0]["used"]
    assert got[("gpumon_compute_processes", ())] == 1
    source.configure(frozenset())
    assert "gpumon_process_memory_bytes" not in names(source.read(0, Tier.FAST))


def test_init_failure_is_one_sentence(capture: Capture, clock: FakeClock) -> None:
    fake = CaptureNvml(capture, clock=clock, faults=Faults(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND))
    with pytest.raises(BackendUnavailable, match=r"libnvidia-ml.so.1\) could not be loaded"):
        NvmlSource(fake).open()
    fake = CaptureNvml(capture, clock=clock, faults=Faults(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED))
    with pytest.raises(BackendUnavailable, match="driver is not loaded"):
        NvmlSource(fake).open()


def test_xid_events_reach_the_callback(capture: Capture) -> None:
    import time
    fake = CaptureNvml(capture, gpus=2, faults=Faults(xids=[(1, 0.05, 79)]))
    source = NvmlSource(fake)
    source.open()
    got: list[tuple[int, int]] = []
    done = threading.Event()

    def on_xid(gpu: int, xid: int, at: float) -> None:
        got.append((gpu, xid))
        done.set()
    source.start_events(on_xid)
    try:
        assert done.wait(5.0)
    finally:
        t = time.monotonic()
        source.stop_events()
        assert time.monotonic() - t < 2.0
    assert got == [(1, 79)]


def test_every_nvml_catalog_reading_has_a_reader() -> None:
    from gpumon.sources.nvml_readers import READERS
    for m in catalog.METRICS:
        if m.source == "nvml":
            assert m.reading in READERS, m.name  # registered with @reads, with the NVML call it makes


def test_clock_reasons_on_a_driver_without_the_event_reason_calls(capture: Capture, clock: FakeClock) -> None:
    getters = capture.probe["devices"][0]["getters"]
    del getters["nvmlDeviceGetSupportedClocksEventReasons"]
    for rec in capture.traces[0]:
        del rec["clocks_event_reasons"]
    del getters["nvmlDeviceGetCurrentClocksEventReasons"]
    source, _ = opened(capture, clock)
    got = values(source.read(0, Tier.FAST))
    assert got[("gpumon_clock_event_reason_active", (("reason", "gpu_idle"),))] == 1.0  # from ThrottleReasons


def test_nvlink_active_links_only(capture: Capture, clock: FakeClock) -> None:
    params = capture.probe["devices"][0]["parametrized"]
    for link, state in ((0, 1), (1, 1), (2, 0)):
        params[f"nvmlDeviceGetNvLinkState({link})"] = {"ok": state}
        for counter in range(4):
            params[f"nvmlDeviceGetNvLinkErrorCounter({link},{counter})"] = {"ok": 10 * link + counter}
    params["nvmlDeviceGetNvLinkState(3)"] = {"err": "NVMLError_InvalidArgument(2)"}  # ends the scan
    gpm = capture.probe["devices"][0]["gpm"]["metrics"]
    gpm["64"] = {"ret": 0, "value": 2.0}  # link 1 RX, MiB/s
    with_nvlink_speed_and_totals(capture, speed_mbps=25000)
    source, fake = opened(capture, clock)
    clock.advance(1.0)
    slow = values(source.read(0, Tier.SLOW))  # the speed is read in the slow tier, before the ratio
    fast = values(source.read(0, Tier.FAST))
    assert fast[("gpumon_nvlink_rx_bytes_per_second", (("link", "1"),))] == 2.0 * 1048576
    assert ("gpumon_nvlink_rx_bytes_per_second", (("link", "2"),)) not in fast  # inactive: no series
    assert slow[("gpumon_nvlink_up", (("link", "0"),))] == 1.0
    assert slow[("gpumon_nvlink_errors_total", (("link", "1"), ("type", "crc_flit")))] == 12
    assert {k[1][0][1] for k in slow if k[0] == "gpumon_nvlink_up"} == {"0", "1"}
    # Speed (MB/s, decimal) once per GPU; utilisation per active link and direction = rate / speed.
    assert slow[("gpumon_nvlink_speed_bytes_per_second", ())] == 25000e6
    assert fast[("gpumon_nvlink_utilization_ratio", (("link", "1"), ("direction", "rx")))] == pytest.approx(
        2.0 * 1048576 / 25000e6)
    assert fast[("gpumon_nvlink_utilization_ratio", (("link", "0"), ("direction", "tx")))] == 0.0
    assert {k[1] for k in fast if k[0] == "gpumon_nvlink_utilization_ratio"} == {
        (("link", link), ("direction", d)) for link in ("0", "1") for d in ("rx", "tx")}
    rec = fake._record(0)
    assert fast[("gpumon_nvlink_total_rx_bytes_per_second", ())] == rec["gpm"]["nvlink_rx_mibps"] * 1048576
    assert fast[("gpumon_nvlink_total_tx_bytes_per_second", ())] == rec["gpm"]["nvlink_tx_mibps"] * 1048576
    assert fast[("gpumon_nvlink_rx_bytes_total", ())] == rec["fields"]["nvlink_rx_kib"] * 1024
    assert fast[("gpumon_nvlink_tx_bytes_total", ())] == rec["fields"]["nvlink_tx_kib"] * 1024
    assert source.unsupported_count(0) == 0
    assert source.error_counts() == {}


def with_nvlink_speed_and_totals(capture: Capture, speed_mbps: int | None) -> None:
    """Give the (NVLink-less) H200 capture field 90, fields 138/139 and GPM totals; speed None: refused."""
    by_id = capture.probe["devices"][0]["fields"]["by_id"]
    by_id["90"] = {"ret": 0, "type": 1, "value": speed_mbps} if speed_mbps else {"ret": 3, "type": 1}
    for i, rec in enumerate(capture.traces[0]):
        rec["fields"]["nvlink_rx_kib"], rec["fields"]["nvlink_tx_kib"] = 1000 + 7 * i, 2000 + 9 * i
        rec["gpm"]["nvlink_rx_mibps"], rec["gpm"]["nvlink_tx_mibps"] = 3.0, 4.0


def test_nvlink_without_speed_has_no_utilisation_and_no_error(capture: Capture, clock: FakeClock) -> None:
    params = capture.probe["devices"][0]["parametrized"]
    for link in (0, 1):
        params[f"nvmlDeviceGetNvLinkState({link})"] = {"ok": 1}
        for counter in range(4):
            params[f"nvmlDeviceGetNvLinkErrorCounter({link},{counter})"] = {"ok": 0}
    params["nvmlDeviceGetNvLinkState(2)"] = {"err": "NVMLError_InvalidArgument(2)"}
    capture.probe["devices"][0]["gpm"]["metrics"]["62"] = {"ret": 0, "value": 5.0}  # link 0 RX, MiB/s
    with_nvlink_speed_and_totals(capture, speed_mbps=None)  # field 90 answers NotSupported
    source, _ = opened(capture, clock)
    for _ in range(2):
        clock.advance(1.0)
        slow, fast = names(source.read(0, Tier.SLOW)), values(source.read(0, Tier.FAST))
    assert "gpumon_nvlink_speed_bytes_per_second" not in slow
    assert fast[("gpumon_nvlink_rx_bytes_per_second", (("link", "0"),))] == 5.0 * 1048576  # rates stay
    assert ("gpumon_nvlink_rx_bytes_total", ()) in fast
    assert not [k for k in fast if k[0] == "gpumon_nvlink_utilization_ratio"]
    assert source.error_counts() == {}
    assert source.unsupported_count(0) == 2  # the speed, and the ratio that needs it


def test_nvlink_speed_of_zero_gives_no_ratio(capture: Capture, clock: FakeClock) -> None:
    params = capture.probe["devices"][0]["parametrized"]
    params["nvmlDeviceGetNvLinkState(0)"] = {"ok": 1}
    params["nvmlDeviceGetNvLinkState(1)"] = {"err": "NVMLError_InvalidArgument(2)"}
    for counter in range(4):
        params[f"nvmlDeviceGetNvLinkErrorCounter(0,{counter})"] = {"ok": 0}
    with_nvlink_speed_and_totals(capture, speed_mbps=0)
    capture.probe["devices"][0]["fields"]["by_id"]["90"] = {"ret": 0, "type": 1, "value": 0}
    source, _ = opened(capture, clock)
    clock.advance(1.0)
    slow, fast = names(source.read(0, Tier.SLOW)), names(source.read(0, Tier.FAST))
    assert "gpumon_nvlink_rx_bytes_per_second" in fast
    assert "gpumon_nvlink_speed_bytes_per_second" not in slow and "gpumon_nvlink_utilization_ratio" not in fast
    assert source.error_counts() == {}


def test_one_refused_nvlink_error_counter_leaves_the_others(capture: Capture, clock: FakeClock) -> None:
    params = capture.probe["devices"][0]["parametrized"]
    for link in (0, 1):
        params[f"nvmlDeviceGetNvLinkState({link})"] = {"ok": 1}
        for counter in range(3):
            params[f"nvmlDeviceGetNvLinkErrorCounter({link},{counter})"] = {"ok": 10 * link + counter}
        params[f"nvmlDeviceGetNvLinkErrorCounter({link},3)"] = {"err": "NVMLError_NotSupported(3)"}  # CRC data
    params["nvmlDeviceGetNvLinkState(2)"] = {"err": "NVMLError_InvalidArgument(2)"}
    source, _ = opened(capture, clock)
    for _ in range(2):  # the refused kind is remembered, not asked again and not counted as an error
        slow = values(source.read(0, Tier.SLOW))
    errors = {(dict(labels)["link"], dict(labels)["type"]): v
              for (name, labels), v in slow.items() if name == "gpumon_nvlink_errors_total"}
    assert errors == {(str(link), kind): 10 * link + code for link in (0, 1)
                      for code, kind in enumerate(("replay", "recovery", "crc_flit"))}
    assert source.error_counts() == {}


def test_plain_view_reads_and_writes_the_same_memory_as_pynvmls_structures() -> None:
    import pynvml

    from gpumon.sources.nvml_readers import _field_value
    from gpumon.sources.nvml_readers import plain_view as _plain_view

    values = (pynvml.c_nvmlFieldValue_t * 3)()
    for i, v in enumerate(values):
        v.fieldId, v.nvmlReturn, v.valueType = 100 + i, i, pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
        v.value.ullVal = 2**40 + i
    view = _plain_view(values)
    assert type(view[0]).__getattribute__ is object.__getattribute__  # no pynvml hook on the way
    assert [(v.fieldId, v.nvmlReturn, _field_value(v)) for v in view] == [(100 + i, i, 2**40 + i) for i in range(3)]
    request = pynvml.c_nvmlGpmMetricsGet_t()
    _plain_view(request.metrics)[4].metricId = 7
    assert request.metrics[4].metricId == 7
    assert _plain_view([1, 2]) == [1, 2]  # not ctypes: left as it is


def test_nvlink_byte_counters_sum_all_links(clock: FakeClock) -> None:
    """Fields 138/139 read one link per scopeId; gpumon asks for UINT_MAX, the sum of all links
    (with scopeId 0 it exported link 0 alone: an 18x undercount on an H200 SXM)."""
    from gpumon.sources.capture import load_capture
    from tests.fixtures.nvlink8 import generate

    nvlink = load_capture(generate.OUT_DIR)
    source, _ = opened(nvlink, clock)
    got = values(source.read(0, Tier.FAST))
    fields = nvlink.traces[0][0]["fields"]
    assert len(fields["nvlink_tx_kib"]) == generate.LINKS
    assert got[("gpumon_nvlink_tx_bytes_total", ())] == sum(fields["nvlink_tx_kib"]) * 1024.0
    assert got[("gpumon_nvlink_rx_bytes_total", ())] == sum(fields["nvlink_rx_kib"]) * 1024.0


def test_nvlink4_has_no_crc_data_counter_and_asking_is_no_error(capture: Capture, clock: FakeClock) -> None:
    params = capture.probe["devices"][0]["parametrized"]
    for link in (0, 1):
        params[f"nvmlDeviceGetNvLinkState({link})"] = {"ok": 1}
        params[f"nvmlDeviceGetNvLinkVersion({link})"] = {"ok": 6}  # NVML_NVLINK_VERSION_4_0
        for counter in range(5):
            params[f"nvmlDeviceGetNvLinkErrorCounter({link},{counter})"] = {"ok": 10 * link + counter}
        # what a driver may answer for CRC_DATA on NVLink 4.0: an invalid counter, not NotSupported
        params[f"nvmlDeviceGetNvLinkErrorCounter({link},3)"] = {"err": "NVMLError_InvalidArgument(2)"}
    params["nvmlDeviceGetNvLinkState(2)"] = {"err": "NVMLError_InvalidArgument(2)"}
    source, _ = opened(capture, clock)
    for _ in range(2):
        slow = values(source.read(0, Tier.SLOW))
    kinds = {dict(labels)["type"] for (name, labels) in slow if name == "gpumon_nvlink_errors_total"}
    assert kinds == {"replay", "recovery", "crc_flit", "ecc_data"}
    assert slow[("gpumon_nvlink_errors_total", (("link", "1"), ("type", "ecc_data")))] == 14
    assert source.error_counts() == {}


@pytest.mark.parametrize("refusal", [pynvml.NVML_ERROR_FUNCTION_NOT_FOUND, 25])  # 25: ARGUMENT_VERSION_MISMATCH
def test_memory_v1_drivers_are_labelled_and_used_includes_reserved(capture: Capture, clock: FakeClock,
                                                                   refusal: int) -> None:
    fake = CaptureNvml(capture, clock=clock)
    real = fake.nvmlDeviceGetMemoryInfo

    def v1_only(handle: Any, version: int | None = None) -> Any:
        if version:
            raise pynvml.NVMLError(refusal)
        return real(handle)
    fake.nvmlDeviceGetMemoryInfo = v1_only  # type: ignore[method-assign]
    source = NvmlSource(fake, clock=clock)
    source.open()
    assert source.devices[0].memory_info == "v1"
    got = values(source.read(0, Tier.FAST))
    total, free = got[("gpumon_memory_total_bytes", ())], got[("gpumon_memory_free_bytes", ())]
    assert got[("gpumon_memory_used_bytes", ())] == total - free  # reserved included, as v1 counts it
    assert ("gpumon_memory_reserved_bytes", ()) not in got
    assert source.error_counts() == {}
    v2, _ = opened(capture, clock)
    assert v2.devices[0].memory_info == "v2"


def test_board_limit_and_reliability_clock_event_reasons(capture: Capture, clock: FakeClock) -> None:
    getters = capture.probe["devices"][0]["getters"]
    getters["nvmlDeviceGetSupportedClocksEventReasons"]["ok"] = 0x7FF
    for rec in capture.traces[0]:
        rec["clocks_event_reasons"] = 0x600  # nvmlClocksThrottleReasonBoardLimit | Reliability
    source, _ = opened(capture, clock)
    got = values(source.read(0, Tier.FAST))
    assert got[("gpumon_clock_event_reason_active", (("reason", "board_limit"),))] == 1.0
    assert got[("gpumon_clock_event_reason_active", (("reason", "reliability"),))] == 1.0
    assert got[("gpumon_clock_event_reason_active", (("reason", "gpu_idle"),))] == 0.0
