"""CaptureNvml's MIG calls on the SYNTHETIC MIG capture, as nvml.h describes them, and the capture's
files equal to what its generator makes."""

from __future__ import annotations

import ctypes

import pynvml
import pytest

from gpumon.sources.capture import load_capture
from gpumon.sources.capture_nvml import CaptureNvml
from tests.fixtures.mig import generate


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def test_the_committed_capture_is_what_the_generator_makes() -> None:
    assert generate.stale() == []


def nvml() -> tuple[CaptureNvml, Clock]:
    clock = Clock()
    n = CaptureNvml(load_capture(generate.OUT_DIR), clock=clock)
    n.nvmlInit()
    return n, clock


def test_mig_devices_by_index_then_not_found() -> None:
    n, _ = nvml()
    gpu = n.nvmlDeviceGetHandleByIndex(0)
    assert n.nvmlDeviceGetMigMode(gpu) == [1, 1]
    assert n.nvmlDeviceGetMaxMigDeviceCount(gpu) == 7
    found = []
    for i in range(7):
        try:
            mig = n.nvmlDeviceGetMigDeviceHandleByIndex(gpu, i)
        except pynvml.NVMLError_NotFound:
            continue
        found.append((n.nvmlDeviceGetGpuInstanceId(mig), n.nvmlDeviceGetComputeInstanceId(mig)))
        assert n.nvmlDeviceGetUUID(mig).startswith("MIG-")
        assert n.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig) is gpu
        assert isinstance(n.nvmlDeviceIsMigDeviceHandle(mig), ctypes.c_uint)  # pynvml's raw return
    assert found == [(2, 0), (3, 0), (3, 1), (9, 0), (10, 0)]
    assert n.nvmlDeviceIsMigDeviceHandle(gpu).value == 0
    with pytest.raises(pynvml.NVMLError_NotSupported):
        n.nvmlDeviceGetAttributes(gpu)  # only MIG handles have attributes


def test_refused_on_the_whole_gpu_while_mig_is_on() -> None:
    n, _ = nvml()
    gpu = n.nvmlDeviceGetHandleByIndex(0)
    for call in (n.nvmlDeviceGetUtilizationRates, n.nvmlDeviceGetRemappedRows):
        with pytest.raises(pynvml.NVMLError_NotSupported):
            call(gpu)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        n.nvmlGpmSampleGet(gpu, n.nvmlGpmSampleAlloc())


def test_a_destroyed_instance_s_handle_is_stale() -> None:
    n, clock = nvml()
    gpu = n.nvmlDeviceGetHandleByIndex(0)
    two_g = n.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 1)
    assert n.nvmlDeviceGetName(two_g) == "NVIDIA H200 MIG 1c.2g.35gb"
    sample = n.nvmlGpmSampleAlloc()
    n.nvmlGpmMigSampleGet(gpu, 3, sample)
    clock.t = 30.0  # after the reconfiguration
    for call in (n.nvmlDeviceGetUUID, n.nvmlDeviceGetMemoryInfo, n.nvmlDeviceGetComputeRunningProcesses):
        with pytest.raises(pynvml.NVMLError_NotFound):
            call(two_g)
    with pytest.raises(pynvml.NVMLError_NotFound):
        n.nvmlGpmMigSampleGet(gpu, 3, n.nvmlGpmSampleAlloc())
    with pytest.raises(pynvml.NVMLError_NotFound):
        n.nvmlGpuInstanceGetInfo(n.nvmlDeviceGetGpuInstanceById(gpu, 3))


def test_gpm_samples_of_two_instances_do_not_mix() -> None:
    n, clock = nvml()
    gpu = n.nvmlDeviceGetHandleByIndex(0)
    a, b = n.nvmlGpmSampleAlloc(), n.nvmlGpmSampleAlloc()
    n.nvmlGpmMigSampleGet(gpu, 2, a)
    clock.t = 1.0
    n.nvmlGpmMigSampleGet(gpu, 9, b)
    mg = pynvml.c_nvmlGpmMetricsGet_t()
    mg.version, mg.numMetrics, mg.sample1, mg.sample2 = pynvml.NVML_GPM_METRICS_GET_VERSION, 1, a, b
    mg.metrics[0].metricId = pynvml.NVML_GPM_METRIC_SM_UTIL
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        n.nvmlGpmMetricsGet(mg)


def test_parent_processes_carry_their_instance_ids() -> None:
    n, _ = nvml()
    procs = n.nvmlDeviceGetComputeRunningProcesses(n.nvmlDeviceGetHandleByIndex(0))
    assert [(p.pid, p.gpuInstanceId, p.computeInstanceId) for p in procs] == [
        (5101, 2, 0), (5201, 3, 0), (5202, 3, 1), (5301, 9, 0), (5401, 10, 0)]
