"""The MIG calls on the SYNTHETIC MIG capture (tests/fixtures/mig), as nvml.h describes them: one
contract, run on both fakes (gpumon's CaptureNvml and the fake libnvidia-ml.so.1 under the real
pynvml), every expected value read from the capture files; and the capture's files equal to what its
generator makes.

Most tests hold the trace still before or after the reconfiguration (`fake.start(MIG_DIR, at=...)`);
the one that needs a handle to outlive its instance plays the trace fast instead. gpumon's MIG source
on the library is in tests/tools/fakenvml/test_mig.py.
"""

from __future__ import annotations

import ctypes
import time
from typing import Any

import pynvml
import pytest

from gpumon.sources.capture import load_capture
from gpumon.sources.replay import DEMO_CAPTURE
from tests.fixtures.mig import generate
from tests.support.nvml import NvmlFake, gpm_metrics, record_at

MIG_DIR = generate.OUT_DIR
CAPTURE = load_capture(MIG_DIR)
TRACE = CAPTURE.traces[0]
PROBE = CAPTURE.probe["devices"][0]
DURATION = CAPTURE.duration(0)
# Seconds into the trace at which the 2g.35gb (GPU instance 3) is destroyed and 11 and 12 are made.
SWITCH_S = next(p["start"] for p in CAPTURE.phases if p["name"] == "after_reconfiguration") - TRACE[0]["t"]
BEFORE, AFTER = 5.0, 30.0
NO_MIG = 0xFFFFFFFF
# NVML_GPM_METRIC_* by the key the layout records them under (gpm.c trace_metric, capture_nvml.py).
GPM_IDS = {"graphics_util": pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL, "sm_util": pynvml.NVML_GPM_METRIC_SM_UTIL,
           "sm_occupancy": pynvml.NVML_GPM_METRIC_SM_OCCUPANCY,
           "any_tensor_util": pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL,
           "dram_bw_util": pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL, "fp32_util": pynvml.NVML_GPM_METRIC_FP32_UTIL,
           "fp16_util": pynvml.NVML_GPM_METRIC_FP16_UTIL}
WHOLE_GPU_IDS = (pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC, pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC,
                 pynvml.NVML_GPM_METRIC_HMMA_TENSOR_UTIL)


def test_the_committed_capture_is_what_the_generator_makes() -> None:
    assert generate.stale() == []


def started(fake: NvmlFake, **start: Any) -> Any:
    n = fake.start(MIG_DIR, **start)
    n.nvmlInit()
    return n


def layout(position: float) -> dict[str, Any]:
    """The MIG layout the trace plays `position` seconds in."""
    return dict(record_at(CAPTURE, position % DURATION)["mig"])


def mig_handles(n: Any, gpu: Any) -> list[Any]:
    """Every MIG device handle of `gpu`, by index up to nvmlDeviceGetMaxMigDeviceCount."""
    out = []
    for i in range(n.nvmlDeviceGetMaxMigDeviceCount(gpu)):
        try:
            out.append(n.nvmlDeviceGetMigDeviceHandleByIndex(gpu, i))
        except pynvml.NVMLError_NotFound:
            continue
    return out


# --- mode and enumeration -------------------------------------------------------------------------


@pytest.mark.parametrize("position", [BEFORE, AFTER])
def test_mig_devices_by_index_are_the_layouts_then_not_found(nvml_fake: NvmlFake, position: float) -> None:
    n = started(nvml_fake, at=position)
    gpu = n.nvmlDeviceGetHandleByIndex(0)
    want = layout(position)
    assert n.nvmlDeviceGetMigMode(gpu) == want["mode"]
    assert n.nvmlDeviceGetMaxMigDeviceCount(gpu) == PROBE["getters"]["nvmlDeviceGetMaxMigDeviceCount"]["ok"]
    handles = mig_handles(n, gpu)
    got = [(n.nvmlDeviceGetGpuInstanceId(m), n.nvmlDeviceGetComputeInstanceId(m), n.nvmlDeviceGetUUID(m),
            n.nvmlDeviceGetName(m)) for m in handles]
    assert got == [(d["gi"], d["ci"], d["uuid"], d["name"]) for d in want["devices"]]
    for i in (len(handles), 99):
        with pytest.raises(pynvml.NVMLError_NotFound):
            n.nvmlDeviceGetMigDeviceHandleByIndex(gpu, i)
    for m in handles:
        parent = n.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(m)
        assert n.nvmlDeviceGetUUID(parent) == n.nvmlDeviceGetUUID(gpu)
        is_mig = n.nvmlDeviceIsMigDeviceHandle(m)
        assert isinstance(is_mig, ctypes.c_uint) and is_mig.value == 1  # pynvml's raw return
    assert n.nvmlDeviceIsMigDeviceHandle(gpu).value == 0


