"""gpumon's nvml source, one contract run on both fakes (CaptureNvml, and the fake libnvidia-ml.so.1
under the real pynvml): what it exports from the capture, in base units, and how it meets what a
driver refuses, a GPU that is lost and a call that fails (tests.support.faults wraps either fake).
Expected values come from the capture files."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import pynvml
import pytest

from gpumon import catalog
from gpumon.model import BackendUnavailable, Tier
from gpumon.sources.base import Unit, UnitLost
from gpumon.sources.capture import load_capture
from gpumon.sources.nvml import NvmlSource
from gpumon.sources.replay import DEMO_CAPTURE
from tests.fixtures.nvlink8 import generate
from tests.support.faults import Faults, FaultyNvml
from tests.support.nvml import (
    CaptureFake,
    LibraryFake,
    NvmlFake,
    Values,
    edited_capture,
    middle_of,
    names,
    opened,
    record_at,
    values,
)

CAPTURE = load_capture(DEMO_CAPTURE)
TRACE = CAPTURE.traces[0]
PROBE = CAPTURE.probe["devices"][0]
PHASES = ["idle", "compute", "membw", "pcie", "memfull", "bursty"]
DEVICE = ("gpu", "uuid")  # the device labels, left out of the keys of `values`
# The H200 capture has no NVLink: its NVLink metrics are unsupported on every GPU.
NO_NVLINK = sum(1 for m in catalog.METRICS if m.source == "nvml" and m.name.startswith("gpumon_nvlink_"))
GPM_NOT_NVLINK = sum(1 for m in catalog.METRICS if m.reading == "gpm" and not m.name.startswith("gpumon_nvlink_"))
Edit = Any


def read(source: NvmlSource, tier: Tier, gpu: int = 0) -> Values:
    return values(source.read(gpu, tier), without=DEVICE)


def on_edited(fake: NvmlFake, tmp_path: Path, edit: Edit, **kw: Any) -> tuple[NvmlSource, Any]:
    return opened(fake, capture=edited_capture(tmp_path / "capture", edit), **kw)


# --- what the source reads ------------------------------------------------------------------------


def test_static_facts_are_the_probes(nvml_fake: NvmlFake) -> None:
    source, _ = opened(nvml_fake, gpus=2)
    first, copy = source.devices
    assert first.uuid == PROBE["getters"]["nvmlDeviceGetUUID"]["ok"]
    assert (first.name, first.architecture, first.pci_bus_id) == ("NVIDIA H200", "hopper", "00000000:00:06.0")
    assert (first.driver_version, first.cuda_driver_version, first.gpm_supported) == ("580.159.04", "13.0", True)
    assert copy.uuid != first.uuid and copy.pci_bus_id != first.pci_bus_id
    static = read(source, Tier.STATIC)
    assert static[("gpumon_power_limit_max_watts", ())] == 700.0
    assert static[("gpumon_pcie_link_max_generation", ())] == 5
    assert static[("gpumon_temperature_threshold_celsius", (("threshold", "slowdown"),))] == 89
    assert static[("gpumon_sm_clock_max_hertz", ())] == 1980e6
    source.close()


@pytest.mark.parametrize("phase", PHASES)
def test_fast_tier_follows_the_trace_in_base_units(nvml_fake: NvmlFake, phase: str) -> None:
    position = middle_of(CAPTURE, phase)
    source, clock = opened(nvml_fake, at=position)
    clock.advance(1.0)  # GPM needs two samples >= 100 ms apart
    sample = source.read(0, Tier.FAST)
    got, rec = values(sample, without=DEVICE), record_at(CAPTURE, position)
    assert got[("gpumon_power_draw_watts", ())] == pytest.approx(rec["power_mw"] / 1000)
    assert got[("gpumon_memory_used_bytes", ())] == rec["mem"]["used"]
    assert got[("gpumon_memory_reserved_bytes", ())] == rec["mem"]["reserved"]
    assert got[("gpumon_gpu_utilization_ratio", ())] == pytest.approx(rec["util"]["gpu"] / 100)
    assert got[("gpumon_sm_clock_hertz", ())] == rec["sm_clock_mhz"] * 1e6
    assert got[("gpumon_memory_temperature_celsius", ())] == rec["fields"]["mem_temp_c"]
    assert got[("gpumon_sm_active_ratio", ())] == pytest.approx(rec["gpm"]["sm_util"] / 100)
    idle = float(bool(rec["clocks_event_reasons"] & 0x1))
    assert got[("gpumon_clock_event_reason_active", (("reason", "gpu_idle"),))] == idle
    assert "gpumon_energy_joules_total" not in names(sample)  # slow tier
    assert all(math.isfinite(v) for v in got.values())
    assert names(sample) <= set(catalog.BY_NAME)
    if phase == "pcie":  # a kernel is "running" but the SMs idle: only GPM tells
        assert got[("gpumon_gpu_utilization_ratio", ())] > 0.9
        assert got[("gpumon_sm_active_ratio", ())] < 0.05
        assert got[("gpumon_pcie_tx_bytes_per_second", ())] + got[("gpumon_pcie_rx_bytes_per_second", ())] > 1e9
    if phase == "compute":
        assert got[("gpumon_tensor_active_ratio", ())] > 0.8
    source.close()


def test_both_fakes_agree_on_every_series(library: LibraryFake) -> None:
    """Beyond the contract: at each phase, on two GPUs, the two fakes give gpumon the same series
    and values in every tier. The one deliberate difference is the energy counter across loops:
    the library's keeps counting (as a GPU's does), CaptureNvml's starts again with the trace."""
    lap_joules = (TRACE[-1]["energy_mj_call"] - TRACE[0]["energy_mj_call"]) / 1000 * len(TRACE) / (len(TRACE) - 1)
    opt_ins = frozenset({"process_pids"})
    for phase in PHASES:
        position = middle_of(CAPTURE, phase)
        source, clock = opened(library, gpus=2, at=position, opt_ins=opt_ins)
        oracle, oracle_clock = opened(CaptureFake(), gpus=2, at=position, opt_ins=opt_ins)
        clock.advance(1.0)
        oracle_clock.advance(1.0)
        assert source.devices == oracle.devices
        for gpu in (0, 1):
            for tier in Tier:
                got, want = read(source, tier, gpu), read(oracle, tier, gpu)
                energy = ("gpumon_energy_joules_total", ())
                if energy in got:
                    laps = (position + gpu * CAPTURE.duration(0) / 2) // CAPTURE.duration(0)
                    assert got.pop(energy) == pytest.approx(want.pop(energy) + laps * lap_joules)
                assert got == want, (phase, gpu, tier, set(got.items()) ^ set(want.items()))
            assert source.unsupported_count(gpu) == oracle.unsupported_count(gpu)
        assert source.error_counts() == oracle.error_counts() == {}
        source.close()
        oracle.close()


