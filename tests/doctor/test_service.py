"""The doctor's checks in the daemon: after a slow round, one status series per check that applies,
for each GPU and for the host; nothing after a fast round."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gpumon.attribution.owners import Owners
from gpumon.doctor.checks import GpuView, Verdict, run_gpu_checks
from gpumon.doctor.service import DoctorService
from gpumon.model import Device, Sample, Tier
from gpumon.rounds import Round
from gpumon.sampler import Intervals, Sampler
from gpumon.sources.capture import load_capture
from gpumon.sources.capture_nvml import CaptureNvml
from gpumon.sources.nvml import NvmlSource
from gpumon.sources.processes import ProcessSource
from gpumon.store import Store
from tests.support.nvml import edited_capture


def test_checks_become_series_after_each_slow_round(tmp_path: Path) -> None:
    hot = edited_capture(tmp_path / "capture", lambda probe, records: [r.update(temp_c=90) for r in records])
    nvml = NvmlSource(CaptureNvml(load_capture(hot), gpus=2))
    store = Store(10)
    sampler = Sampler([nvml, ProcessSource(nvml, Owners(), procfs=None)], store, Intervals(1.0, 30.0))

    async def poll() -> None:
        await sampler.open()
        await sampler.poll_round(Tier.STATIC)
        await sampler.poll_round(Tier.SLOW)
        await asyncio.sleep(0.12)
        await sampler.poll_round(Tier.FAST)
        await sampler.stop()
    asyncio.run(poll())
    sysfs = tmp_path / "sys"
    for address in ("0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0"):  # three GPUs on the bus, NVML sees two
        d = sysfs / "bus" / "pci" / "devices" / address
        d.mkdir(parents=True)
        (d / "vendor").write_text("0x10de\n")
        (d / "class").write_text("0x030200\n")
    service = DoctorService(store, lambda: nvml.devices, replayed=False, sysfs=sysfs, kmsg=tmp_path / "kmsg")
    service.on_round(Round(Tier.FAST.value, time.time(), True))
    assert not [s for s in store.latest() if s.unit.startswith("doctor")]
    service.on_round(Round(Tier.SLOW.value, time.time(), True))
    status = {(s.gpu, dict(lb)["check"]): v for s in store.latest() if s.unit.startswith("doctor")
              for n, lb, v in s.values}
    assert status[(0, "hardware.temperature")] == 2 and status[(1, "hardware.temperature")] == 2
    assert status[(0, "hardware.ecc")] == 0
    assert (0, "hardware.nvlink") not in status  # not applicable: no series
    assert status[(None, "hardware.gpus_missing")] == 2  # the capture's bus ids are not this fake bus's
    names = {n for s in store.latest() if s.unit.startswith("doctor") for n, _, _ in s.values}
    assert names == {"gpumon_health_check_status", "gpumon_host_check_status"}


def test_a_gpu_with_no_fresh_samples_gets_no_verdict(tmp_path: Path) -> None:
    """The daemon passes the sampler's `fresh`: a GPU hung in a call for three intervals has none."""
    nvml = NvmlSource(CaptureNvml(load_capture(edited_capture(tmp_path / "c", lambda probe, records: None))))
    nvml.open()
    store = Store(10)
    service = DoctorService(store, lambda: nvml.devices, replayed=True, fresh=lambda now: [])
    service.on_round(Round(Tier.SLOW.value, time.time(), True))
    assert [v for s in store.latest() for v in s.values] == []


def throttle_sample(t: float, thermal_s: float, power_s: float) -> Sample:
    sample = Sample("nvml:gpu0:slow", "slow", t, gpu=0)
    gpu = (("gpu", "0"), ("uuid", "GPU-a"))
    sample.add("gpumon_clock_throttle_seconds_total", (*gpu, ("reason", "thermal")), thermal_s)
    sample.add("gpumon_clock_throttle_seconds_total", (*gpu, ("reason", "power")), power_s)
    sample.add("gpumon_clock_event_reason_active", (*gpu, ("reason", "sw_thermal_slowdown")), 0.0)
    return sample


