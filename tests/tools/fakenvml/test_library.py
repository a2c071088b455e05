"""The fake libnvidia-ml.so.1 through the real pynvml: what it exports and what it answers."""

from __future__ import annotations

import ctypes
import math
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gpumon.sources.capture import CaptureNvml, load_capture
from gpumon.sources.replay import DEMO_CAPTURE
from tests.fakenvml import SOURCE_DIR, edited_capture
from tests.fakenvml.conftest import Fake

CAPTURE = load_capture(DEMO_CAPTURE)
TRACE = CAPTURE.traces[0]
PROBE = CAPTURE.probe["devices"][0]
T0 = TRACE[0]["t"]
DURATION = CAPTURE.duration(0)


def getter(name: str) -> Any:
    return PROBE["getters"][name]["ok"]


def record_at(position: float) -> dict[str, Any]:
    """The trace record playing `position` trace seconds after the start."""
    return next(r for r in reversed(TRACE) if r["t"] <= T0 + position)


def middle_of(phase: str) -> float:
    p = next(p for p in CAPTURE.phases if p["name"] == phase)
    return float((p["start"] + p["end"]) / 2 - T0)


def raises(fake: Fake, error: str, call: Callable[..., Any], *args: Any) -> None:
    with pytest.raises(getattr(fake.nvml, error)):
        call(*args)


# --- the shared object ---------------------------------------------------------------------------


def test_exports_nvml_functions_only(libfakenvml: Path) -> None:
    nm = shutil.which("nm")
    assert nm is not None, "nm (binutils) comes with the C compiler"
    out = subprocess.run([nm, "-D", "--defined-only", str(libfakenvml)], capture_output=True, text=True, check=True)
    exported = {line.split()[-1] for line in out.stdout.splitlines()}
    assert exported, out.stdout
    assert all(name.startswith("nvml") for name in exported), sorted(n for n in exported if not n.startswith("nvml"))
    # Deliberately left out, so clients meet FunctionNotFound as on an old driver.
    assert "nvmlDeviceGetEncoderUtilization" not in exported
    assert {"nvmlInitWithFlags", "nvmlGpmMetricsGet", "nvmlEventSetWait_v2", "nvmlDeviceGetFieldValues"} <= exported


def test_sources_have_no_fixed_size_string_copies() -> None:
    for source in SOURCE_DIR.glob("*.c"):
        text = source.read_text()
        for unsafe in ("strcpy(", "strcat(", "sprintf(", "gets("):
            assert f" {unsafe}" not in text and f"({unsafe}" not in text, f"{source.name}: {unsafe}"


def test_calls_before_init_are_uninitialized_and_unknown_functions_not_found(fake: Fake) -> None:
    n = fake.nvml
    raises(fake, "NVMLError_Uninitialized", n.nvmlDeviceGetCount)
    n.nvmlInit()
    raises(fake, "NVMLError_FunctionNotFound", n.nvmlDeviceGetEncoderUtilization, n.nvmlDeviceGetHandleByIndex(0))
    assert n.nvmlErrorString(n.NVML_ERROR_GPU_IS_LOST) == "GPU is lost"
    assert str(n.NVMLError(n.NVML_ERROR_NOT_SUPPORTED)) == "Not Supported"


# --- static answers ------------------------------------------------------------------------------


