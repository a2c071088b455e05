"""Accounting over the whole recorded H200 trace, against an integration of the capture file written
here from the file's own definitions (a poll sees the record playing; GPM averages the records between
two polls), not from gpumon's code: GPU-seconds by state, SM-activity-weighted seconds, energy, and the
same per owner, with a pod holding the GPU for a part of the timeline."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gpumon.accounting.ledger import Owner
from gpumon.accounting.service import AccountingService
from gpumon.attribution.owners import Owners
from gpumon.config import AccountingConfig
from gpumon.model import Sample, Tier
from gpumon.sampler import Intervals, Sampler
from gpumon.sources.base import Schedule, Unit
from gpumon.sources.capture import load_capture
from gpumon.sources.capture_nvml import CaptureNvml
from gpumon.sources.nvml import NvmlSource
from gpumon.sources.processes import ProcessSource
from gpumon.sources.replay import DEMO_CAPTURE
from gpumon.store import Store
from tests.support.clock import FakeClock

CAPTURE = load_capture(DEMO_CAPTURE)
TRACE = CAPTURE.traces[0]
T0 = TRACE[0]["t"]
STEP = 0.25  # one poll per recorded sample period
THRESHOLD = 0.05
POD = Owner("ml", "trainer-0", "train")
POD_FROM, POD_TO = 10.0, 20.0  # trace seconds the pod holds the GPU (the compute phase and after)
WALL0 = 1.8e9


class PodHolder:
    """A source standing in for the kubelet: GPU 0 is the pod's while the trace is in [POD_FROM, POD_TO)."""

    name = "pod-holder"
    schedule = Schedule.SHARED_THREAD
    essential = False

    def __init__(self, position: Callable[[], float], uuid: Callable[[], str]) -> None:
        self.position, self.uuid = position, uuid

    def open(self) -> list[Unit]:
        return [Unit("pod-holder", gpu=0)]

    def poll(self, unit: Unit, tier: Tier) -> list[Sample]:
        sample = Sample("pod-holder", tier.value, time.time(), gpu=0)
        if tier is Tier.FAST and POD_FROM <= self.position() < POD_TO:
            labels = (("gpu", "0"), ("uuid", self.uuid()), ("owner_namespace", POD.namespace),
                      ("owner_pod", POD.pod), ("owner_container", POD.container), ("resource", "nvidia.com/gpu"))
            sample.add("gpumon_gpu_owner_info", labels, 1.0)
        return [sample]

    def reopen(self, unit: Unit) -> None: ...
    def health(self, units: Any) -> None: ...
    def start(self, changed: Callable[[], None]) -> None: ...
    def close(self) -> None: ...


def by_hand() -> tuple[dict[str, float], dict[tuple[Owner, str], float], float, float, dict[Owner, float]]:
    """(GPU seconds by state, owner seconds by state, SM seconds, joules, owner joules) for polls every
    STEP seconds of the trace, from the capture file alone."""
    gpu: dict[str, float] = defaultdict(float)
    owners: dict[tuple[Owner, str], float] = defaultdict(float)
    owner_joules: dict[Owner, float] = defaultdict(float)
    sm_seconds = joules = 0.0
    offsets = [r["t"] - T0 for r in TRACE]
    k = 1
    while k * STEP <= offsets[-1]:
        position, previous = k * STEP, (k - 1) * STEP
        playing = [r for r, o in zip(TRACE, offsets, strict=True) if o <= position][-1]
        window = [r for r, o in zip(TRACE, offsets, strict=True) if previous < o <= position] or [playing]
        activity = sum(r["gpm"]["sm_util"] for r in window) / len(window) / 100
        pod = POD_FROM <= position < POD_TO
        held = bool(playing["procs"]) or pod
        state = "active" if activity >= THRESHOLD else "idle_held" if held else "idle_free"
        energy = playing["power_mw"] / 1000 * STEP
        gpu[state] += STEP
        sm_seconds += activity * STEP
        joules += energy
        if state != "idle_free":
            owner = POD if pod else Owner()  # a replayed process: no /proc, so nobody known
            owners[(owner, state)] += STEP
            owner_joules[owner] += energy
        k += 1
    return gpu, owners, sm_seconds, joules, owner_joules