def test_first_gpm_poll_too_soon_yields_nothing(nvml_fake: NvmlFake) -> None:
    source, clock = opened(nvml_fake, at=middle_of(CAPTURE, "compute"))
    clock.advance(0.05)
    assert "gpumon_sm_active_ratio" not in names(source.read(0, Tier.FAST))
    clock.advance(0.1)
    assert "gpumon_sm_active_ratio" in names(source.read(0, Tier.FAST))
    source.close()


def test_slow_tier(nvml_fake: NvmlFake) -> None:
    source, _ = opened(nvml_fake, at=0.0)
    got = read(source, Tier.SLOW)
    assert got[("gpumon_energy_joules_total", ())] == pytest.approx(TRACE[0]["energy_mj_call"] / 1000)
    assert got[("gpumon_ecc_aggregate_errors_total", (("severity", "corrected"),))] == 31
    assert got[("gpumon_remapped_rows_total", (("cause", "uncorrectable"),))] == 0
    assert got[("gpumon_pcie_replays_total", ())] == 1
    assert got[("gpumon_pcie_link_width", ())] == 16
    assert got[("gpumon_clock_throttle_seconds_total", (("reason", "low_utilization"),))] == pytest.approx(
        44.296647136)
    assert all(k[1] != (("reason", "sync_boost_x"),) for k in got)  # policies the driver rejects are absent
    source.close()