def test_static_answers_are_the_probe(fake: Fake) -> None:
    n = fake.nvml
    n.nvmlInit()
    assert n.nvmlSystemGetDriverVersion() == "580.159.04"
    assert n.nvmlSystemGetNVMLVersion() == "13.580.159.04"
    assert n.nvmlSystemGetCudaDriverVersion() == 13000
    assert n.nvmlDeviceGetCount() == 1
    h = n.nvmlDeviceGetHandleByIndex(0)
    assert n.nvmlDeviceGetName(h) == "NVIDIA H200"
    assert n.nvmlDeviceGetUUID(h) == getter("nvmlDeviceGetUUID")
    pci = n.nvmlDeviceGetPciInfo(h)
    assert (pci.busId, pci.busIdLegacy, pci.device) == ("00000000:00:06.0", "0000:00:06.0", 6)
    assert pci.pciDeviceId == 0x233510DE
    assert n.nvmlDeviceGetArchitecture(h) == n.NVML_DEVICE_ARCH_HOPPER
    assert n.nvmlDeviceGetCudaComputeCapability(h) == (9, 0)
    assert n.nvmlDeviceGetPowerManagementLimitConstraints(h) == [200000, 700000]
    assert n.nvmlDeviceGetMaxClockInfo(h, n.NVML_CLOCK_SM) == 1980
    assert n.nvmlDeviceGetTemperatureThreshold(h, n.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN) == 89
    assert n.nvmlDeviceGetTotalEccErrors(h, n.NVML_MEMORY_ERROR_TYPE_CORRECTED, n.NVML_AGGREGATE_ECC) == 31
    assert n.nvmlDeviceGetViolationStatus(h, n.NVML_PERF_POLICY_LOW_UTILIZATION).violationTime == 44296647136
    assert n.nvmlDeviceGetRemappedRows(h) == (0, 0, 0, 0)
    assert n.nvmlGpmQueryDeviceSupport(h).isSupportedDevice == 1
    assert n.nvmlDeviceGetHandleByUUID(getter("nvmlDeviceGetUUID")).contents is not None
    assert ctypes.addressof(n.nvmlDeviceGetHandleByPciBusId("0000:00:06.0").contents) == ctypes.addressof(h.contents)
    # Errors the driver recorded come back as recorded.
    raises(fake, "NVMLError_NotSupported", n.nvmlDeviceGetFanSpeed, h)
    raises(fake, "NVMLError_InvalidArgument", n.nvmlDeviceGetViolationStatus, h, 6)
    raises(fake, "NVMLError_InvalidArgument", n.nvmlDeviceGetTemperature, h, 1)
    raises(fake, "NVMLError_NotFound", n.nvmlDeviceGetHandleByUUID, "GPU-not-here")
    raises(fake, "NVMLError_InvalidArgument", n.nvmlDeviceGetHandleByIndex, 1)


def test_memory_v1_counts_reserved_as_used_like_the_driver(fake: Fake) -> None:
    n = fake.nvml
    fake.configure(speed=0, start=middle_of("memfull"))
    n.nvmlInit()
    h = n.nvmlDeviceGetHandleByIndex(0)
    v2 = n.nvmlDeviceGetMemoryInfo(h, version=n.nvmlMemory_v2)
    v1 = n.nvmlDeviceGetMemoryInfo(h)
    rec = record_at(middle_of("memfull"))["mem"]
    assert (v2.total, v2.used, v2.free, v2.reserved) == (rec["total"], rec["used"], rec["free"], rec["reserved"])
    assert v1.used == v2.used + v2.reserved == v1.total - v1.free  # as probe.json shows for v1 and v2
    assert v2.used / v2.total > 0.9  # the memfull phase


# --- time ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["idle", "compute", "membw", "pcie", "memfull", "bursty"])
def test_held_still_at_a_trace_position_answers_that_record(fake: Fake, phase: str) -> None:
    n = fake.nvml
    position = middle_of(phase)
    fake.configure(speed=0, start=position)
    n.nvmlInit()
    h = n.nvmlDeviceGetHandleByIndex(0)
    rec = record_at(position)
    assert n.nvmlDeviceGetUtilizationRates(h).gpu == rec["util"]["gpu"]
    assert n.nvmlDeviceGetPowerUsage(h) == rec["power_mw"]
    assert n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU) == rec["temp_c"]
    assert n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM) == rec["sm_clock_mhz"]
    assert n.nvmlDeviceGetCurrentClocksEventReasons(h) == rec["clocks_event_reasons"]
    assert n.nvmlDeviceGetPcieThroughput(h, n.NVML_PCIE_UTIL_TX_BYTES) == rec["pcie_tx_kbps"]
    assert n.nvmlDeviceGetTotalEnergyConsumption(h) == rec["energy_mj_call"]
    procs = n.nvmlDeviceGetComputeRunningProcesses(h)
    assert [(p.pid, p.usedGpuMemory) for p in procs] == [(p["pid"], p["used"]) for p in rec["procs"]]


