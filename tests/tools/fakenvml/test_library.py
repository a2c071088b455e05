"""What only the fake libnvidia-ml.so.1 shows, through the real pynvml: its ABI, its fault script,
latency, threads and pynvml's ctypes path. What it answers alike with CaptureNvml is the contract in
tests/sources/test_nvml_api.py and tests/sources/test_nvml.py."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gpumon import catalog
from gpumon.attribution.owners import Owners
from gpumon.model import BackendUnavailable, Tier
from gpumon.sources.base import Unit
from gpumon.sources.capture import load_capture
from gpumon.sources.nvml import NvmlSource
from gpumon.sources.processes import ProcessSource
from gpumon.sources.replay import DEMO_CAPTURE
from tests.support.clock import FakeClock
from tests.support.nvml import LibraryFake, edited_capture, gpm_metrics, middle_of, record_at
from tools.fakenvml import SOURCE_DIR

CAPTURE = load_capture(DEMO_CAPTURE)
TRACE = CAPTURE.traces[0]
PROBE = CAPTURE.probe["devices"][0]
T0 = TRACE[0]["t"]
DURATION = CAPTURE.duration(0)


# The MIG reads (tests/sources/test_capture_mig.py, tests/tools/fakenvml/test_mig.py), by the names
# pynvml asks for; MIG's setters (nvmlDeviceSetMigMode, creating and destroying instances) are not.
MIG_CALLS = {"nvmlDeviceGetMigMode", "nvmlDeviceGetMaxMigDeviceCount", "nvmlDeviceGetMigDeviceHandleByIndex",
             "nvmlDeviceGetDeviceHandleFromMigDeviceHandle", "nvmlDeviceIsMigDeviceHandle",
             "nvmlDeviceGetGpuInstanceId", "nvmlDeviceGetComputeInstanceId", "nvmlDeviceGetAttributes_v2",
             "nvmlDeviceGetAttributes", "nvmlDeviceGetGpuInstanceById", "nvmlGpuInstanceGetInfo",
             "nvmlGpmMigSampleGet"}
NO_NVLINK = sum(1 for m in catalog.METRICS if m.source == "nvml" and m.name.startswith("gpumon_nvlink_"))




def raises(library: LibraryFake, error: str, call: Callable[..., Any], *args: Any) -> None:
    with pytest.raises(getattr(library.nvml, error)):
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
    assert not {"nvmlDeviceSetMigMode", "nvmlDeviceCreateGpuInstance", "nvmlGpuInstanceDestroy"} & exported
    assert {"nvmlInitWithFlags", "nvmlGpmMetricsGet", "nvmlEventSetWait_v2", "nvmlDeviceGetFieldValues"} <= exported
    assert exported >= MIG_CALLS


def test_sources_have_no_fixed_size_string_copies() -> None:
    for source in SOURCE_DIR.glob("*.c"):
        text = source.read_text()
        for unsafe in ("strcpy(", "strcat(", "sprintf(", "gets("):
            assert f" {unsafe}" not in text and f"({unsafe}" not in text, f"{source.name}: {unsafe}"


def test_calls_before_init_are_uninitialized_and_unknown_functions_not_found(library: LibraryFake) -> None:
    n = library.nvml
    raises(library, "NVMLError_Uninitialized", n.nvmlDeviceGetCount)
    n.nvmlInit()
    raises(library, "NVMLError_FunctionNotFound", n.nvmlDeviceGetEncoderUtilization, n.nvmlDeviceGetHandleByIndex(0))
    assert n.nvmlErrorString(n.NVML_ERROR_GPU_IS_LOST) == "GPU is lost"
    assert str(n.NVMLError(n.NVML_ERROR_NOT_SUPPORTED)) == "Not Supported"


# --- static answers ------------------------------------------------------------------------------


# --- time ----------------------------------------------------------------------------------------


def test_trace_time_follows_the_wall_clock_at_speed(library: LibraryFake) -> None:
    n = library.nvml
    library.configure(speed=10)
    n.nvmlInit()
    h = n.nvmlDeviceGetHandleByIndex(0)
    t = time.monotonic()
    time.sleep(0.5)
    energy = n.nvmlDeviceGetTotalEnergyConsumption(h)
    played = (time.monotonic() - t) * 10
    # The energy counter names the record that is playing.
    rec = next(r for r in TRACE if r["energy_mj_call"] == energy)
    assert played - 0.5 <= rec["t"] - T0 <= played + 1.0


def test_energy_keeps_counting_when_the_trace_loops(library: LibraryFake) -> None:
    n = library.nvml
    library.configure(speed=0, start=DURATION + 1.0)
    n.nvmlInit()
    h = n.nvmlDeviceGetHandleByIndex(0)
    first, last = TRACE[0]["energy_mj_call"], TRACE[-1]["energy_mj_call"]
    lap = (last - first) * len(TRACE) / (len(TRACE) - 1)
    want = record_at(CAPTURE, 1.0)["energy_mj_call"] + lap
    assert n.nvmlDeviceGetTotalEnergyConsumption(h) == pytest.approx(want, abs=1)
    assert n.nvmlDeviceGetUtilizationRates(h).gpu == record_at(CAPTURE, 1.0)["util"]["gpu"]  # values loop
    (energy_field,) = n.nvmlDeviceGetFieldValues(h, [83])
    assert energy_field.value.ullVal > TRACE[-1]["fields"]["energy_mj"]


# --- field values, GPM, processes, events ---------------------------------------------------------


def test_processes_use_nvmls_two_call_protocol(library: LibraryFake) -> None:
    n = library.nvml
    position = next(r["t"] for r in TRACE if r["procs"]) - T0
    library.configure(speed=0, start=position)
    n.nvmlInit()
    h = n.nvmlDeviceGetHandleByIndex(0)
    count = ctypes.c_uint(0)
    ret = n.nvmlLib.nvmlDeviceGetComputeRunningProcesses_v3(h, ctypes.byref(count), None)
    assert (ret, count.value) == (n.NVML_ERROR_INSUFFICIENT_SIZE, 1)
    (proc,) = n.nvmlDeviceGetComputeRunningProcesses(h)
    recorded = record_at(CAPTURE, position)["procs"][0]
    assert (proc.pid, proc.usedGpuMemory) == (recorded["pid"], recorded["used"])
    assert proc.gpuInstanceId == 0xFFFFFFFF
    assert n.nvmlDeviceGetGraphicsRunningProcesses(h) == []


def test_xid_events_reach_every_registered_set_and_time_out_otherwise(library: LibraryFake) -> None:
    n = library.nvml
    library.configure(gpus=2, faults="xid 1 0.2 79\nxid 0 0.3 48\n")
    n.nvmlInit()
    h0, h1 = n.nvmlDeviceGetHandleByIndex(0), n.nvmlDeviceGetHandleByIndex(1)
    only_gpu1, both = n.nvmlEventSetCreate(), n.nvmlEventSetCreate()
    n.nvmlDeviceRegisterEvents(h1, n.nvmlEventTypeXidCriticalError, only_gpu1)
    for h in (h0, h1):
        n.nvmlDeviceRegisterEvents(h, n.nvmlEventTypeXidCriticalError | n.nvmlEventTypePState, both)
    raises(library, "NVMLError_NotSupported", n.nvmlDeviceRegisterEvents, h0, 1 << 40, both)
    raises(library, "NVMLError_Timeout", n.nvmlEventSetWait_v2, only_gpu1, 50)  # nothing due yet
    data = n.nvmlEventSetWait_v2(only_gpu1, 2000)
    assert (data.eventType, data.eventData) == (n.nvmlEventTypeXidCriticalError, 79)
    assert ctypes.addressof(data.device.contents) == ctypes.addressof(h1.contents)
    raises(library, "NVMLError_Timeout", n.nvmlEventSetWait_v2, only_gpu1, 300)  # GPU 0's XID is not ours
    assert [n.nvmlEventSetWait_v2(both, 2000).eventData for _ in range(2)] == [79, 48]
    n.nvmlEventSetFree(only_gpu1)
    n.nvmlEventSetFree(both)


def test_shutdown_releases_a_waiting_event_thread(library: LibraryFake) -> None:
    n = library.nvml
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


def test_lost_gpu_window(library: LibraryFake) -> None:
    n = library.nvml
    library.configure(gpus=2, faults="# GPU 1 falls off the bus for 0.3 s\nlost 1 0 0.3\n")
    n.nvmlInit()
    h0, h1 = n.nvmlDeviceGetHandleByIndex(0), n.nvmlDeviceGetHandleByIndex(1)
    raises(library, "NVMLError_GpuIsLost", n.nvmlDeviceGetPowerUsage, h1)
    raises(library, "NVMLError_GpuIsLost", n.nvmlDeviceGetHandleByUUID, n.nvmlDeviceGetUUID(h0)[:-4] + "0001")
    assert n.nvmlDeviceGetPowerUsage(h0) > 0
    time.sleep(0.35)
    assert n.nvmlDeviceGetPowerUsage(h1) > 0


def test_error_fault_by_name_matches_versioned_calls(library: LibraryFake) -> None:
    n = library.nvml
    library.configure(gpus=2, faults="error nvmlDeviceGetMemoryInfo NotSupported 0\nerror * Timeout 1\n")
    n.nvmlInit()
    h0, h1 = n.nvmlDeviceGetHandleByIndex(0), n.nvmlDeviceGetHandleByIndex(1)
    raises(library, "NVMLError_NotSupported", n.nvmlDeviceGetMemoryInfo, h0)
    raises(library, "NVMLError_NotSupported", n.nvmlDeviceGetMemoryInfo, h0, n.nvmlMemory_v2)
    assert n.nvmlDeviceGetPowerUsage(h0) > 0
    raises(library, "NVMLError_Timeout", n.nvmlDeviceGetPowerUsage, h1)


def test_hung_call_blocks_only_its_gpu(library: LibraryFake) -> None:
    n = library.nvml
    library.configure(gpus=2, faults="hang nvmlDeviceGetPowerUsage 0.4 0\n")
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


def test_init_error(library: LibraryFake) -> None:
    library.configure(faults="init_error DriverNotLoaded\n")
    raises(library, "NVMLError_DriverNotLoaded", library.nvml.nvmlInit)
    library.configure(faults="init_error 12\n")
    raises(library, "NVMLError_LibraryNotFound", library.nvml.nvmlInit)


@pytest.mark.parametrize(("setting", "message"), [
    ({"gpus": "many"}, "FAKENVML_GPUS=many: expected a whole number from 1 to 1024"),
    ({"speed": "-1"}, "FAKENVML_SPEED=-1: expected a number not below 0"),
    ({"faults": "lost 1 soon\n"}, "faults.txt:1: expected: lost GPU FROM TO"),
    ({"faults": "\n\nexplode 0\n"}, "faults.txt:3: unknown fault"),
    ({"faults": "# one GPU\nxid 1 0.5 79\n"}, "faults.txt:2: there is no GPU 1, only 1 (FAKENVML_GPUS sets"),
    ({"capture": Path("/nonexistent/capture")}, "/nonexistent/capture: capture not found"),
])
def test_bad_configuration_fails_init_and_says_why(
        library: LibraryFake, capfd: pytest.CaptureFixture[str], setting: dict[str, Any], message: str) -> None:
    library.configure(**setting)
    raises(library, "NVMLError_Unknown", library.nvml.nvmlInit)
    assert message in capfd.readouterr().err


def test_invalid_trace_line_is_named(library: LibraryFake, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    capture = edited_capture(tmp_path / "capture", lambda probe, records: None)
    with (capture / "trace.jsonl").open("a") as f:
        f.write('{"t": 1, "gpu": "zero"}\n')
    library.configure(capture=capture)
    raises(library, "NVMLError_Unknown", library.nvml.nvmlInit)
    assert f"trace.jsonl:{len(TRACE) + 1}: field 'gpu' missing or not a whole number" in capfd.readouterr().err


def test_recorded_latency_is_slept_when_asked(library: LibraryFake) -> None:
    n = library.nvml

    def seconds(call: Callable[..., Any], *args: Any) -> float:
        t = time.perf_counter()
        call(*args)
        return time.perf_counter() - t
    library.configure(speed=0, start=middle_of(CAPTURE, "compute"), latency=1)
    n.nvmlInit()
    h = n.nvmlDeviceGetHandleByIndex(0)
    rec = record_at(CAPTURE, middle_of(CAPTURE, "compute"))
    assert seconds(n.nvmlDeviceGetPcieThroughput, h, n.NVML_PCIE_UTIL_TX_BYTES) >= rec["lat_us"]["pcie_tx_kbps"] / 1e6
    assert seconds(n.nvmlDeviceGetTotalEnergyConsumption, h) >= rec["lat_us"]["energy_mj_call"] / 1e6
    assert seconds(n.nvmlDeviceGetFieldValues, h, [83, 191]) >= 2e-3  # the slow fields are what cost
    assert seconds(n.nvmlDeviceGetPowerUsage, h) < 5e-3
    n.nvmlShutdown()
    library.configure(speed=0, latency=0)
    n.nvmlInit()
    assert seconds(n.nvmlDeviceGetPcieThroughput, n.nvmlDeviceGetHandleByIndex(0), 0) < 5e-3


def test_nested_init_is_counted(library: LibraryFake) -> None:
    n = library.nvml
    n.nvmlInit()
    n.nvmlInit()
    n.nvmlShutdown()
    assert n.nvmlDeviceGetCount() == 1  # still initialised once more
    n.nvmlShutdown()
    raises(library, "NVMLError_Uninitialized", n.nvmlDeviceGetCount)


def test_parallel_callers_on_many_gpus(library: LibraryFake) -> None:
    n = library.nvml
    library.configure(gpus=8, speed=20, faults="xid 3 0.1 31\n")
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


# --- gpumon on the library -------------------------------------------------------------------------


@pytest.fixture
def resolved(library: LibraryFake, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The names of the C functions pynvml looks up, in order."""
    names: list[str] = []
    real = library.nvml._nvmlGetFunctionPointer

    def recording(name: str) -> Any:
        names.append(name)
        return real(name)
    monkeypatch.setattr(library.nvml, "_nvmlGetFunctionPointer", recording)
    yield names