async def test_accounting_equals_integrating_the_capture_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(0.0)
    monkeypatch.setattr(time, "time", lambda: WALL0 + clock.now)  # sample timestamps follow the trace
    nvml = CaptureNvml(CAPTURE, clock=clock, loop=False)
    gpus = NvmlSource(nvml, clock=clock)
    holder = PodHolder(lambda: clock.now, lambda: gpus.devices[0].uuid)
    store = Store(100)
    sampler = Sampler([gpus, ProcessSource(gpus, Owners(), procfs=None), holder], store, Intervals(STEP, 30.0))
    accounting = AccountingService(store, AccountingConfig(active_threshold=THRESHOLD), None,
                                   fast_interval_s=STEP, slow_interval_s=30.0)
    sampler.rounds.subscribe("accounting", accounting.on_round)
    accounting.start()
    try:
        await sampler.open()
        await sampler.poll_round(Tier.FAST)
        while clock.now + STEP <= TRACE[-1]["t"] - T0 + 1e-9:
            clock.advance(STEP)
            await sampler.poll_round(Tier.FAST)
    finally:
        await sampler.stop()
        await accounting.stop()
    gpu, owners, sm_seconds, joules, owner_joules = by_hand()
    uuid = gpus.devices[0].uuid
    totals = accounting.ledger.totals
    got_gpu = {k[3]: a.seconds for k, a in totals.items() if k[2] is None}
    assert got_gpu == pytest.approx(dict(gpu), abs=1e-6)
    assert gpu["idle_held"] > 0 and gpu["active"] > 0 and gpu["idle_free"] > 0
    assert sum(a.sm_seconds for k, a in totals.items() if k[2] is None) == pytest.approx(sm_seconds, rel=1e-9)
    assert sum(a.joules for k, a in totals.items() if k[2] is None) == pytest.approx(joules, rel=1e-9)
    got_owners = {(k[2], k[3]): a.seconds for k, a in totals.items() if k[2] is not None}
    assert got_owners == pytest.approx(dict(owners), abs=1e-6)
    assert {k[2]: a.joules for k, a in totals.items() if k[2] is not None and k[3] == "active"} != {}
    got_owner_joules: dict[Owner, float] = defaultdict(float)
    for k, a in totals.items():
        if k[2] is not None:
            got_owner_joules[k[2]] += a.joules
    assert dict(got_owner_joules) == pytest.approx(dict(owner_joules), rel=1e-9)
    assert all(k[0] == uuid and k[4] in ("sm_active", "") for k in totals)


def test_the_pcie_phase_is_idle_held() -> None:
    """util.gpu ~100 % there while the SMs idle: GPM decides, and a process holds the GPU."""
    phase = next(p for p in CAPTURE.phases if p["name"] == "pcie")
    inside = [r for r in TRACE if phase["start"] <= r["t"] < phase["end"]]
    assert min(r["util"]["gpu"] for r in inside[2:]) > 90
    assert max(r["gpm"]["sm_util"] for r in inside[2:]) / 100 < THRESHOLD
    assert all(r["procs"] for r in inside)


def test_restart_reads_back_what_was_written(tmp_path: Path) -> None:
    """Totals written to the state file are where a new service starts counting from."""
    from gpumon.accounting.ledger import Reading

    config = AccountingConfig()
    first = AccountingService(Store(10), config, tmp_path, fast_interval_s=1.0, slow_interval_s=30.0)
    first.start()
    for t in range(5):
        first.ledger.add(Reading(0, "GPU-a", WALL0 + t, 0.5, "sm_active", True, (POD,), 100.0, None))
    first._write(first.ledger.take_unwritten())
    first.db.close()  # type: ignore[union-attr]
    second = AccountingService(Store(10), config, tmp_path, fast_interval_s=1.0, slow_interval_s=30.0)
    second.start()
    assert second.ledger.totals == first.ledger.totals
    second.db.close()  # type: ignore[union-attr]