def test_trace_time_follows_the_wall_clock_at_speed(fake: Fake) -> None:
    n = fake.nvml
    fake.configure(speed=10)
    n.nvmlInit()
    h = n.nvmlDeviceGetHandleByIndex(0)
    t = time.monotonic()
    time.sleep(0.5)
    energy = n.nvmlDeviceGetTotalEnergyConsumption(h)
    played = (time.monotonic() - t) * 10
    # The energy counter names the record that is playing.
    rec = next(r for r in TRACE if r["energy_mj_call"] == energy)
    assert played - 0.5 <= rec["t"] - T0 <= played + 1.0


def test_energy_keeps_counting_when_the_trace_loops(fake: Fake) -> None:
    n = fake.nvml
    fake.configure(speed=0, start=DURATION + 1.0)
    n.nvmlInit()
    h = n.nvmlDeviceGetHandleByIndex(0)
    first, last = TRACE[0]["energy_mj_call"], TRACE[-1]["energy_mj_call"]
    lap = (last - first) * len(TRACE) / (len(TRACE) - 1)
    assert n.nvmlDeviceGetTotalEnergyConsumption(h) == pytest.approx(record_at(1.0)["energy_mj_call"] + lap, abs=1)
    assert n.nvmlDeviceGetUtilizationRates(h).gpu == record_at(1.0)["util"]["gpu"]  # values loop
    (energy_field,) = n.nvmlDeviceGetFieldValues(h, [83])
    assert energy_field.value.ullVal > TRACE[-1]["fields"]["energy_mj"]


def test_without_loop_the_last_record_stays(fake: Fake) -> None:
    n = fake.nvml
    fake.configure(speed=0, start=DURATION * 3, loop=False)
    n.nvmlInit()
    assert n.nvmlDeviceGetTotalEnergyConsumption(n.nvmlDeviceGetHandleByIndex(0)) == TRACE[-1]["energy_mj_call"]


def test_fanned_out_gpus_match_the_python_fake(fake: Fake) -> None:
    n = fake.nvml
    fake.configure(gpus=8, speed=0)
    n.nvmlInit()
    oracle = CaptureNvml(load_capture(DEMO_CAPTURE), gpus=8, clock=lambda: 0.0)
    oracle.nvmlInit()
    assert n.nvmlDeviceGetCount() == 8
    for i in range(8):
        h, o = n.nvmlDeviceGetHandleByIndex(i), oracle.nvmlDeviceGetHandleByIndex(i)
        assert n.nvmlDeviceGetIndex(h) == i
        assert n.nvmlDeviceGetUUID(h) == oracle.nvmlDeviceGetUUID(o)
        pci, opci = n.nvmlDeviceGetPciInfo(h), oracle.nvmlDeviceGetPciInfo(o)
        fields = ("busId", "busIdLegacy", "domain", "bus", "device")
        assert [getattr(pci, f) for f in fields] == [getattr(opci, f) for f in fields]
        # Each copy plays its own part of the trace.
        assert n.nvmlDeviceGetTotalEnergyConsumption(h) == oracle.nvmlDeviceGetTotalEnergyConsumption(o)
    uuids = {n.nvmlDeviceGetUUID(n.nvmlDeviceGetHandleByIndex(i)) for i in range(8)}
    assert len(uuids) == 8


# --- field values, GPM, processes, events ---------------------------------------------------------