def test_gpumon_calls_nothing_the_library_lacks(library: LibraryFake, resolved: list[str]) -> None:
    library.configure(gpus=2, faults="xid 0 0 13\n")
    clock = FakeClock()
    source = NvmlSource(library.nvml, clock=clock)
    source.open()
    processes = ProcessSource(source, Owners(), procfs=None, per_process=True, utilization=True)
    got = threading.Event()
    source.start_events(lambda gpu, xid, at: got.set())
    for unit in processes.open():
        for tier in Tier:
            processes.poll(unit, tier)
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
    assert source.unsupported_count(0) == NO_NVLINK
    assert {"nvmlInitWithFlags", "nvmlGpmMetricsGet", "nvmlDeviceGetFieldValues", "nvmlEventSetWait_v2",
            "nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetGraphicsRunningProcesses_v3",
            "nvmlDeviceGetMPSComputeRunningProcesses_v3", "nvmlDeviceGetProcessesUtilizationInfo",
            "nvmlDeviceGetMemoryInfo_v2"} <= set(resolved)
    assert all(hasattr(library.nvml.nvmlLib, name) for name in set(resolved))


def test_bad_capture_is_a_clear_message(library: LibraryFake, tmp_path: Path,
                                        capfd: pytest.CaptureFixture[str]) -> None:
    library.configure(capture=tmp_path / "missing")
    with pytest.raises(BackendUnavailable, match=r"NVML failed to initialise: Unknown Error \(NVMLError_Unknown\)"):
        NvmlSource(library.nvml).open()
    assert "missing: capture not found" in capfd.readouterr().err