# --- what the driver refuses ----------------------------------------------------------------------


def test_not_supported_means_no_series_counted_logged_once_and_not_asked_again(
        nvml_fake: NvmlFake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def edit(probe: dict[str, Any], records: list[dict[str, Any]]) -> None:
        probe["devices"][0]["getters"]["nvmlDeviceGetPcieReplayCounter"] = {"err": "NVMLError_NotSupported(3)"}
        for r in records:
            r["power_mw"] = {"err": "NVMLError_NotSupported"}
            r["fields"]["mem_temp_c"] = {"err": 3}
    logged: list[dict[str, Any]] = []
    from gpumon.sources import nvml as nvml_module
    monkeypatch.setattr(nvml_module.log, "info", lambda event, **kw: logged.append({"event": event, **kw}))
    source, clock = on_edited(nvml_fake, tmp_path, edit, faults=Faults())  # no faults: FaultyNvml counts calls
    for _ in range(3):
        clock.advance(1.0)
        fast, slow = names(source.read(0, Tier.FAST)), names(source.read(0, Tier.SLOW))
    assert {"gpumon_power_draw_watts", "gpumon_memory_temperature_celsius"}.isdisjoint(fast)
    assert "gpumon_memory_used_bytes" in fast
    assert "gpumon_pcie_replays_total" not in slow
    assert isinstance(source.nvml, FaultyNvml) and source.nvml.calls["nvmlDeviceGetPowerUsage"] == 1
    assert source.unsupported_count(0) == NO_NVLINK + 3
    assert sorted(e["reading"] for e in logged if e["event"].startswith("metric not available")) == [
        "fields:82", "pcie_replay", "power_usage"]
    assert source.error_counts() == {}
    source.close()


def test_non_finite_gpm_values_are_dropped(nvml_fake: NvmlFake, tmp_path: Path) -> None:
    def edit(probe: dict[str, Any], records: list[dict[str, Any]]) -> None:
        for r in records:
            r["gpm"]["sm_util"] = float("nan")
    source, clock = on_edited(nvml_fake, tmp_path, edit, at=1.0)
    clock.advance(1.0)
    sample = names(source.read(0, Tier.FAST))
    assert "gpumon_sm_active_ratio" not in sample and "gpumon_tensor_active_ratio" in sample
    source.close()


def test_without_gpm_sm_activity_is_absent_not_faked(nvml_fake: NvmlFake, tmp_path: Path) -> None:
    def edit(probe: dict[str, Any], records: list[dict[str, Any]]) -> None:
        probe["devices"][0]["gpm"]["support"] = {"version": 1, "isSupportedDevice": 0}
    source, clock = on_edited(nvml_fake, tmp_path, edit)
    assert not source.devices[0].gpm_supported
    clock.advance(1.0)
    got = names(source.read(0, Tier.FAST))
    assert "gpumon_sm_active_ratio" not in got and "gpumon_gpu_utilization_ratio" in got
    assert source.unsupported_count(0) == NO_NVLINK + GPM_NOT_NVLINK
    source.close()


@pytest.mark.parametrize("refusal", [pynvml.NVML_ERROR_FUNCTION_NOT_FOUND, 25])  # 25: ARGUMENT_VERSION_MISMATCH
def test_memory_v1_drivers_are_labelled_and_used_includes_reserved(nvml_fake: NvmlFake, refusal: int) -> None:
    source, _ = opened(nvml_fake, faults=Faults(errors=[("nvmlDeviceGetMemoryInfo_v2", None, refusal)]))
    assert source.devices[0].memory_info == "v1"
    got = read(source, Tier.FAST)
    total, free = got[("gpumon_memory_total_bytes", ())], got[("gpumon_memory_free_bytes", ())]
    assert got[("gpumon_memory_used_bytes", ())] == total - free  # reserved included, as v1 counts it
    assert ("gpumon_memory_reserved_bytes", ()) not in got
    assert source.error_counts() == {}
    source.close()
    v2, _ = opened(nvml_fake)
    assert v2.devices[0].memory_info == "v2"
    v2.close()


def test_clock_reasons_on_a_driver_without_the_event_reason_calls(nvml_fake: NvmlFake) -> None:
    """Before driver 535 only the ClocksThrottleReasons names exist; gpumon falls back to them."""
    missing = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND
    source, _ = opened(nvml_fake, at=0.0, faults=Faults(errors=[
        ("nvmlDeviceGetSupportedClocksEventReasons", None, missing),
        ("nvmlDeviceGetCurrentClocksEventReasons", None, missing)]))
    got = read(source, Tier.FAST)
    assert got[("gpumon_clock_event_reason_active", (("reason", "gpu_idle"),))] == 1.0
    source.close()


def test_board_limit_and_reliability_clock_event_reasons(nvml_fake: NvmlFake, tmp_path: Path) -> None:
    def edit(probe: dict[str, Any], records: list[dict[str, Any]]) -> None:
        probe["devices"][0]["getters"]["nvmlDeviceGetSupportedClocksEventReasons"]["ok"] = 0x7FF
        for r in records:
            r["clocks_event_reasons"] = 0x600  # nvmlClocksThrottleReasonBoardLimit | Reliability
    source, _ = on_edited(nvml_fake, tmp_path, edit)
    got = read(source, Tier.FAST)
    assert got[("gpumon_clock_event_reason_active", (("reason", "board_limit"),))] == 1.0
    assert got[("gpumon_clock_event_reason_active", (("reason", "reliability"),))] == 1.0
    assert got[("gpumon_clock_event_reason_active", (("reason", "gpu_idle"),))] == 0.0
    source.close()


# --- faults ---------------------------------------------------------------------------------------


def test_other_errors_are_counted_and_skipped(nvml_fake: NvmlFake) -> None:
    source, _ = opened(nvml_fake, faults=Faults(errors=[
        ("nvmlDeviceGetUtilizationRates", None, pynvml.NVML_ERROR_TIMEOUT)]))
    for _ in range(2):
        sample = names(source.read(0, Tier.FAST))
    assert "gpumon_gpu_utilization_ratio" not in sample and "gpumon_memory_used_bytes" in sample
    assert source.error_counts() == {("nvmlDeviceGetUtilizationRates", "NVMLError_Timeout"): 2}
    assert source.unsupported_count(0) == NO_NVLINK  # a transient error is not "unsupported"
    source.close()


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_GPU_IS_LOST, pynvml.NVML_ERROR_UNKNOWN])
def test_lost_gpu_raises_unit_lost_and_reopens(nvml_fake: NvmlFake, code: int) -> None:
    faults = Faults(errors=[("nvmlDeviceGetPowerUsage", 1, code)], lost=[(1, 10.0, 20.0)])
    source, clock = opened(nvml_fake, gpus=2, faults=faults)
    source.read(0, Tier.FAST)
    with pytest.raises(UnitLost) as info:
        source.read(1, Tier.FAST)
    assert info.value.unit == Unit("gpu1", gpu=1)
    faults.errors.clear()
    clock.advance(10.0)
    with pytest.raises(UnitLost):  # lost now: re-acquiring it by UUID fails too
        source.reopen(Unit("gpu1", gpu=1))
    clock.advance(10.0)
    source.reopen(Unit("gpu1", gpu=1))
    source.read(1, Tier.SLOW)
    source.close()