def test_each_handle_kind_is_refused_where_the_other_is_meant(nvml_fake: NvmlFake) -> None:
    n = started(nvml_fake, at=BEFORE)
    gpu = n.nvmlDeviceGetHandleByIndex(0)
    mig = n.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        n.nvmlDeviceGetAttributes(gpu)  # only MIG devices have attributes
    for call in (n.nvmlDeviceGetGpuInstanceId, n.nvmlDeviceGetComputeInstanceId,
                 n.nvmlDeviceGetDeviceHandleFromMigDeviceHandle):
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            call(gpu)
    for call in (n.nvmlDeviceGetMigMode, n.nvmlDeviceGetMaxMigDeviceCount, n.nvmlDeviceGetIndex,
                 n.nvmlDeviceGetPowerUsage, n.nvmlDeviceGetGraphicsRunningProcesses):
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            call(mig)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        n.nvmlGpmMigSampleGet(mig, 2, n.nvmlGpmSampleAlloc())  # through the parent's handle only


def test_without_mig_there_are_no_mig_devices(nvml_fake: NvmlFake) -> None:
    n = nvml_fake.start(DEMO_CAPTURE, at=1.0)
    n.nvmlInit()
    gpu = n.nvmlDeviceGetHandleByIndex(0)
    probe = load_capture(DEMO_CAPTURE).probe["devices"][0]["getters"]
    assert n.nvmlDeviceGetMigMode(gpu) == probe["nvmlDeviceGetMigMode"]["ok"] == [0, 0]
    assert n.nvmlDeviceGetMaxMigDeviceCount(gpu) == probe["nvmlDeviceGetMaxMigDeviceCount"]["ok"]
    with pytest.raises(pynvml.NVMLError_NotFound):
        n.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0)
    with pytest.raises(pynvml.NVMLError_NotFound):
        n.nvmlDeviceGetGpuInstanceById(gpu, 1)
    with pytest.raises(pynvml.NVMLError_NotFound):
        n.nvmlGpmMigSampleGet(gpu, 1, n.nvmlGpmSampleAlloc())


# --- per MIG device and GPU instance --------------------------------------------------------------


@pytest.mark.parametrize("position", [BEFORE, AFTER])
def test_a_mig_device_answers_its_layout_entry(nvml_fake: NvmlFake, position: float) -> None:
    n = started(nvml_fake, at=position)
    gpu = n.nvmlDeviceGetHandleByIndex(0)
    for m, want in zip(mig_handles(n, gpu), layout(position)["devices"], strict=True):
        mem = want["mem"]
        v2 = n.nvmlDeviceGetMemoryInfo(m, version=pynvml.nvmlMemory_v2)
        assert (v2.total, v2.used, v2.free, v2.reserved) == (mem["total"], mem["used"], mem["free"], mem["reserved"])
        v1 = n.nvmlDeviceGetMemoryInfo(m)  # v1 counts reserved memory as used, as for the whole GPU
        assert (v1.total, v1.used, v1.free) == (mem["total"], mem["total"] - mem["free"], mem["free"])
        procs = n.nvmlDeviceGetComputeRunningProcesses(m)
        assert [(p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId) for p in procs] == [
            (p["pid"], p["used"], want["gi"], want["ci"]) for p in want["procs"]]
        attributes = n.nvmlDeviceGetAttributes(m)
        assert {k: getattr(attributes, k) for k in want["attributes"]} == want["attributes"]


@pytest.mark.parametrize("position", [BEFORE, AFTER])
def test_gpu_instances_have_their_profile_and_placement(nvml_fake: NvmlFake, position: float) -> None:
    n = started(nvml_fake, at=position)
    gpu = n.nvmlDeviceGetHandleByIndex(0)
    instances = layout(position)["gpu_instances"]
    for want in instances:
        info = n.nvmlGpuInstanceGetInfo(n.nvmlDeviceGetGpuInstanceById(gpu, want["gi"]))
        assert (info.id, info.profileId, [info.placement.start, info.placement.size]) == (
            want["gi"], want["profile_id"], want["placement"])
        assert n.nvmlDeviceGetUUID(info.device) == n.nvmlDeviceGetUUID(gpu)
    absent = ({3, 11, 12} - {i["gi"] for i in instances}).pop()
    with pytest.raises(pynvml.NVMLError_NotFound):
        n.nvmlDeviceGetGpuInstanceById(gpu, absent)