def test_field_values_carry_per_field_return_codes(fake: Fake) -> None:
    n = fake.nvml
    position = middle_of("compute")
    fake.configure(speed=0, start=position)
    n.nvmlInit()
    h = n.nvmlDeviceGetHandleByIndex(0)
    rec = record_at(position)["fields"]
    power, energy, nvlink, probed, unknown = n.nvmlDeviceGetFieldValues(h, [186, 83, 138, 1, 9999])
    assert (power.nvmlReturn, power.valueType, power.value.uiVal) == (0, 1, rec["power_instant_mw"])
    assert (energy.nvmlReturn, energy.value.ullVal) == (0, rec["energy_mj"])
    assert nvlink.nvmlReturn == n.NVML_ERROR_NOT_SUPPORTED  # recorded {"err": 3} in the trace
    assert (probed.nvmlReturn, probed.value.ullVal) == (0, 1)  # not in the trace: as probed
    assert unknown.nvmlReturn == n.NVML_ERROR_NOT_SUPPORTED
    assert power.timestamp == pytest.approx(time.time() * 1e6, abs=10e6)


def test_field_values_whole_call_error(fake: Fake, tmp_path: Path) -> None:
    def edit(probe: dict[str, Any], records: list[dict[str, Any]]) -> None:
        for r in records:
            r["fields"] = {"err": 15}
    fake.configure(capture=edited_capture(tmp_path / "capture", edit))
    n = fake.nvml
    n.nvmlInit()
    raises(fake, "NVMLError_GpuIsLost", n.nvmlDeviceGetFieldValues, n.nvmlDeviceGetHandleByIndex(0), [186])


def gpm_metrics(n: Any, s1: Any, s2: Any, ids: list[int]) -> list[tuple[int, float]]:
    mg = n.c_nvmlGpmMetricsGet_t()
    mg.version = n.NVML_GPM_METRICS_GET_VERSION
    mg.numMetrics = len(ids)
    mg.sample1, mg.sample2 = s1, s2
    for j, metric in enumerate(ids):
        mg.metrics[j].metricId = metric
    n.nvmlGpmMetricsGet(mg)
    return [(mg.metrics[j].nvmlReturn, mg.metrics[j].value) for j in range(len(ids))]


def test_gpm_averages_the_records_between_two_samples(fake: Fake) -> None:
    n = fake.nvml
    fake.configure(speed=10, start=middle_of("idle"))
    n.nvmlInit()
    h = n.nvmlDeviceGetHandleByIndex(0)
    s1, s2 = n.nvmlGpmSampleAlloc(), n.nvmlGpmSampleAlloc()
    t = time.monotonic()
    n.nvmlGpmSampleGet(h, s1)
    time.sleep(1.0)  # 10 trace seconds: from idle well into compute
    n.nvmlGpmSampleGet(h, s2)
    played = (time.monotonic() - t) * 10
    ((ret, sm), (_, probed), (missing, _)) = gpm_metrics(n, s1, s2, [2, 11, 99])
    assert ret == 0
    assert (missing, probed) == (n.NVML_ERROR_NOT_SUPPORTED, 0.0)  # fp64 from probe.json; 99 unknown
    # The mean of sm_util over records after the first sample, up to the second (a window of
    # `played` trace seconds; one record either way for scheduling).
    start = record_index(middle_of("idle"))
    windows = [TRACE[start + 1 + a:start + 1 + a + k] for a in (-1, 0, 1)
               for k in range(int(played / 0.25) - 2, int(played / 0.25) + 3)]
    means = [sum(r["gpm"]["sm_util"] for r in w) / len(w) for w in windows if w]
    assert min(abs(sm - m) for m in means) < 1e-9, (sm, means)
    assert 10 < sm < 90  # part idle, part compute
    n.nvmlGpmSampleFree(s1)
    raises(fake, "NVMLError_InvalidArgument", n.nvmlGpmSampleFree, s1)  # freed already


def record_index(position: float) -> int:
    return max(i for i, r in enumerate(TRACE) if r["t"] <= T0 + position)