@pytest.mark.parametrize(("code", "message"), [
    (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, r"libnvidia-ml.so.1\) could not be loaded"),
    (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "driver is not loaded"),
    (pynvml.NVML_ERROR_NO_PERMISSION, r"failed to initialise: Insufficient Permissions \(NVMLError_NoPermission\)"),
])
def test_init_failure_is_one_sentence(nvml_fake: NvmlFake, code: int, message: str) -> None:
    with pytest.raises(BackendUnavailable, match=message):
        opened(nvml_fake, faults=Faults(init_error=code))


def test_xid_events_reach_the_callback(nvml_fake: NvmlFake) -> None:
    source, _ = opened(nvml_fake, gpus=2, faults=Faults(xids=[(1, 0.0, 79)]))
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
        source.close()
        assert time.monotonic() - t < 2.0
    assert got == [(1, 79)]


# --- NVLink (the H200 capture has none: edited in, or the synthetic 8-GPU capture) ------------------


def with_links(probe: dict[str, Any], states: list[int], counters: dict[int, Any] | None = None,
               version: int | None = None, kinds: int = 5) -> None:
    """NVLink links with these states (then InvalidArgument, the end of the scan); error counter
    k < kinds of link l is 10 * l + k unless `counters` says otherwise."""
    params = probe["devices"][0]["parametrized"]
    for link, state in enumerate(states):
        params[f"nvmlDeviceGetNvLinkState({link})"] = {"ok": state}
        if version is not None:
            params[f"nvmlDeviceGetNvLinkVersion({link})"] = {"ok": version}
        for counter in range(kinds):
            params[f"nvmlDeviceGetNvLinkErrorCounter({link},{counter})"] = (counters or {}).get(
                counter, {"ok": 10 * link + counter})
    params[f"nvmlDeviceGetNvLinkState({len(states)})"] = {"err": "NVMLError_InvalidArgument(2)"}