def test_parent_processes_carry_their_instance_ids(nvml_fake: NvmlFake) -> None:
    n = started(nvml_fake, at=BEFORE)
    procs = n.nvmlDeviceGetComputeRunningProcesses(n.nvmlDeviceGetHandleByIndex(0))
    recorded = record_at(CAPTURE, BEFORE)["procs"]
    assert [(p.pid, p.gpuInstanceId, p.computeInstanceId) for p in procs] == [
        (p["pid"], p.get("gi", NO_MIG), p.get("ci", NO_MIG)) for p in recorded]
    assert {p.gpuInstanceId for p in procs} == {2, 3, 9, 10}


def test_refused_on_the_whole_gpu_while_mig_is_on(nvml_fake: NvmlFake) -> None:
    n = started(nvml_fake, at=BEFORE)
    gpu = n.nvmlDeviceGetHandleByIndex(0)
    for call in (n.nvmlDeviceGetUtilizationRates, n.nvmlDeviceGetRemappedRows):
        with pytest.raises(pynvml.NVMLError_NotSupported):
            call(gpu)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        n.nvmlGpmSampleGet(gpu, n.nvmlGpmSampleAlloc())


def test_a_fanned_out_copy_has_mig_devices_of_its_own(nvml_fake: NvmlFake) -> None:
    n = started(nvml_fake, gpus=2, at=BEFORE)
    copy = n.nvmlDeviceGetHandleByIndex(1)
    # A copy plays half a trace ahead; its MIG UUIDs end in its index, as its GPU UUID does.
    want = layout(BEFORE + DURATION / 2)["devices"]
    assert [n.nvmlDeviceGetUUID(m) for m in mig_handles(n, copy)] == [d["uuid"][:-4] + "0001" for d in want]
    mine = {n.nvmlDeviceGetUUID(m) for m in mig_handles(n, n.nvmlDeviceGetHandleByIndex(0))}
    assert mine.isdisjoint(n.nvmlDeviceGetUUID(m) for m in mig_handles(n, copy))


# --- GPM per GPU instance -------------------------------------------------------------------------


@pytest.mark.parametrize("position", [BEFORE, AFTER])
def test_gpm_of_a_gpu_instance_is_its_recorded_reading(nvml_fake: NvmlFake, position: float) -> None:
    n = started(nvml_fake, at=position)
    gpu = n.nvmlDeviceGetHandleByIndex(0)
    for inst in layout(position)["gpu_instances"]:
        s1, s2 = n.nvmlGpmSampleAlloc(), n.nvmlGpmSampleAlloc()
        n.nvmlGpmMigSampleGet(gpu, inst["gi"], s1)
        n.nvmlGpmMigSampleGet(gpu, inst["gi"], s2)
        # The trace held still: the samples' window is the record playing, its reading alone.
        got = gpm_metrics(n, s1, s2, [*GPM_IDS.values(), *WHOLE_GPU_IDS])
        assert [rc for rc, _ in got] == [0] * len(GPM_IDS) + [pynvml.NVML_ERROR_NOT_SUPPORTED] * len(WHOLE_GPU_IDS)
        assert [v for _, v in got[:len(GPM_IDS)]] == pytest.approx([inst["gpm"][key] for key in GPM_IDS], rel=1e-12)


def test_gpm_samples_of_two_instances_do_not_mix(nvml_fake: NvmlFake) -> None:
    n = started(nvml_fake, at=BEFORE)
    gpu = n.nvmlDeviceGetHandleByIndex(0)
    a, b = n.nvmlGpmSampleAlloc(), n.nvmlGpmSampleAlloc()
    n.nvmlGpmMigSampleGet(gpu, 2, a)
    n.nvmlGpmMigSampleGet(gpu, 9, b)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        gpm_metrics(n, a, b, [pynvml.NVML_GPM_METRIC_SM_UTIL])
    with pytest.raises(pynvml.NVMLError_NotFound):
        n.nvmlGpmMigSampleGet(gpu, 11, a)  # made only at the reconfiguration