def test_gpm_nan_comes_back_with_success(fake: Fake, tmp_path: Path) -> None:
    def edit(probe: dict[str, Any], records: list[dict[str, Any]]) -> None:
        for r in records:
            r["gpm"]["sm_util"] = float("nan")
    fake.configure(capture=edited_capture(tmp_path / "capture", edit), speed=0)
    n = fake.nvml
    n.nvmlInit()
    h = n.nvmlDeviceGetHandleByIndex(0)
    s1, s2 = n.nvmlGpmSampleAlloc(), n.nvmlGpmSampleAlloc()
    n.nvmlGpmSampleGet(h, s1)
    n.nvmlGpmSampleGet(h, s2)
    (ret, sm), (_, occupancy) = gpm_metrics(n, s1, s2, [2, 3])
    assert ret == 0 and math.isnan(sm)
    assert math.isfinite(occupancy)


def test_processes_use_nvmls_two_call_protocol(fake: Fake) -> None:
    n = fake.nvml
    position = next(r["t"] for r in TRACE if r["procs"]) - T0
    fake.configure(speed=0, start=position)
    n.nvmlInit()
    h = n.nvmlDeviceGetHandleByIndex(0)
    count = ctypes.c_uint(0)
    ret = n.nvmlLib.nvmlDeviceGetComputeRunningProcesses_v3(h, ctypes.byref(count), None)
    assert (ret, count.value) == (n.NVML_ERROR_INSUFFICIENT_SIZE, 1)
    (proc,) = n.nvmlDeviceGetComputeRunningProcesses(h)
    recorded = record_at(position)["procs"][0]
    assert (proc.pid, proc.usedGpuMemory) == (recorded["pid"], recorded["used"])
    assert proc.gpuInstanceId == 0xFFFFFFFF
    assert n.nvmlDeviceGetGraphicsRunningProcesses(h) == []


def test_xid_events_reach_every_registered_set_and_time_out_otherwise(fake: Fake) -> None:
    n = fake.nvml
    fake.configure(gpus=2, faults="xid 1 0.2 79\nxid 0 0.3 48\n")
    n.nvmlInit()
    h0, h1 = n.nvmlDeviceGetHandleByIndex(0), n.nvmlDeviceGetHandleByIndex(1)
    only_gpu1, both = n.nvmlEventSetCreate(), n.nvmlEventSetCreate()
    n.nvmlDeviceRegisterEvents(h1, n.nvmlEventTypeXidCriticalError, only_gpu1)
    for h in (h0, h1):
        n.nvmlDeviceRegisterEvents(h, n.nvmlEventTypeXidCriticalError | n.nvmlEventTypePState, both)
    raises(fake, "NVMLError_NotSupported", n.nvmlDeviceRegisterEvents, h0, 1 << 40, both)
    raises(fake, "NVMLError_Timeout", n.nvmlEventSetWait_v2, only_gpu1, 50)  # nothing due yet
    data = n.nvmlEventSetWait_v2(only_gpu1, 2000)
    assert (data.eventType, data.eventData) == (n.nvmlEventTypeXidCriticalError, 79)
    assert ctypes.addressof(data.device.contents) == ctypes.addressof(h1.contents)
    raises(fake, "NVMLError_Timeout", n.nvmlEventSetWait_v2, only_gpu1, 300)  # GPU 0's XID is not ours
    assert [n.nvmlEventSetWait_v2(both, 2000).eventData for _ in range(2)] == [79, 48]
    n.nvmlEventSetFree(only_gpu1)
    n.nvmlEventSetFree(both)


def test_shutdown_releases_a_waiting_event_thread(fake: Fake) -> None:
    n = fake.nvml
    n.nvmlInit()
    event_set = n.nvmlEventSetCreate()
    n.nvmlDeviceRegisterEvents(n.nvmlDeviceGetHandleByIndex(0), n.nvmlEventTypeXidCriticalError, event_set)
    got: list[BaseException] = []

    def wait() -> None:
        try:
            n.nvmlEventSetWait_v2(event_set, 10_000)
        except n.NVMLError as exc:
            got.append(exc)
    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.1)
    t = time.monotonic()
    n.nvmlShutdown()
    thread.join(2.0)
    assert not thread.is_alive() and time.monotonic() - t < 1.0
    assert isinstance(got[0], n.NVMLError_Uninitialized)


# --- faults --------------------------------------------------------------------------------------