def with_speed_and_totals(probe: dict[str, Any], records: list[dict[str, Any]], speed_mbps: int | None) -> None:
    """Field 90 (speed, MB/s; None: refused), fields 138/139 and the GPM totals."""
    by_id = probe["devices"][0]["fields"]["by_id"]
    by_id["90"] = {"ret": 0, "type": 1, "value": speed_mbps} if speed_mbps is not None else {"ret": 3, "type": 1}
    for i, r in enumerate(records):
        r["fields"]["nvlink_rx_kib"], r["fields"]["nvlink_tx_kib"] = 1000 + 7 * i, 2000 + 9 * i
        r["gpm"]["nvlink_rx_mibps"], r["gpm"]["nvlink_tx_mibps"] = 3.0, 4.0


def test_nvlink_active_links_only(nvml_fake: NvmlFake, tmp_path: Path) -> None:
    def edit(probe: dict[str, Any], records: list[dict[str, Any]]) -> None:
        with_links(probe, [1, 1, 0])
        probe["devices"][0]["gpm"]["metrics"]["64"] = {"ret": 0, "value": 2.0}  # link 1 RX, MiB/s
        with_speed_and_totals(probe, records, 25000)
    source, clock = on_edited(nvml_fake, tmp_path, edit, at=1.0)
    clock.advance(1.0)
    slow = read(source, Tier.SLOW)  # the speed is read in the slow tier, before the ratio
    fast = read(source, Tier.FAST)
    assert fast[("gpumon_nvlink_rx_bytes_per_second", (("link", "1"),))] == 2.0 * 1048576
    assert ("gpumon_nvlink_rx_bytes_per_second", (("link", "2"),)) not in fast  # inactive: no series
    assert slow[("gpumon_nvlink_up", (("link", "0"),))] == 1.0
    assert {k[1][0][1] for k in slow if k[0] == "gpumon_nvlink_up"} == {"0", "1"}
    assert slow[("gpumon_nvlink_errors_total", (("link", "1"), ("type", "crc_flit")))] == 12
    assert slow[("gpumon_nvlink_speed_bytes_per_second", ())] == 25000e6
    assert fast[("gpumon_nvlink_utilization_ratio", (("link", "1"), ("direction", "rx")))] == pytest.approx(
        2.0 * 1048576 / 25000e6)
    assert fast[("gpumon_nvlink_utilization_ratio", (("link", "0"), ("direction", "tx")))] == 0.0
    assert {k[1] for k in fast if k[0] == "gpumon_nvlink_utilization_ratio"} == {
        (("link", link), ("direction", d)) for link in ("0", "1") for d in ("rx", "tx")}
    rec = record_at(load_capture(tmp_path / "capture"), 1.0)
    assert fast[("gpumon_nvlink_total_rx_bytes_per_second", ())] == 3.0 * 1048576
    assert fast[("gpumon_nvlink_rx_bytes_total", ())] == rec["fields"]["nvlink_rx_kib"] * 1024
    assert fast[("gpumon_nvlink_tx_bytes_total", ())] == rec["fields"]["nvlink_tx_kib"] * 1024
    assert source.unsupported_count(0) == 0
    assert source.error_counts() == {}
    source.close()


