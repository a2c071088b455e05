"""The doctor's checks in the daemon: after each slow round, every check over what the round left in
the store, as `gpumon_health_check_status{check}` per GPU and `gpumon_host_check_status{check}`
(0 ok, 1 warn, 2 fail; no series where a check does not apply), so a fleet sees them in Prometheus
and `GpumonDoctorCheckFailing` alerts on them. `gpumon doctor` on the host gives the evidence."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from gpumon.doctor import host
from gpumon.doctor.checks import Finding, GpuView, Verdict, run_gpu_checks, straggler
from gpumon.model import Device, Sample
from gpumon.rounds import Round
from gpumon.store import Store

STATUS = {Verdict.OK: 0.0, Verdict.WARN: 1.0, Verdict.FAIL: 2.0}


class DoctorService:
    def __init__(self, store: Store, devices: Callable[[], list[Device]], *, replayed: bool,
                 sysfs: Path = Path("/sys"), fresh: Callable[[float], list[Sample]] | None = None) -> None:
        self.store = store
        self.devices = devices
        # What the exposition shows (the sampler's `fresh`): a GPU hung in a call gets no verdict from
        # its last samples, which would say "ok" about a GPU that stopped answering.
        self.fresh = fresh or (lambda now: store.latest())
        self.replayed = replayed
        self.sysfs = sysfs

    def on_round(self, round_: Round) -> None:
        if round_.tier != "slow":
            return
        now = time.time()
        devices = self.devices()
        samples = [s for s in self.fresh(now) if not s.unit.startswith("doctor")]
        by_gpu: dict[int, list[Sample]] = {}
        for s in samples:
            if s.gpu is not None:
                by_gpu.setdefault(s.gpu, []).append(s)
        views = []
        for d in devices:
            sample = Sample(f"doctor:gpu{d.index}", "slow", now, gpu=d.index)
            view = GpuView(d.index, d.uuid, by_gpu.get(d.index, ()))
            views.append(view)
            for f in run_gpu_checks(view):
                self._add(sample, "gpumon_health_check_status", (*d.labels, ("check", f.check)), f)
            self.store.put(sample)
        own = Sample("doctor:host", "slow", now)
        for f in (host.gpus_missing(devices, self.sysfs, self.replayed), host.infiniband(samples),
                  straggler(views)):
            self._add(own, "gpumon_host_check_status", (("check", f.check),), f)
        self.store.put(own)

    @staticmethod
    def _add(sample: Sample, name: str, labels: tuple[tuple[str, str], ...], finding: Finding) -> None:
        status = STATUS.get(finding.verdict)
        if status is not None:
            sample.add(name, labels, status)
