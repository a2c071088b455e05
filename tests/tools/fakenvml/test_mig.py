"""gpumon's MIG source on the fake library, on the SYNTHETIC MIG capture (tests/fixtures/mig): the same
series CaptureNvml gives before and after the reconfiguration, the library's fault script on MIG
calls, the source across a reconfiguration played in real time, and `gpumon run --backend nvml`
scraped and checked by promtool.

The pynvml-level MIG contract (both fakes) is tests/sources/test_capture_mig.py; the MIG source on
CaptureNvml with a clock the test moves is tests/sources/test_mig.py. Here the library holds the
trace still (FAKENVML_SPEED=0) where it can, or plays it fast where time has to pass.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpumon import catalog
from gpumon.model import Tier
from gpumon.sources.base import UnitLost
from gpumon.sources.capture import load_capture
from gpumon.sources.mig import MigSource
from gpumon.sources.nvml import NvmlSource
from tests.fixtures.mig import generate
from tests.support.clock import FakeClock
from tests.support.nvml import CaptureFake, LibraryFake, NvmlFake, record_at
from tools.fakenvml import environment

MIG_DIR = generate.OUT_DIR
CAPTURE = load_capture(MIG_DIR)
TRACE = CAPTURE.traces[0]
SWITCH_S = next(p["start"] for p in CAPTURE.phases if p["name"] == "after_reconfiguration") - TRACE[0]["t"]
BEFORE, AFTER = 5.0, 30.0

Series = dict[tuple[str, str, tuple[tuple[str, str], ...]], float]


def opened(nvml: Any) -> tuple[MigSource, FakeClock]:
    clock = FakeClock()
    gpus = NvmlSource(nvml, clock=clock)
    gpus.open()
    return MigSource(gpus, clock=clock), clock


def series(fake: NvmlFake, position: float) -> Series:
    """Every series the MIG source gives at `position` (held still): its layout, and a fast poll one
    second after the first (GPM needs two samples)."""
    source, clock = opened(fake.start(MIG_DIR, at=position))
    (unit,) = source.open()
    source.poll(unit, Tier.FAST)
    clock.advance(1.0)
    out: Series = {}
    for tier in (Tier.FAST, Tier.SLOW):
        for sample in source.poll(unit, tier):
            for name, labels, value in sample.values:
                out[(sample.tier, name, labels)] = value
    source.close()
    source.gpus.close()
    return out


def by_instance(got: Series, name: str) -> dict[str, float]:
    return {dict(labels)["gpu_instance"]: v for (_, n, labels), v in got.items() if n == name}


@pytest.mark.parametrize("position", [BEFORE, AFTER])
def test_the_mig_source_reads_on_the_library_what_it_reads_on_capture_nvml(library: LibraryFake,
                                                                          position: float) -> None:
    got = series(library, position)
    assert got == series(CaptureFake(), position)
    # And both are the capture's: per GPU instance, memory once (its first compute instance's), SM
    # activity as recorded, processes of all its compute instances.
    layout = record_at(CAPTURE, position)["mig"]
    first: dict[str, dict[str, Any]] = {}
    for d in layout["devices"]:
        first.setdefault(str(d["gi"]), d)
    assert by_instance(got, "gpumon_mig_memory_used_bytes") == {gi: float(d["mem"]["used"]) for gi, d in first.items()}
    assert by_instance(got, "gpumon_mig_sm_active_ratio") == pytest.approx(
        {str(i["gi"]): i["gpm"]["sm_util"] * catalog.PERCENT for i in layout["gpu_instances"]}, rel=1e-12)
    assert by_instance(got, "gpumon_mig_compute_processes") == {
        str(i["gi"]): float(sum(len(d["procs"]) for d in layout["devices"] if d["gi"] == i["gi"]))
        for i in layout["gpu_instances"]}
    placements = {dict(lb)["gpu_instance"]: dict(lb)["placement"] for (_, n, lb) in got
                  if n == "gpumon_mig_instance_info"}
    assert placements == {str(i["gi"]): "{}:{}".format(*i["placement"]) for i in layout["gpu_instances"]}


def test_the_mig_source_follows_a_reconfiguration_played_in_real_time(library: LibraryFake) -> None:
    speed = 20.0
    source, clock = opened(library.start(MIG_DIR, speed=speed, loop=False))
    initialised = time.monotonic()
    (unit,) = source.open()
    source.poll(unit, Tier.FAST)
    clock.advance(1.0)
    before = [s for s in source.poll(unit, Tier.FAST) if s.tier == "fast"]
    assert set(by_instance({("", n, lb): v for s in before for n, lb, v in s.values},
                           "gpumon_mig_sm_active_ratio")) == {"2", "3", "9", "10"}
    time.sleep(max(0.0, initialised + SWITCH_S / speed + 0.3 - time.monotonic()))
    clock.advance(1.0)
    after = source.poll(unit, Tier.FAST)  # GPU instance 3's handles answer NotFound: the layout is read again
    assert source.reconfigurations == 1
    layout = [dict(lb)["gpu_instance"] for s in after if s.tier == "slow" for n, lb, _ in s.values
              if n == "gpumon_mig_instance_info"]
    assert layout == ["2", "9", "10", "11", "12"]
    clock.advance(1.0)
    source.poll(unit, Tier.FAST)  # the new instances' first GPM samples
    clock.advance(1.0)
    later = {("", n, lb): v for s in source.poll(unit, Tier.FAST) for n, lb, v in s.values}
    assert set(by_instance(later, "gpumon_mig_sm_active_ratio")) == {"2", "9", "10", "11", "12"}
    assert source.gpus.error_counts() == {}
    source.close()


# --- the library's fault script on MIG calls ------------------------------------------------------


def test_faults_on_a_gpu_apply_to_its_mig_devices(library: LibraryFake) -> None:
    n = library.nvml
    library.configure(capture=MIG_DIR, gpus=2, speed=0, start=BEFORE,
                      faults="lost 0 0.5 3600\nerror nvmlDeviceGetMemoryInfo NoPermission 0\n"
                             "error nvmlGpuInstanceGetInfo NoPermission\n")
    n.nvmlInit()
    initialised = time.monotonic()
    gpu, other = n.nvmlDeviceGetHandleByIndex(0), n.nvmlDeviceGetHandleByIndex(1)
    mig, other_mig = n.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0), n.nvmlDeviceGetMigDeviceHandleByIndex(other, 0)
    # An error scripted for a call on GPU 0 is that call's on its MIG devices too (v2 included).
    with pytest.raises(n.NVMLError_NoPermission):
        n.nvmlDeviceGetMemoryInfo(mig, version=n.nvmlMemory_v2)
    assert n.nvmlDeviceGetMemoryInfo(other_mig, version=n.nvmlMemory_v2).total > 0
    with pytest.raises(n.NVMLError_NoPermission):  # as NVML refuses GPU instances to a user
        n.nvmlGpuInstanceGetInfo(n.nvmlDeviceGetGpuInstanceById(other, 2))
    sample = n.nvmlGpmSampleAlloc()
    n.nvmlGpmMigSampleGet(gpu, 2, sample)
    time.sleep(max(0.0, initialised + 0.55 - time.monotonic()))
    # GPU 0 falls off the bus: every call on it or on one of its MIG devices is GPU_IS_LOST.
    for call, args in ((n.nvmlDeviceGetName, (mig,)), (n.nvmlDeviceGetUUID, (mig,)),
                       (n.nvmlDeviceGetComputeRunningProcesses, (mig,)), (n.nvmlDeviceIsMigDeviceHandle, (mig,)),
                       (n.nvmlDeviceGetGpuInstanceId, (mig,)), (n.nvmlDeviceGetMigDeviceHandleByIndex, (gpu, 0)),
                       (n.nvmlDeviceGetMigMode, (gpu,)), (n.nvmlGpmMigSampleGet, (gpu, 2, sample))):
        with pytest.raises(n.NVMLError_GpuIsLost):
            call(*args)
    assert n.nvmlDeviceGetName(other_mig) == record_at(CAPTURE, BEFORE + CAPTURE.duration(0) / 2)["mig"][
        "devices"][0]["name"]


def test_a_lost_gpu_is_a_lost_mig_unit(library: LibraryFake) -> None:
    library.configure(capture=MIG_DIR, speed=0, start=BEFORE, faults="lost 0 0.5 3600\n")
    source, clock = opened(library.nvml)
    initialised = time.monotonic()
    (unit,) = source.open()
    source.poll(unit, Tier.SLOW)
    time.sleep(max(0.0, initialised + 0.55 - time.monotonic()))
    clock.advance(1.0)
    with pytest.raises(UnitLost):
        source.poll(unit, Tier.FAST)


# --- gpumon run -----------------------------------------------------------------------------------


@pytest.mark.integration
def test_gpumon_run_exports_mig_and_passes_promtool(libfakenvml: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.processes import Gpumon, need

    for name, value in environment(libfakenvml, capture=MIG_DIR, speed=0, start=BEFORE).items():
        monkeypatch.setenv(name, value)
    with Gpumon(tmp_path, backend="nvml") as g:
        time.sleep(1.3)  # one more fast round, so GPM series are present
        status, body = g.get("/metrics")
        log = g.log
    assert status == 200
    samples = [s for f in text_string_to_metric_families(body.decode()) for s in f.samples]
    mig: dict[str, dict[str, float]] = {}
    for s in samples:
        if s.name.startswith("gpumon_mig_") and "gpu_instance" in s.labels:
            mig.setdefault(s.name, {})[s.labels["gpu_instance"]] = s.value
    layout = record_at(CAPTURE, BEFORE)["mig"]
    instances = {str(i["gi"]) for i in layout["gpu_instances"]}
    for name in ("gpumon_mig_instance_info", "gpumon_mig_memory_used_bytes", "gpumon_mig_memory_total_bytes",
                 "gpumon_mig_compute_processes", "gpumon_mig_sm_active_ratio", "gpumon_mig_dram_active_ratio"):
        assert set(mig.get(name, {})) == instances, name
    assert mig["gpumon_mig_sm_active_ratio"] == pytest.approx(
        {str(i["gi"]): i["gpm"]["sm_util"] * catalog.PERCENT for i in layout["gpu_instances"]}, rel=1e-9)
    modes = {s.labels["state"]: s.value for s in samples if s.name == "gpumon_mig_mode"}
    assert modes == {"current": 1.0, "pending": 1.0}
    assert '"level": "error"' not in log and '"level": "warning"' not in log, log
    check = subprocess.run([need("promtool"), "check", "metrics"], input=body, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout == b"" and check.stderr == b""