@pytest.mark.parametrize("speed", [None, 0])
def test_nvlink_without_a_speed_has_rates_but_no_ratio(nvml_fake: NvmlFake, tmp_path: Path,
                                                      speed: int | None) -> None:
    def edit(probe: dict[str, Any], records: list[dict[str, Any]]) -> None:
        with_links(probe, [1, 1])
        probe["devices"][0]["gpm"]["metrics"]["62"] = {"ret": 0, "value": 5.0}  # link 0 RX, MiB/s
        with_speed_and_totals(probe, records, speed)
    source, clock = on_edited(nvml_fake, tmp_path, edit)
    for _ in range(2):
        clock.advance(1.0)
        slow, fast = names(source.read(0, Tier.SLOW)), read(source, Tier.FAST)
    assert "gpumon_nvlink_speed_bytes_per_second" not in slow
    assert fast[("gpumon_nvlink_rx_bytes_per_second", (("link", "0"),))] == 5.0 * 1048576  # rates stay
    assert ("gpumon_nvlink_rx_bytes_total", ()) in fast
    assert not [k for k in fast if k[0] == "gpumon_nvlink_utilization_ratio"]
    assert source.error_counts() == {}
    if speed is None:
        assert source.unsupported_count(0) == 2  # the speed, and the ratio that needs it
    source.close()


def test_one_refused_nvlink_error_counter_leaves_the_others(nvml_fake: NvmlFake, tmp_path: Path) -> None:
    def edit(probe: dict[str, Any], records: list[dict[str, Any]]) -> None:
        with_links(probe, [1, 1], counters={3: {"err": "NVMLError_NotSupported(3)"}}, kinds=4)  # CRC data
    source, _ = on_edited(nvml_fake, tmp_path, edit)
    for _ in range(2):  # the refused kind is remembered, not asked again and not counted as an error
        slow = read(source, Tier.SLOW)
    errors = {(dict(labels)["link"], dict(labels)["type"]): v
              for (name, labels), v in slow.items() if name == "gpumon_nvlink_errors_total"}
    assert errors == {(str(link), kind): 10 * link + code for link in (0, 1)
                      for code, kind in enumerate(("replay", "recovery", "crc_flit"))}
    assert source.error_counts() == {}
    source.close()


def test_nvlink4_has_no_crc_data_counter_and_asking_is_no_error(nvml_fake: NvmlFake, tmp_path: Path) -> None:
    def edit(probe: dict[str, Any], records: list[dict[str, Any]]) -> None:
        # What a driver may answer for CRC_DATA on NVLink 4.0: an invalid counter, not NotSupported.
        with_links(probe, [1, 1], counters={3: {"err": "NVMLError_InvalidArgument(2)"}}, version=6)
    source, _ = on_edited(nvml_fake, tmp_path, edit)
    for _ in range(2):
        slow = read(source, Tier.SLOW)
    kinds = {dict(labels)["type"] for (name, labels) in slow if name == "gpumon_nvlink_errors_total"}
    assert kinds == {"replay", "recovery", "crc_flit", "ecc_data"}
    assert slow[("gpumon_nvlink_errors_total", (("link", "1"), ("type", "ecc_data")))] == 14
    assert source.error_counts() == {}
    source.close()


def test_nvlink_byte_counters_sum_all_links(nvml_fake: NvmlFake) -> None:
    """Fields 138/139 read one link per scopeId; gpumon asks for UINT_MAX, the sum of all links
    (with scopeId 0 it exported link 0 alone: an 18x undercount on an H200 SXM)."""
    source, _ = opened(nvml_fake, capture=generate.OUT_DIR, at=0.0)
    got = read(source, Tier.FAST)
    fields = load_capture(generate.OUT_DIR).traces[0][0]["fields"]
    assert len(fields["nvlink_tx_kib"]) == generate.LINKS
    assert got[("gpumon_nvlink_tx_bytes_total", ())] == sum(fields["nvlink_tx_kib"]) * 1024.0
    assert got[("gpumon_nvlink_rx_bytes_total", ())] == sum(fields["nvlink_rx_kib"]) * 1024.0
    source.close()


