"""The pynvml API answered from a capture: one contract, run on both fakes (gpumon's CaptureNvml and
the fake libnvidia-ml.so.1 under the real pynvml). Every expected value is read from the capture
files; neither fake is the other's oracle.

What only one fake can show lives with it: the capture loader, speed, loop and phase mechanics in
test_capture.py; the library's ABI, fault script, latency and threads in tests/tools/fakenvml/.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pynvml
import pytest

from gpumon.sources.capture import load_capture
from gpumon.sources.replay import DEMO_CAPTURE
from tests.fixtures.procs import generate as generate_procs
from tests.support.nvml import NvmlFake, edited_capture, gpm_metrics, middle_of, record_at

CAPTURE = load_capture(DEMO_CAPTURE)
TRACE = CAPTURE.traces[0]
PROBE = CAPTURE.probe["devices"][0]
T0 = TRACE[0]["t"]
PHASES = ["idle", "compute", "membw", "pcie", "memfull", "bursty"]


def getter(name: str) -> Any:
    return PROBE["getters"][name]["ok"]


def started(fake: NvmlFake, **start: Any) -> Any:
    nvml = fake.start(**start)
    nvml.nvmlInit()
    return nvml


# --- lifecycle and static answers -----------------------------------------------------------------


def test_calls_before_init_and_after_shutdown_are_uninitialized(nvml_fake: NvmlFake) -> None:
    n = nvml_fake.start()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        n.nvmlDeviceGetCount()
    n.nvmlInit()
    h = n.nvmlDeviceGetHandleByIndex(0)
    n.nvmlShutdown()
    for call in (n.nvmlDeviceGetPowerUsage, n.nvmlDeviceGetName, n.nvmlDeviceGetUUID):
        with pytest.raises(pynvml.NVMLError_Uninitialized):
            call(h)
    n.nvmlInit()  # and it can be initialised again
    assert n.nvmlDeviceGetPowerUsage(n.nvmlDeviceGetHandleByIndex(0)) > 0
    n.nvmlShutdown()


def test_static_answers_are_the_probe(nvml_fake: NvmlFake) -> None:
    n = started(nvml_fake)
    assert n.nvmlSystemGetDriverVersion() == CAPTURE.probe["system"]["driver"]["ok"]
    assert n.nvmlSystemGetCudaDriverVersion() == CAPTURE.probe["system"]["cuda"]["ok"]
    assert n.nvmlDeviceGetCount() == 1
    h = n.nvmlDeviceGetHandleByIndex(0)
    assert n.nvmlDeviceGetIndex(h) == 0
    assert n.nvmlDeviceGetName(h) == getter("nvmlDeviceGetName")
    assert n.nvmlDeviceGetUUID(h) == getter("nvmlDeviceGetUUID")
    pci, recorded = n.nvmlDeviceGetPciInfo(h), getter("nvmlDeviceGetPciInfo")
    assert (pci.busId, pci.device, pci.pciDeviceId) == (recorded["busId"], recorded["device"],
                                                        recorded["pciDeviceId"])
    assert n.nvmlDeviceGetArchitecture(h) == getter("nvmlDeviceGetArchitecture")
    assert list(n.nvmlDeviceGetPowerManagementLimitConstraints(h)) == list(
        getter("nvmlDeviceGetPowerManagementLimitConstraints"))
    assert n.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM) == PROBE["parametrized"][
        "nvmlDeviceGetMaxClockInfo(SM)"]["ok"]
    slowdown = pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN
    assert n.nvmlDeviceGetTemperatureThreshold(h, slowdown) == PROBE["parametrized"][
        f"nvmlDeviceGetTemperatureThreshold({slowdown})"]["ok"]
    corrected, aggregate = pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_AGGREGATE_ECC
    assert n.nvmlDeviceGetTotalEccErrors(h, corrected, aggregate) == PROBE["parametrized"][
        f"nvmlDeviceGetTotalEccErrors({corrected},{aggregate})"]["ok"]
    low = pynvml.NVML_PERF_POLICY_LOW_UTILIZATION
    assert n.nvmlDeviceGetViolationStatus(h, low).violationTime == PROBE["parametrized"][
        f"nvmlDeviceGetViolationStatus({low})"]["ok"]["violationTime"]
    assert tuple(n.nvmlDeviceGetRemappedRows(h)) == tuple(getter("nvmlDeviceGetRemappedRows"))
    assert n.nvmlGpmQueryDeviceSupport(h).isSupportedDevice == PROBE["gpm"]["support"]["isSupportedDevice"]
    # Errors the driver recorded come back as recorded; bad arguments as NVML refuses them.
    with pytest.raises(pynvml.NVMLError_NotSupported):
        n.nvmlDeviceGetFanSpeed(h)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        n.nvmlDeviceGetTemperature(h, 1)
    with pytest.raises(pynvml.NVMLError_NotFound):
        n.nvmlDeviceGetHandleByUUID("GPU-not-here")
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        n.nvmlDeviceGetHandleByIndex(1)
    n.nvmlShutdown()


def test_recorded_errors_raise_their_class(nvml_fake: NvmlFake, tmp_path: Path) -> None:
    def edit(probe: dict[str, Any], records: list[dict[str, Any]]) -> None:
        probe["devices"][0]["getters"]["nvmlDeviceGetPcieReplayCounter"] = {"err": "NVMLError_NoPermission(4)"}
        for r in records:
            r["power_mw"] = {"err": "NVMLError_NotSupported"}
    n = started(nvml_fake, capture=edited_capture(tmp_path / "capture", edit))
    h = n.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError) as info:
        n.nvmlDeviceGetPowerUsage(h)
    assert type(info.value) is pynvml.NVMLError_NotSupported
    with pytest.raises(pynvml.NVMLError_NoPermission):
        n.nvmlDeviceGetPcieReplayCounter(h)
    n.nvmlShutdown()


def test_memory_v1_counts_reserved_as_used_like_the_driver(nvml_fake: NvmlFake) -> None:
    n = started(nvml_fake, at=middle_of(CAPTURE, "memfull"))
    h = n.nvmlDeviceGetHandleByIndex(0)
    v2 = n.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    v1 = n.nvmlDeviceGetMemoryInfo(h)
    rec = record_at(CAPTURE, middle_of(CAPTURE, "memfull"))["mem"]
    assert (v2.total, v2.used, v2.free, v2.reserved) == (rec["total"], rec["used"], rec["free"], rec["reserved"])
    assert v1.used == v2.used + v2.reserved == v1.total - v1.free  # as probe.json shows for v1 and v2
    assert v2.used / v2.total > 0.9  # the memfull phase
    n.nvmlShutdown()


# --- values over time -----------------------------------------------------------------------------


@pytest.mark.parametrize("phase", PHASES)
def test_held_still_at_a_trace_position_answers_that_record(nvml_fake: NvmlFake, phase: str) -> None:
    position = middle_of(CAPTURE, phase)
    n = started(nvml_fake, at=position)
    h = n.nvmlDeviceGetHandleByIndex(0)
    rec = record_at(CAPTURE, position)
    u = n.nvmlDeviceGetUtilizationRates(h)
    assert (u.gpu, u.memory) == (rec["util"]["gpu"], rec["util"]["memory"])
    assert n.nvmlDeviceGetPowerUsage(h) == rec["power_mw"]
    assert n.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU) == rec["temp_c"]
    assert n.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM) == rec["sm_clock_mhz"]
    assert n.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM) == rec["mem_clock_mhz"]
    assert n.nvmlDeviceGetCurrentClocksEventReasons(h) == rec["clocks_event_reasons"]
    assert n.nvmlDeviceGetPerformanceState(h) == rec["pstate"]
    assert n.nvmlDeviceGetTotalEnergyConsumption(h) == rec["energy_mj_call"]
    procs = n.nvmlDeviceGetComputeRunningProcesses(h)
    assert [(p.pid, p.usedGpuMemory) for p in procs] == [(p["pid"], p["used"]) for p in rec["procs"]]
    n.nvmlShutdown()


def test_without_loop_the_last_record_stays(nvml_fake: NvmlFake) -> None:
    n = started(nvml_fake, at=CAPTURE.duration(0) * 3, loop=False)
    h = n.nvmlDeviceGetHandleByIndex(0)
    assert n.nvmlDeviceGetTotalEnergyConsumption(h) == TRACE[-1]["energy_mj_call"]
    assert n.nvmlDeviceGetPowerUsage(h) == TRACE[-1]["power_mw"]
    n.nvmlShutdown()


def test_fanned_out_gpus_have_identities_of_their_own(nvml_fake: NvmlFake) -> None:
    """The recorded GPU keeps its UUID and bus; each copy gets its own, found again by lookup, and
    plays its own part of the trace (copy k of N is k/N of the trace ahead)."""
    n = started(nvml_fake, gpus=8, at=0.0)
    assert n.nvmlDeviceGetCount() == 8
    handles = [n.nvmlDeviceGetHandleByIndex(i) for i in range(8)]
    uuids = [n.nvmlDeviceGetUUID(h) for h in handles]
    buses = [n.nvmlDeviceGetPciInfo(h).busId for h in handles]
    assert (uuids[0], buses[0]) == (getter("nvmlDeviceGetUUID"), getter("nvmlDeviceGetPciInfo")["busId"])
    assert len(set(uuids)) == len(set(buses)) == 8
    for i, (uuid, bus) in enumerate(zip(uuids, buses, strict=True)):
        assert n.nvmlDeviceGetIndex(n.nvmlDeviceGetHandleByUUID(uuid)) == i
        assert n.nvmlDeviceGetIndex(n.nvmlDeviceGetHandleByPciBusId(bus)) == i
        pci = n.nvmlDeviceGetPciInfo(handles[i])
        assert pci.busId.lower().endswith(f"{pci.bus:02x}:{pci.device:02x}.0")
        assert n.nvmlDeviceGetName(handles[i]) == getter("nvmlDeviceGetName")  # the recorded GPU's facts
        want = record_at(CAPTURE, i * CAPTURE.duration(0) / 8)["energy_mj_call"]
        assert n.nvmlDeviceGetTotalEnergyConsumption(handles[i]) == want
    n.nvmlShutdown()


# --- field values -------------------------------------------------------------------------------


def test_field_values_carry_per_field_return_codes(nvml_fake: NvmlFake) -> None:
    position = middle_of(CAPTURE, "compute")
    n = started(nvml_fake, at=position)
    h = n.nvmlDeviceGetHandleByIndex(0)
    rec = record_at(CAPTURE, position)["fields"]
    by_id = PROBE["fields"]["by_id"]
    ids = [186, 83, 82, 138, 7, 1, 9999]
    got = n.nvmlDeviceGetFieldValues(h, ids)
    assert [v.fieldId for v in got] == ids
    power, energy, mem_temp, nvlink, unsupported, probed, unknown = got
    assert (power.nvmlReturn, power.valueType, power.value.uiVal) == (0, 1, rec["power_instant_mw"])
    assert (energy.nvmlReturn, energy.value.ullVal) == (0, rec["energy_mj"])
    assert mem_temp.nvmlReturn == 0
    assert nvlink.nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED  # the trace recorded {"err": 3}
    assert unsupported.nvmlReturn == by_id["7"]["ret"] == pynvml.NVML_ERROR_NOT_SUPPORTED  # as probed
    assert (probed.nvmlReturn, probed.value.ullVal) == (0, by_id["1"]["value"])  # not in the trace: probed
    assert unknown.nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED
    n.nvmlShutdown()


def test_field_values_recorded_errors(nvml_fake: NvmlFake, tmp_path: Path) -> None:
    def per_field(probe: dict[str, Any], records: list[dict[str, Any]]) -> None:
        for r in records:
            r["fields"]["mem_temp_c"] = {"err": "NVMLError_NotSupported"}
    n = started(nvml_fake, capture=edited_capture(tmp_path / "one", per_field))
    got = n.nvmlDeviceGetFieldValues(n.nvmlDeviceGetHandleByIndex(0), [82, 186])
    assert [v.nvmlReturn for v in got] == [pynvml.NVML_ERROR_NOT_SUPPORTED, 0]
    n.nvmlShutdown()

    def whole_call(probe: dict[str, Any], records: list[dict[str, Any]]) -> None:
        for r in records:
            r["fields"] = {"err": 15}
    n = started(nvml_fake, capture=edited_capture(tmp_path / "all", whole_call))
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        n.nvmlDeviceGetFieldValues(n.nvmlDeviceGetHandleByIndex(0), [186])
    n.nvmlShutdown()


# --- GPM -----------------------------------------------------------------------------------------


def test_gpm_averages_the_records_between_two_samples(nvml_fake: NvmlFake) -> None:
    start = middle_of(CAPTURE, "idle")
    n = started(nvml_fake, at=None, speed=10)
    h = n.nvmlDeviceGetHandleByIndex(0)
    s1, s2 = n.nvmlGpmSampleAlloc(), n.nvmlGpmSampleAlloc()
    time.sleep(start / 10)
    t = time.monotonic()
    n.nvmlGpmSampleGet(h, s1)
    time.sleep(1.0)  # 10 trace seconds: from idle well into compute
    n.nvmlGpmSampleGet(h, s2)
    played = (time.monotonic() - t) * 10
    ((ret, sm), (fp64_ret, fp64), (missing, _)) = gpm_metrics(n, s1, s2, [2, 11, 99])
    assert ret == 0
    assert (fp64_ret, fp64) == (0, PROBE["gpm"]["metrics"]["11"]["value"])  # not in the trace: probed
    assert missing == pynvml.NVML_ERROR_NOT_SUPPORTED
    # The mean of sm_util over the records after the first sample up to the second: a window of
    # `played` trace seconds that starts about `start` in (scheduling moves either end a record).
    first = max(i for i, r in enumerate(TRACE) if r["t"] <= T0 + start)
    period = CAPTURE.duration(0) / len(TRACE)
    windows = [TRACE[first + a:first + a + k] for a in range(-2, 4)
               for k in range(int(played / period) - 3, int(played / period) + 4)]
    means = [sum(r["gpm"]["sm_util"] for r in w) / len(w) for w in windows if w]
    assert min(abs(sm - m) for m in means) < 1e-9, (sm, means)
    assert 10 < sm < 90  # part idle, part compute
    n.nvmlGpmSampleFree(s1)
    n.nvmlGpmSampleFree(s2)
    n.nvmlShutdown()


def test_gpm_recorded_nan_and_errors(nvml_fake: NvmlFake, tmp_path: Path) -> None:
    def edit(probe: dict[str, Any], records: list[dict[str, Any]]) -> None:
        for r in records:
            r["gpm"]["sm_util"] = float("nan")
            r["gpm"]["any_tensor_util"] = {"err": 3}
    n = started(nvml_fake, capture=edited_capture(tmp_path / "capture", edit), at=1.0)
    h = n.nvmlDeviceGetHandleByIndex(0)
    s1, s2 = n.nvmlGpmSampleAlloc(), n.nvmlGpmSampleAlloc()
    n.nvmlGpmSampleGet(h, s1)
    n.nvmlGpmSampleGet(h, s2)
    (sm_ret, sm), (tensor_ret, _), (_, occupancy) = gpm_metrics(n, s1, s2, [2, 5, 3])
    assert sm_ret == 0 and math.isnan(sm)  # NaN comes back with success, as the driver sends it
    assert tensor_ret == pynvml.NVML_ERROR_NOT_SUPPORTED
    assert math.isfinite(occupancy)
    n.nvmlShutdown()


# --- events -------------------------------------------------------------------------------------


def test_events_of_a_type_the_gpu_cannot_deliver_are_refused(nvml_fake: NvmlFake) -> None:
    mask = PROBE["events"]["supported_mask"]
    unsupported = next(1 << b for b in range(16) if not mask & (1 << b))
    n = started(nvml_fake)
    h = n.nvmlDeviceGetHandleByIndex(0)
    event_set = n.nvmlEventSetCreate()
    for types in (unsupported, unsupported | pynvml.nvmlEventTypeXidCriticalError):
        with pytest.raises(pynvml.NVMLError_NotSupported):
            n.nvmlDeviceRegisterEvents(h, types, event_set)
    n.nvmlDeviceRegisterEvents(h, pynvml.nvmlEventTypeXidCriticalError, event_set)
    t = time.monotonic()
    with pytest.raises(pynvml.NVMLError_Timeout):  # a capture holds no events
        n.nvmlEventSetWait_v2(event_set, 50)
    assert 0.04 <= time.monotonic() - t < 1.0
    n.nvmlEventSetFree(event_set)
    n.nvmlShutdown()


# --- processes (the synthetic tests/fixtures/procs capture) ------------------------------------------


PROCS = generate_procs.OUT_DIR
PROCS_CAPTURE = load_capture(PROCS)


def listed(n: Any, h: Any, call: str) -> dict[int, int | None]:
    return {int(p.pid): p.usedGpuMemory for p in getattr(n, call)(h)}


@pytest.mark.parametrize("phase", ["idle", "compute", "bursty"])
def test_process_lists_are_the_records(nvml_fake: NvmlFake, phase: str) -> None:
    position = middle_of(PROCS_CAPTURE, phase)
    rec = record_at(PROCS_CAPTURE, position)
    n = started(nvml_fake, capture=PROCS, at=position)
    h = n.nvmlDeviceGetHandleByIndex(0)
    for call, key in (("nvmlDeviceGetComputeRunningProcesses", "procs"),
                      ("nvmlDeviceGetGraphicsRunningProcesses", "procs_graphics"),
                      ("nvmlDeviceGetMPSComputeRunningProcesses", "procs_mps")):
        assert listed(n, h, call) == {p["pid"]: p["used"] for p in rec[key]}, call
    assert len(rec["procs"]) == (1 if phase == "idle" else 20)
    n.nvmlShutdown()


def window(position: float) -> list[dict[str, Any]]:
    """The proc_util samples of the records played in the 10 s up to `position` (no loop yet)."""
    trace = PROCS_CAPTURE.traces[0]
    return [{**u, "stamp": int(r["t"] * 1e6)} for r in trace
            if position - 10 < r["t"] - trace[0]["t"] <= position for u in r["proc_util"]]


def test_process_utilization_since_the_last_read(nvml_fake: NvmlFake) -> None:
    position = middle_of(PROCS_CAPTURE, "compute")
    samples = window(position)
    n = started(nvml_fake, capture=PROCS, at=position)
    h = n.nvmlDeviceGetHandleByIndex(0)
    every = n.nvmlDeviceGetProcessUtilization(h, 0)  # the older call: every sample
    assert sorted((s.pid, s.timeStamp, s.smUtil, s.memUtil) for s in every) == sorted(
        (u["pid"], u["stamp"], u["sm"], u["mem"]) for u in samples)
    per_process = n.nvmlDeviceGetProcessesUtilizationInfo(h, 0)  # one entry per process, its mean
    newest = max(u["stamp"] for u in samples)
    for entry in per_process:
        mine = [u for u in samples if u["pid"] == entry.pid]
        assert entry.smUtil == sum(u["sm"] for u in mine) // len(mine)
        assert entry.timeStamp == max(u["stamp"] for u in mine)
    assert {e.pid for e in per_process} == {u["pid"] for u in samples}
    for call in (n.nvmlDeviceGetProcessUtilization, n.nvmlDeviceGetProcessesUtilizationInfo):
        with pytest.raises(pynvml.NVMLError_NotFound):  # nothing newer than what was read
            call(h, newest)
    n.nvmlShutdown()


def test_no_process_utilization_when_idle_or_not_recorded(nvml_fake: NvmlFake) -> None:
    n = started(nvml_fake, capture=PROCS, at=2.0)  # idle: no samples in the last 10 s
    with pytest.raises(pynvml.NVMLError_NotFound):
        n.nvmlDeviceGetProcessesUtilizationInfo(n.nvmlDeviceGetHandleByIndex(0), 0)
    n.nvmlShutdown()
    n = started(nvml_fake, at=middle_of(CAPTURE, "compute"))  # the H200 recording: NotFound, as recorded
    h = n.nvmlDeviceGetHandleByIndex(0)
    for call in (n.nvmlDeviceGetProcessUtilization, n.nvmlDeviceGetProcessesUtilizationInfo):
        with pytest.raises(pynvml.NVMLError_NotFound):
            call(h, 0)
    n.nvmlShutdown()