@pytest.mark.parametrize(("thermal", "verdict"), [
    ([100.0, 130.0, 160.0], 1.0),  # held down 60 of the last 120 s, though not now: warn
    ([100.0, 100.0, 100.5], 0.0),  # half a second: ok
    ([100.0, 130.0, float("nan"), 3.0], 1.0),  # a staleness marker, then a reset (driver reload): still counted
    ([100.0, 160.0], 0.0),  # held down all of the last 60 s, just after start: too little history to judge
])
def test_clocks_held_down_over_the_last_minutes(thermal: list[float], verdict: float, tmp_path: Path) -> None:
    store = Store(20)
    now = time.time()
    for i, value in enumerate(thermal):
        store.put(throttle_sample(now - 60 * (len(thermal) - 1 - i), value, 5000.0 + 60 * i))  # power: ignored
    device = Device(0, "GPU-a", "NVIDIA H200", "00000000:18:00.0", "hopper", True, "580", "13.0")
    service = DoctorService(store, lambda: [device], replayed=True)
    service.on_round(Round(Tier.SLOW.value, now, True))
    status = {dict(lb)["check"]: v for s in store.latest() if s.unit == "doctor:gpu0" for _, lb, v in s.values}
    assert status["hardware.clock_events"] == verdict
    view = GpuView(0, "GPU-a", [throttle_sample(now, 1.0, 1.0)])
    for name, labels, _ in throttle_sample(now, 1.0, 1.0).values:
        if name == "gpumon_clock_throttle_seconds_total":
            view.add_increase(name, labels, 90.0, 300.0)
    (found,) = [f for f in run_gpu_checks(view, frozenset({"hardware.clock_events"}))]
    assert found.summary == "clocks held down by thermal for 30% of the last 5 min, though not now"
    assert found.evidence["held_share_recently"] == {"thermal": 0.3}


@pytest.mark.parametrize(("seconds", "verdict", "summary"), [
    (30.0, Verdict.OK, "no thermal or power slowdown now; held down by thermal for 100% of the 30 s of history so far"),
    (119.0, Verdict.OK, "no thermal or power slowdown now; held down by thermal for 100% of the 119 s of history so "
                        "far"),
    (120.0, Verdict.WARN, "clocks held down by thermal for 100% of the last 2 min, though not now"),
])
def test_a_share_of_the_last_minutes_needs_two_minutes_of_history(seconds: float, verdict: Verdict,
                                                                  summary: str) -> None:
    now = time.time()
    view = GpuView(0, "GPU-a", [throttle_sample(now, 1.0, 1.0)])
    for name, labels, _ in throttle_sample(now, 1.0, 1.0).values:
        if name == "gpumon_clock_throttle_seconds_total":
            view.add_increase(name, labels, seconds, seconds)
    (found,) = run_gpu_checks(view, frozenset({"hardware.clock_events"}))
    assert (found.verdict, found.summary) == (verdict, summary)
    assert found.evidence["recent_seconds"] == round(seconds)


def test_the_cuda_runtime_check_runs_in_the_daemon_on_the_process_sources_proc(tmp_path: Path) -> None:
    from gpumon.attribution.procfs import Procfs
    from tools.procfs import FakeProc

    proc = FakeProc(tmp_path / "proc")
    proc.add(4242, "python3")
    proc.maps(4242, "/usr/local/cuda-14.0/lib64/libcudart.so.14.0.35")
    store = Store(5)
    sample = Sample("processes:gpu0", "fast", time.time(), gpu=0)
    sample.add("gpumon_process_info", (("gpu", "0"), ("uuid", "GPU-a"), ("pid", "4242"), ("kind", "compute")), 1.0)
    store.put(sample)
    device = Device(0, "GPU-a", "NVIDIA H200", "00000000:18:00.0", "hopper", True, "580", "13.0")
    procfs: list[Procfs | None] = [None]
    service = DoctorService(store, lambda: [device], replayed=False, sysfs=tmp_path / "sys", kmsg=tmp_path / "kmsg",
                            procfs=lambda: procfs[0])

    def host_status() -> dict[str, float]:
        service.on_round(Round(Tier.SLOW.value, time.time(), True))
        return {dict(lb)["check"]: v for s in store.latest() if s.unit == "doctor:host" for _, lb, v in s.values}
    assert "driver.cuda_runtime" not in host_status()  # processes off, or /proc not the host's: not applicable
    procfs[0] = Procfs(tmp_path / "proc")
    assert host_status()["driver.cuda_runtime"] == 2  # CUDA 14 runtime on a CUDA 13.0 driver