# --- without a fake -----------------------------------------------------------------------------


def test_every_nvml_catalog_reading_has_a_reader() -> None:
    from gpumon.sources.nvml_readers import READERS
    for m in catalog.METRICS:
        if m.source == "nvml":
            assert m.reading in READERS, m.name  # registered with @reads, with the NVML call it makes


def test_plain_view_reads_and_writes_the_same_memory_as_pynvmls_structures() -> None:
    from gpumon.sources.nvml_readers import _field_value, plain_view

    fields = (pynvml.c_nvmlFieldValue_t * 3)()
    for i, v in enumerate(fields):
        v.fieldId, v.nvmlReturn, v.valueType = 100 + i, i, pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
        v.value.ullVal = 2**40 + i
    view = plain_view(fields)
    assert type(view[0]).__getattribute__ is object.__getattribute__  # no pynvml hook on the way
    assert [(v.fieldId, v.nvmlReturn, _field_value(v)) for v in view] == [(100 + i, i, 2**40 + i) for i in range(3)]
    request = pynvml.c_nvmlGpmMetricsGet_t()
    plain_view(request.metrics)[4].metricId = 7
    assert request.metrics[4].metricId == 7
    assert plain_view([1, 2]) == [1, 2]  # not ctypes: left as it is


@pytest.mark.parametrize(("answer", "want"), [
    # A PCIe H200: the call answers, the state says "no fabric": no series.
    ({"state": 0, "status": 0, "cliqueId": 0, "healthMask": 0}, {}),
    ({"state": 2, "status": 0, "cliqueId": 0, "healthMask": 0}, {("gpumon_fabric_state", ()): 2.0}),
    ({"state": 3, "status": 0, "cliqueId": 4, "healthMask": 1 | 2 << 2 | 2 << 4},  # access timeout: not reported
     {("gpumon_fabric_state", ()): 3.0, ("gpumon_fabric_status", ()): 0.0,
      ("gpumon_fabric_health_problem", (("problem", "degraded_bandwidth"),)): 1.0,
      ("gpumon_fabric_health_problem", (("problem", "route_recovery"),)): 0.0,
      ("gpumon_fabric_health_problem", (("problem", "route_unhealthy"),)): 0.0}),
    # Configuration correct (1 at bit 8), partition assigned (1 at bit 12), fabric manager connected (1 at
    # bit 14), v3's summary healthy.
    ({"state": 3, "status": 0, "healthMask": 2 | 1 << 8 | 1 << 12 | 1 << 14, "healthSummary": 1},
     {("gpumon_fabric_state", ()): 3.0, ("gpumon_fabric_status", ()): 0.0,
      ("gpumon_fabric_health_problem", (("problem", "degraded_bandwidth"),)): 0.0,
      ("gpumon_fabric_health_problem", (("problem", "incorrect_configuration"),)): 0.0,
      ("gpumon_fabric_health_problem", (("problem", "gfm_disconnected"),)): 0.0,
      ("gpumon_fabric_partition_assigned", ()): 1.0, ("gpumon_fabric_health_summary", ()): 1.0}),
    # Insufficient NVLinks (5 at bit 8), no partition (2 at bit 12), fabric manager disconnected (2 at bit
    # 14), summary unhealthy.
    ({"state": 3, "status": 0, "healthMask": 5 << 8 | 2 << 12 | 2 << 14, "healthSummary": 2},
     {("gpumon_fabric_state", ()): 3.0, ("gpumon_fabric_status", ()): 0.0,
      ("gpumon_fabric_health_problem", (("problem", "incorrect_configuration"),)): 1.0,
      ("gpumon_fabric_incorrect_configuration", (("reason", "insufficient_nvlinks"),)): 1.0,
      ("gpumon_fabric_health_problem", (("problem", "gfm_disconnected"),)): 1.0,
      ("gpumon_fabric_partition_assigned", ()): 0.0, ("gpumon_fabric_health_summary", ()): 2.0}),
    # A driver before v3: it refuses the v3 struct, v2 has no summary (the one recorded is not seen).
    ({"state": 3, "status": 0, "healthMask": 8 << 8, "healthSummary": 3, "versions": [2]},
     {("gpumon_fabric_state", ()): 3.0, ("gpumon_fabric_status", ()): 0.0,
      ("gpumon_fabric_health_problem", (("problem", "incorrect_configuration"),)): 1.0,
      ("gpumon_fabric_incorrect_configuration", (("reason", "gpu_state_invalid"),)): 1.0}),
    ({"state": 3, "status": 0, "healthMask": 0, "healthSummary": 3},  # limited capacity
     {("gpumon_fabric_state", ()): 3.0, ("gpumon_fabric_status", ()): 0.0, ("gpumon_fabric_health_summary", ()): 3.0}),
])
def test_nvswitch_fabric_state_and_health(nvml_fake: NvmlFake, tmp_path: Path, answer: dict[str, int],
                                          want: Values) -> None:
    """nvmlDeviceGetGpuFabricInfoV fills a versioned struct; the H200 captures did not record it and answer
    as that GPU does (not on a fabric: no series, nothing unsupported)."""
    plain, _ = opened(nvml_fake)
    assert not [k for k in read(plain, Tier.SLOW) if k[0].startswith("gpumon_fabric_")]
    assert plain.unsupported_count(0) == NO_NVLINK
    plain.close()

    def edit(probe: dict[str, Any], records: list[dict[str, Any]]) -> None:
        probe["devices"][0]["getters"]["nvmlDeviceGetGpuFabricInfoV"] = {"ok": answer}
    calls = FabricCalls(nvml_fake.start(capture=edited_capture(tmp_path / "capture", edit)))
    source = NvmlSource(calls)
    source.open()
    got = read(source, Tier.SLOW)
    assert {k: v for k, v in got.items() if k[0].startswith("gpumon_fabric_")} == want
    assert source.error_counts() == {}
    read(source, Tier.SLOW)
    # v3 first; a driver that refuses it is asked for v2 from then on, not v3 again each round.
    v2, v3 = pynvml.nvmlGpuFabricInfo_v2, pynvml.nvmlGpuFabricInfo_v3
    assert calls.versions == ([v3, v2, v2] if answer.get("versions") == [2] else [v3, v3])
    source.close()