def test_lost_gpu_window(fake: Fake) -> None:
    n = fake.nvml
    fake.configure(gpus=2, faults="# GPU 1 falls off the bus for 0.3 s\nlost 1 0 0.3\n")
    n.nvmlInit()
    h0, h1 = n.nvmlDeviceGetHandleByIndex(0), n.nvmlDeviceGetHandleByIndex(1)
    raises(fake, "NVMLError_GpuIsLost", n.nvmlDeviceGetPowerUsage, h1)
    raises(fake, "NVMLError_GpuIsLost", n.nvmlDeviceGetHandleByUUID, n.nvmlDeviceGetUUID(h0)[:-4] + "0001")
    assert n.nvmlDeviceGetPowerUsage(h0) > 0
    time.sleep(0.35)
    assert n.nvmlDeviceGetPowerUsage(h1) > 0


def test_error_fault_by_name_matches_versioned_calls(fake: Fake) -> None:
    n = fake.nvml
    fake.configure(gpus=2, faults="error nvmlDeviceGetMemoryInfo NotSupported 0\nerror * Timeout 1\n")
    n.nvmlInit()
    h0, h1 = n.nvmlDeviceGetHandleByIndex(0), n.nvmlDeviceGetHandleByIndex(1)
    raises(fake, "NVMLError_NotSupported", n.nvmlDeviceGetMemoryInfo, h0)
    raises(fake, "NVMLError_NotSupported", n.nvmlDeviceGetMemoryInfo, h0, n.nvmlMemory_v2)
    assert n.nvmlDeviceGetPowerUsage(h0) > 0
    raises(fake, "NVMLError_Timeout", n.nvmlDeviceGetPowerUsage, h1)


def test_hung_call_blocks_only_its_gpu(fake: Fake) -> None:
    n = fake.nvml
    fake.configure(gpus=2, faults="hang nvmlDeviceGetPowerUsage 0.4 0\n")
    n.nvmlInit()
    h0, h1 = n.nvmlDeviceGetHandleByIndex(0), n.nvmlDeviceGetHandleByIndex(1)
    done: list[float] = []
    t = time.monotonic()
    thread = threading.Thread(target=lambda: done.append(n.nvmlDeviceGetPowerUsage(h0)))
    thread.start()
    n.nvmlDeviceGetPowerUsage(h1)
    assert time.monotonic() - t < 0.2  # GPU 1 answered while GPU 0 hung
    thread.join(2.0)
    assert done and time.monotonic() - t >= 0.4
    t = time.monotonic()
    n.nvmlDeviceGetPowerUsage(h0)  # the hang window is over
    assert time.monotonic() - t < 0.2


def test_init_error(fake: Fake) -> None:
    fake.configure(faults="init_error DriverNotLoaded\n")
    raises(fake, "NVMLError_DriverNotLoaded", fake.nvml.nvmlInit)
    fake.configure(faults="init_error 12\n")
    raises(fake, "NVMLError_LibraryNotFound", fake.nvml.nvmlInit)


@pytest.mark.parametrize(("setting", "message"), [
    ({"gpus": "many"}, "FAKENVML_GPUS=many: expected a whole number from 1 to 1024"),
    ({"speed": "-1"}, "FAKENVML_SPEED=-1: expected a number not below 0"),
    ({"faults": "lost 1 soon\n"}, "faults.txt:1: expected: lost GPU FROM TO"),
    ({"faults": "\n\nexplode 0\n"}, "faults.txt:3: unknown fault"),
    ({"faults": "# one GPU\nxid 1 0.5 79\n"}, "faults.txt:2: there is no GPU 1, only 1 (FAKENVML_GPUS sets"),
    ({"capture": Path("/nonexistent/capture")}, "/nonexistent/capture: capture not found"),
])
def test_bad_configuration_fails_init_and_says_why(
        fake: Fake, capfd: pytest.CaptureFixture[str], setting: dict[str, Any], message: str) -> None:
    fake.configure(**setting)
    raises(fake, "NVMLError_Unknown", fake.nvml.nvmlInit)
    assert message in capfd.readouterr().err