# --- the reconfiguration --------------------------------------------------------------------------


def test_a_destroyed_instance_s_handles_and_samples_are_stale(nvml_fake: NvmlFake) -> None:
    """The trace plays at 20x and stays on its last record: the reconfiguration comes about a second
    after nvmlInit, so handles got at once outlive their instance."""
    speed = 20.0
    n = nvml_fake.start(MIG_DIR, speed=speed, loop=False)
    n.nvmlInit()
    initialised = time.monotonic()
    gpu = n.nvmlDeviceGetHandleByIndex(0)
    three_g, two_g = n.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0), n.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 1)
    assert n.nvmlDeviceGetName(two_g) == "NVIDIA H200 MIG 1c.2g.35gb"  # still before the reconfiguration
    sample = n.nvmlGpmSampleAlloc()
    n.nvmlGpmMigSampleGet(gpu, 3, sample)
    instance = n.nvmlDeviceGetGpuInstanceById(gpu, 3)
    time.sleep(max(0.0, initialised + SWITCH_S / speed + 0.3 - time.monotonic()))

    for call in (n.nvmlDeviceGetUUID, n.nvmlDeviceGetName, n.nvmlDeviceGetMemoryInfo,
                 n.nvmlDeviceGetComputeRunningProcesses, n.nvmlDeviceGetGpuInstanceId, n.nvmlDeviceGetAttributes,
                 n.nvmlDeviceGetDeviceHandleFromMigDeviceHandle):
        with pytest.raises(pynvml.NVMLError_NotFound):
            call(two_g)
    assert n.nvmlDeviceIsMigDeviceHandle(two_g).value == 1  # a stale handle is still a MIG handle
    with pytest.raises(pynvml.NVMLError_NotFound):
        n.nvmlGpuInstanceGetInfo(instance)
    with pytest.raises(pynvml.NVMLError_NotFound):
        n.nvmlGpmMigSampleGet(gpu, 3, n.nvmlGpmSampleAlloc())
    with pytest.raises(pynvml.NVMLError_NotFound):
        gpm_metrics(n, sample, sample, [pynvml.NVML_GPM_METRIC_SM_UTIL])  # its instance is gone
    # The 3g.71gb stays: its handle goes on answering, and index 1 is another MIG device now.
    assert n.nvmlDeviceGetUUID(three_g) == layout(AFTER)["devices"][0]["uuid"]
    assert n.nvmlDeviceGetUUID(n.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 1)) == layout(AFTER)["devices"][1]["uuid"]


def test_gpm_of_a_gpu_instance_is_averaged_over_the_records_between_its_samples(nvml_fake: NvmlFake) -> None:
    """The trace plays at 20x and stays on its last record; the first samples are taken within its
    first seconds (exactly when is up to the scheduler), the second ones after its end."""
    speed = 20.0
    n = nvml_fake.start(MIG_DIR, speed=speed, loop=False)
    asked = time.monotonic()
    n.nvmlInit()
    initialised = time.monotonic()
    gpu = n.nvmlDeviceGetHandleByIndex(0)
    samples = {gi: (n.nvmlGpmSampleAlloc(), n.nvmlGpmSampleAlloc()) for gi in (2, 10)}
    for gi, (first, _) in samples.items():
        n.nvmlGpmMigSampleGet(gpu, gi, first)
    taken = time.monotonic()
    time.sleep(max(0.0, initialised + DURATION / speed + 0.2 - time.monotonic()))
    for gi, (_, second) in samples.items():
        n.nvmlGpmMigSampleGet(gpu, gi, second)
        (rc, got), = gpm_metrics(n, *samples[gi], [pynvml.NVML_GPM_METRIC_SM_UTIL])
        readings = [next(i["gpm"]["sm_util"] for i in r["mig"]["gpu_instances"] if i["gi"] == gi) for r in TRACE]
        # The mean over the records after the one playing at the first sample, up to the last; the
        # first sample was at most (taken - asked) * speed trace seconds in (records are 1 s apart).
        candidates = [sum(readings[i1 + 1:]) / len(readings[i1 + 1:]) for i1 in range(int((taken - asked) * speed) + 1)]
        assert rc == 0 and any(got == pytest.approx(c, rel=1e-9) for c in candidates), (got, candidates)
        assert got != pytest.approx(readings[-1], rel=1e-6)  # not the last record's alone
