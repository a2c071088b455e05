"""FaultyNvml misbehaves as the fake library's fault script does (tools/fakenvml/faults.c): a fault
that fires at the wrong time, on the wrong GPU or not at all would make every test that uses it
pass for the wrong reason."""

from __future__ import annotations

import threading
import time
from typing import Any

import pynvml
import pytest

from gpumon.sources.capture import Capture
from gpumon.sources.capture_nvml import CaptureNvml
from tests.support.clock import FakeClock
from tests.support.faults import Faults, FaultyNvml, call_matches


def faulty(capture: Capture, clock: FakeClock, faults: Faults, gpus: int = 2) -> FaultyNvml:
    nvml = FaultyNvml(CaptureNvml(capture, gpus=gpus, clock=clock), faults, clock=clock)
    nvml.nvmlInit()
    return nvml


def test_names_match_as_the_library_matches_them() -> None:
    assert call_matches("nvmlDeviceGetMemoryInfo", "nvmlDeviceGetMemoryInfo")
    assert call_matches("nvmlDeviceGetMemoryInfo", "nvmlDeviceGetMemoryInfo_v2")
    assert call_matches("*", "nvmlDeviceGetPowerUsage")
    assert not call_matches("nvmlDeviceGetMemoryInfo_v2", "nvmlDeviceGetMemoryInfo")
    assert not call_matches("nvmlDeviceGetMemory", "nvmlDeviceGetMemoryInfo")
    assert not call_matches("nvmlDeviceGetMemoryInfo", "nvmlDeviceGetMemoryInfo_vx")


def test_a_lost_gpu_fails_every_call_and_its_own_lookup_in_its_window(capture: Capture, clock: FakeClock) -> None:
    nvml = faulty(capture, clock, Faults(lost=[(0, 5.0, 10.0)]))
    h0, h1 = (nvml.nvmlDeviceGetHandleByIndex(i) for i in range(2))
    uuid0, uuid1 = nvml.nvmlDeviceGetUUID(h0), nvml.nvmlDeviceGetUUID(h1)
    clock.advance(4.9)
    assert nvml.nvmlDeviceGetPowerUsage(h0) > 0
    clock.advance(0.1)
    for call in (nvml.nvmlDeviceGetPowerUsage, nvml.nvmlDeviceGetName, nvml.nvmlDeviceGetUUID):
        with pytest.raises(pynvml.NVMLError_GpuIsLost):
            call(h0)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        nvml.nvmlDeviceGetHandleByUUID(uuid0)
    assert nvml.nvmlDeviceGetHandleByUUID(uuid1) is h1  # only the GPU asked for answers
    assert nvml.nvmlDeviceGetPowerUsage(h1) > 0
    clock.advance(4.99)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        nvml.nvmlDeviceGetPowerUsage(h0)
    clock.advance(0.01)
    assert nvml.nvmlDeviceGetPowerUsage(h0) > 0


def test_error_faults_by_call_and_gpu_and_versioned_calls(capture: Capture, clock: FakeClock) -> None:
    nvml = faulty(capture, clock, Faults(errors=[
        ("nvmlDeviceGetPowerUsage", 1, pynvml.NVML_ERROR_UNKNOWN),
        ("nvmlDeviceGetTemperature", None, pynvml.NVML_ERROR_NO_PERMISSION),
        ("nvmlDeviceGetMemoryInfo_v2", 0, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)]))
    h0, h1 = (nvml.nvmlDeviceGetHandleByIndex(i) for i in range(2))
    assert nvml.nvmlDeviceGetPowerUsage(h0) > 0
    with pytest.raises(pynvml.NVMLError_Unknown):
        nvml.nvmlDeviceGetPowerUsage(h1)
    for h in (h0, h1):
        with pytest.raises(pynvml.NVMLError_NoPermission):
            nvml.nvmlDeviceGetTemperature(h, 0)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):  # what pynvml meets on a driver before 515
        nvml.nvmlDeviceGetMemoryInfo(h0, version=pynvml.nvmlMemory_v2)
    assert nvml.nvmlDeviceGetMemoryInfo(h0).total > 0  # v1 is there
    assert nvml.calls["nvmlDeviceGetMemoryInfo"] == 2


def test_init_error(capture: Capture, clock: FakeClock) -> None:
    nvml = FaultyNvml(CaptureNvml(capture, clock=clock), Faults(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED))
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        nvml.nvmlInit()


