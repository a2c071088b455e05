"""The doctor's checks in the daemon: after each slow round, every check over what the round left in
the store, as `gpumon_health_check_status{check}` per GPU and `gpumon_host_check_status{check}`
(0 ok, 1 warn, 2 fail; no series where a check does not apply), so a fleet sees them in Prometheus
and `GpumonDoctorCheckFailing` alerts on them. `gpumon doctor` on the host gives the evidence."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from gpumon.attribution.procfs import Procfs
from gpumon.doctor import host, kernel_log
from gpumon.doctor.checks import Finding, GpuView, Verdict, run_gpu_checks, straggler
from gpumon.model import Device, Sample
from gpumon.rounds import Round
from gpumon.store import Store

RECENT_S = 300.0  # "over the last minutes"
RECENT_COUNTERS = frozenset({"gpumon_clock_throttle_seconds_total"})
STATUS = {Verdict.OK: 0.0, Verdict.WARN: 1.0, Verdict.FAIL: 2.0}


class DoctorService:
    def __init__(self, store: Store, devices: Callable[[], list[Device]], *, replayed: bool,
                 sysfs: Path = Path("/sys"), kmsg: Path = kernel_log.KMSG,
                 fresh: Callable[[float], list[Sample]] | None = None,
                 procfs: Callable[[], Procfs | None] = lambda: None) -> None:
        self.store = store
        self.devices = devices
        # What the exposition shows (the sampler's `fresh`): a GPU hung in a call gets no verdict from
        # its last samples, which would say "ok" about a GPU that stopped answering.
        self.fresh = fresh or (lambda now: store.latest())
        self.replayed = replayed
        self.sysfs = sysfs
        self.pci = host.PciScan(sysfs)  # which PCI devices are NVIDIA GPUs, kept between rounds
        # The process source's /proc once it has found it shows the host's PIDs (NVML's); None before,
        # when processes are off, or for a replayed capture.
        self.procfs = procfs
        self.libraries: host.MappedLibraries | None = None
        # Kept open: each slow round reads only what the kernel logged since the last (where the unit's
        # ProtectKernelLogs= or a container hides it, the check does not apply and has no series).
        self.xids = None if replayed and kmsg == kernel_log.KMSG else \
            kernel_log.XidsSinceBoot(kernel_log.KernelLog(kmsg))

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
            self._add_increases(view, by_gpu.get(d.index, ()), now)
            views.append(view)
            for f in run_gpu_checks(view):
                self._add(sample, "gpumon_health_check_status", (*d.labels, ("check", f.check)), f)
            self.store.put(sample)
        own = Sample("doctor:host", "slow", now)
        if self.xids is not None:  # a large ring's first read goes on over the next rounds
            self.xids.read(kernel_log.ROUND_RECORDS)
        for f in (host.gpus_missing(devices, self.pci, self.replayed), host.infiniband(samples),
                  straggler(views), host.kernel_xids(devices, self.xids, kernel_log.seconds_since_boot()),
                  self._cuda_runtime(views, devices)):
            self._add(own, "gpumon_host_check_status", (("check", f.check),), f)
        self.store.put(own)

    def _cuda_runtime(self, views: list[GpuView], devices: list[Device]) -> Finding:
        procfs = self.procfs()
        if procfs is None:
            return host.cuda_runtime(views, devices, None, "needs the process source reading the host's /proc")
        if self.libraries is None or self.libraries.procfs is not procfs:
            self.libraries = host.MappedLibraries(procfs)
        finding = host.cuda_runtime(views, devices, self.libraries)
        self.libraries.next_round()
        return finding

    def _add_increases(self, view: GpuView, samples: Iterable[Sample], now: float) -> None:
        """The violation counters' increase over the last RECENT_S, from the store's history."""
        for sample in samples:
            for name, labels, _ in sample.values:
                if name not in RECENT_COUNTERS or (ring := self.store.ring(name, labels)) is None:
                    continue
                # Rounded as the store rounds a sample's time: a sample put within the same millisecond
                # is stamped up to 0.5 ms after `now`, and would be left out of its own round.
                times, values = ring.window(round((now - RECENT_S) * 1000), round(now * 1000))
                if len(times) >= 2:
                    view.add_increase(name, labels, counter_increase(values), (times[-1] - times[0]) / 1000)

    @staticmethod
    def _add(sample: Sample, name: str, labels: tuple[tuple[str, str], ...], finding: Finding) -> None:
        status = STATUS.get(finding.verdict)
        if status is not None:
            sample.add(name, labels, status)


def counter_increase(values: Sequence[float]) -> float:
    """How much a counter grew across `values`, a drop being a reset (from zero), as PromQL's increase()
    counts it without extrapolation."""
    total = 0.0
    for before, after in itertools.pairwise(v for v in values if v == v):  # NaN: a staleness marker
        total += after - before if after >= before else after
    return total