def test_invalid_trace_line_is_named(fake: Fake, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    capture = edited_capture(tmp_path / "capture", lambda probe, records: None)
    with (capture / "trace.jsonl").open("a") as f:
        f.write('{"t": 1, "gpu": "zero"}\n')
    fake.configure(capture=capture)
    raises(fake, "NVMLError_Unknown", fake.nvml.nvmlInit)
    assert f"trace.jsonl:{len(TRACE) + 1}: field 'gpu' missing or not a whole number" in capfd.readouterr().err


def test_recorded_latency_is_slept_when_asked(fake: Fake) -> None:
    n = fake.nvml

    def seconds(call: Callable[..., Any], *args: Any) -> float:
        t = time.perf_counter()
        call(*args)
        return time.perf_counter() - t
    fake.configure(speed=0, start=middle_of("compute"), latency=1)
    n.nvmlInit()
    h = n.nvmlDeviceGetHandleByIndex(0)
    rec = record_at(middle_of("compute"))
    assert seconds(n.nvmlDeviceGetPcieThroughput, h, n.NVML_PCIE_UTIL_TX_BYTES) >= rec["lat_us"]["pcie_tx_kbps"] / 1e6
    assert seconds(n.nvmlDeviceGetTotalEnergyConsumption, h) >= rec["lat_us"]["energy_mj_call"] / 1e6
    assert seconds(n.nvmlDeviceGetFieldValues, h, [83, 191]) >= 2e-3  # the slow fields are what cost
    assert seconds(n.nvmlDeviceGetPowerUsage, h) < 5e-3
    n.nvmlShutdown()
    fake.configure(speed=0, latency=0)
    n.nvmlInit()
    assert seconds(n.nvmlDeviceGetPcieThroughput, n.nvmlDeviceGetHandleByIndex(0), 0) < 5e-3


def test_nested_init_is_counted(fake: Fake) -> None:
    n = fake.nvml
    n.nvmlInit()
    n.nvmlInit()
    n.nvmlShutdown()
    assert n.nvmlDeviceGetCount() == 1  # still initialised once more
    n.nvmlShutdown()
    raises(fake, "NVMLError_Uninitialized", n.nvmlDeviceGetCount)


def test_parallel_callers_on_many_gpus(fake: Fake) -> None:
    n = fake.nvml
    fake.configure(gpus=8, speed=20, faults="xid 3 0.1 31\n")
    n.nvmlInit()
    event_set = n.nvmlEventSetCreate()
    for i in range(8):
        n.nvmlDeviceRegisterEvents(n.nvmlDeviceGetHandleByIndex(i), n.nvmlEventTypeXidCriticalError, event_set)
    errors: list[BaseException] = []
    xids: list[int] = []

    def poll(i: int) -> None:
        try:
            h = n.nvmlDeviceGetHandleByIndex(i)
            for _ in range(40):
                s1, s2 = n.nvmlGpmSampleAlloc(), n.nvmlGpmSampleAlloc()
                n.nvmlGpmSampleGet(h, s1)
                n.nvmlDeviceGetMemoryInfo(h, version=n.nvmlMemory_v2)
                n.nvmlDeviceGetFieldValues(h, [186, 83, 82, 138])
                n.nvmlDeviceGetComputeRunningProcesses(h)
                n.nvmlDeviceGetHandleByUUID(n.nvmlDeviceGetUUID(h))
                n.nvmlGpmSampleGet(h, s2)
                gpm_metrics(n, s1, s2, [1, 2, 3, 5, 10, 20, 21])
                n.nvmlGpmSampleFree(s1)
                n.nvmlGpmSampleFree(s2)
        except BaseException as exc:
            errors.append(exc)

    def events() -> None:
        try:
            xids.append(n.nvmlEventSetWait_v2(event_set, 3000).eventData)
        except BaseException as exc:
            errors.append(exc)
    threads = [threading.Thread(target=poll, args=(i,)) for i in range(8)] + [threading.Thread(target=events)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and xids == [31]