def test_a_hung_call_blocks_until_its_window_ends(capture: Capture, clock: FakeClock) -> None:
    nvml = faulty(capture, clock, Faults(hangs=[("nvmlDeviceGetPowerUsage", 0, 1.0, 5.0)]))
    h0, h1 = (nvml.nvmlDeviceGetHandleByIndex(i) for i in range(2))
    assert nvml.nvmlDeviceGetPowerUsage(h0) > 0  # before the hang
    clock.advance(1.0)
    assert nvml.nvmlDeviceGetPowerUsage(h1) > 0 and nvml.nvmlDeviceGetTemperature(h0, 0) > 0  # not hung
    result: list[Any] = []
    caller = threading.Thread(target=lambda: result.append(nvml.nvmlDeviceGetPowerUsage(h0)), daemon=True)
    caller.start()
    caller.join(timeout=0.1)
    assert caller.is_alive() and not result
    clock.advance(5.0)
    caller.join(timeout=3)
    assert not caller.is_alive() and result and result[0] > 0


def test_shutdown_releases_a_hung_call(capture: Capture, clock: FakeClock) -> None:
    nvml = faulty(capture, clock, Faults(hangs=[("*", 0, 0.0, 1e9)]))
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            nvml.nvmlDeviceGetPowerUsage(h)
        except pynvml.NVMLError as exc:
            outcome.append(exc)
    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(timeout=0.05)
    assert caller.is_alive()
    nvml.nvmlShutdown()
    caller.join(timeout=3)
    assert not caller.is_alive()
    assert outcome and isinstance(outcome[0], pynvml.NVMLError_Uninitialized)


def test_xids_reach_registered_gpus_once_each_when_due(capture: Capture, clock: FakeClock) -> None:
    nvml = faulty(capture, clock, Faults(xids=[(0, 2.0, 48), (0, 1.0, 79), (1, 0.5, 13)]))
    h0, h1 = (nvml.nvmlDeviceGetHandleByIndex(i) for i in range(2))
    event_set = nvml.nvmlEventSetCreate()
    nvml.nvmlDeviceRegisterEvents(h0, pynvml.nvmlEventTypeXidCriticalError, event_set)
    with pytest.raises(pynvml.NVMLError_Timeout):
        nvml.nvmlEventSetWait_v2(event_set, 10)  # nothing due yet
    clock.advance(1.0)
    data = nvml.nvmlEventSetWait_v2(event_set, 10)
    assert (data.device, data.eventType, data.eventData) == (h0, pynvml.nvmlEventTypeXidCriticalError, 79)
    with pytest.raises(pynvml.NVMLError_Timeout):
        nvml.nvmlEventSetWait_v2(event_set, 10)  # delivered once; GPU 1's XID 13 is due but not registered
    clock.advance(1.0)
    assert nvml.nvmlEventSetWait_v2(event_set, 10).eventData == 48
    nvml.nvmlDeviceRegisterEvents(h1, pynvml.nvmlEventTypeXidCriticalError, event_set)
    data = nvml.nvmlEventSetWait_v2(event_set, 10)
    assert (data.device, data.eventData) == (h1, 13)


def test_an_event_wait_sees_the_clock_move_and_never_hangs_on_a_still_one(capture: Capture,
                                                                          clock: FakeClock) -> None:
    nvml = faulty(capture, clock, Faults(xids=[(0, 1.0, 79)]), gpus=1)
    event_set = nvml.nvmlEventSetCreate()
    nvml.nvmlDeviceRegisterEvents(nvml.nvmlDeviceGetHandleByIndex(0), pynvml.nvmlEventTypeXidCriticalError,
                                  event_set)
    t = time.monotonic()
    with pytest.raises(pynvml.NVMLError_Timeout):  # the fake clock stands still: real time bounds it
        nvml.nvmlEventSetWait_v2(event_set, 30)
    assert time.monotonic() - t < 1.0
    result: list[Any] = []
    waiter = threading.Thread(target=lambda: result.append(nvml.nvmlEventSetWait_v2(event_set, 5000)), daemon=True)
    waiter.start()
    time.sleep(0.02)
    clock.advance(1.0)  # moved by another thread
    waiter.join(timeout=3)
    assert not waiter.is_alive() and result and result[0].eventData == 79
    assert time.monotonic() - t < 1.5


def test_a_lost_gpu_takes_its_mig_devices_with_it_on_the_library(library: Any) -> None:
    """pynvml gives MIG device handles the GPU handles' type but no index: their faults are their
    parent GPU's."""
    from tests.fixtures.mig.generate import OUT_DIR as MIG

    library.configure(capture=MIG, speed=0, start=1.0)
    clock = FakeClock(0.0)
    nvml = FaultyNvml(library.nvml, Faults(lost=[(0, 5.0, 10.0)]), clock=clock)
    nvml.nvmlInit()
    try:
        mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(nvml.nvmlDeviceGetHandleByIndex(0), 0)
        assert nvml.nvmlDeviceGetMemoryInfo(mig).total > 0
        clock.advance(6.0)
        with pytest.raises(pynvml.NVMLError_GpuIsLost):
            nvml.nvmlDeviceGetMemoryInfo(mig)
    finally:
        nvml.nvmlShutdown()