class FabricCalls:
    """The NVML object, counting the struct versions nvmlDeviceGetGpuFabricInfoV is asked with."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self.versions: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.nvml, name)

    def nvmlDeviceGetGpuFabricInfoV(self, handle: Any, info: Any) -> Any:
        self.versions.append(info._obj.version)
        return self.nvml.nvmlDeviceGetGpuFabricInfoV(handle, info)


def test_a_fabric_struct_of_an_unknown_version_is_refused_as_nvml_does(nvml_fake: NvmlFake) -> None:
    import ctypes
    nvml = nvml_fake.start()
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    info = pynvml.c_nvmlGpuFabricInfo_v2_t()
    info.version = 0x01000024
    with pytest.raises(pynvml.NVMLError) as err:
        nvml.nvmlDeviceGetGpuFabricInfoV(handle, ctypes.byref(info))
    assert err.value.value == pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
    unversioned = pynvml.c_nvmlGpuFabricInfo_t()  # nvmlDeviceGetGpuFabricInfo's struct, with no version
    with pytest.raises(pynvml.NVMLError) as err:
        nvml.nvmlDeviceGetGpuFabricInfoV(handle, ctypes.byref(unversioned))
    assert err.value.value == pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
    v3 = pynvml.c_nvmlGpuFabricInfo_v3_t()  # the newer struct is accepted: state "no fabric"
    nvml.nvmlDeviceGetGpuFabricInfoV(handle, ctypes.byref(v3))
    assert v3.state & 0xFF == pynvml.NVML_GPU_FABRIC_STATE_NOT_SUPPORTED
    assert v3.healthSummary == pynvml.NVML_GPU_FABRIC_HEALTH_SUMMARY_NOT_SUPPORTED
    # The state is one byte in nvml.h: the fakes fill the padding pynvml reads with it, as NVML may.
    assert v3.state != pynvml.NVML_GPU_FABRIC_STATE_NOT_SUPPORTED
    nvml.nvmlShutdown()
