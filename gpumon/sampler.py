"""The poll loop: the only caller of a source.

Each GPU has one worker thread, so a hung NVML call stalls only its own GPU; every tier's round
runs all GPUs in parallel under a deadline and publishes whatever answered. A lost GPU drops out of
the exposition (`gpumon_gpu_up 0`) and is re-initialised with exponential backoff while the others
carry on. After each round the sampler refreshes its own health sample and re-renders the exposition.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from gpumon import __version__
from gpumon.exporter import Exporter
from gpumon.health import Health, start
from gpumon.model import Device, DeviceLost, Sample, Tier
from gpumon.sources.infiniband import InfinibandSource, affinity_sample, gpu_affinity
from gpumon.sources.nccl_ras import NcclRasSource
from gpumon.store import Store

log = structlog.get_logger("gpumon.sampler")

REINIT_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 60.0)
STALE_AFTER_INTERVALS = 3  # a sample older than this many intervals is no longer exported


class Source(Protocol):
    """What the sampler needs of a source (see gpumon.sources.nvml.NvmlSource)."""

    backend: str

    def open(self) -> list[Device]: ...
    def configure(self, opt_ins: frozenset[str]) -> None: ...
    def close(self) -> None: ...
    def reopen(self, index: int) -> Device: ...
    def poll(self, index: int, tier: Tier) -> Sample: ...
    def error_counts(self) -> dict[tuple[str, str], int]: ...
    def unsupported_count(self, index: int) -> int: ...
    def start_events(self, on_xid: Callable[[int, int, float], None]) -> None: ...
    def stop_events(self) -> None: ...


@dataclass
class Intervals:
    fast: float = 1.0
    slow: float = 30.0
    deadline: float | None = None  # default: 80% of the tier's interval, at most 10 s

    def of(self, tier: Tier) -> float:
        return self.slow if tier is Tier.SLOW else self.fast

    def deadline_of(self, tier: Tier) -> float:
        if self.deadline is not None:
            return self.deadline
        return min(0.8 * self.of(tier), 10.0) if tier is not Tier.STATIC else 10.0


@dataclass
class _GpuHealth:
    device: Device
    executor: concurrent.futures.ThreadPoolExecutor
    up: bool = True
    busy_until_done: asyncio.Future[Any] | None = None  # a poll that missed its deadline
    durations: dict[str, float] = field(default_factory=dict)
    deadline_misses: Counter[str] = field(default_factory=Counter)
    reinits: int = 0
    unsupported: int = 0
    xids: Counter[int] = field(default_factory=Counter)
    last_xid: float | None = None


class Sampler:
    def __init__(self, source: Source, store: Store, exporter: Exporter, intervals: Intervals,
                 *, capture: str = "", infiniband: InfinibandSource | None = None,
                 pci_root: str | None = "/sys/bus/pci/devices", nccl_ras: NcclRasSource | None = None,
                 nccl_ras_interval: float | None = None, health: Health | None = None) -> None:
        self.source = source
        self.health = health or Health()
        self.infiniband = infiniband
        self.pci_root = pci_root
        self.nccl_ras = nccl_ras
        self.nccl_ras_interval = nccl_ras_interval
        # One thread for sysfs, so a wedged HCA driver stalls only InfiniBand, never a GPU.
        self._ib_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gpumon-ib")
        self._ib_busy: asyncio.Future[list[Sample]] | None = None
        self.store = store
        self.exporter = exporter
        self.intervals = intervals
        self.capture = capture
        self.ready = asyncio.Event()
        self._round_waiters: list[asyncio.Future[None]] = []
        self._gpus: list[_GpuHealth] = []
        self._round_durations: dict[str, float] = {}
        self._last_success: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._reinit_tasks: dict[int, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def devices(self) -> list[Device]:
        return [g.device for g in self._gpus]

    # --- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> list[Device]:
        """Open the source and read static facts. Raises BackendUnavailable."""
        self._loop = asyncio.get_running_loop()
        devices = await self._loop.run_in_executor(None, self.source.open)
        self._gpus = [
            _GpuHealth(d, concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"gpumon-gpu{d.index}"))
            for d in devices]
        if self.infiniband is not None:
            await self._open_infiniband(devices)
        await self.poll_round(Tier.STATIC)
        return devices

    async def _open_infiniband(self, devices: list[Device]) -> None:
        assert self._loop is not None and self.infiniband is not None
        ib = self.infiniband
        ports = await self._loop.run_in_executor(self._ib_executor, ib.open)
        affinity = []
        if self.pci_root is not None:
            pci_root = self.pci_root
            affinity = await self._loop.run_in_executor(
                self._ib_executor, lambda: gpu_affinity(devices, ib_root=ib.root, pci_root=pci_root))
            self.store.put(affinity_sample(affinity))
        log.info("InfiniBand ports found", ports=[p.unit for p in ports], gpu_nic_pairs=len(affinity))

    async def start(self) -> None:
        """Open, then run the fast and slow loops and the event thread until `stop()`."""
        if not self._gpus:
            await self.open()
        self.source.start_events(self._on_xid_threadsafe)
        self._tasks = [start("poll-fast", functools.partial(self._run_tier, Tier.FAST), self.health),
                       start("poll-slow", functools.partial(self._run_tier, Tier.SLOW), self.health)]
        if self.nccl_ras is not None:
            self._tasks.append(start("nccl-ras", self._run_nccl_ras, self.health))

    async def _run_nccl_ras(self) -> None:
        """NCCL RAS on its own task: its timeout never delays a GPU round (it is network I/O)."""
        assert self.nccl_ras is not None
        interval = self.nccl_ras_interval or self.intervals.slow
        while True:
            self.store.put(await self.nccl_ras.poll())
            self.publish()
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        for task in [*self._tasks, *self._reinit_tasks.values()]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._reinit_tasks.values(), return_exceptions=True)
        self._tasks.clear()
        self._reinit_tasks.clear()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.source.close)
        for gpu in self._gpus:
            gpu.executor.shutdown(wait=False, cancel_futures=True)
        if self.infiniband is not None:
            self.infiniband.close()
        self._ib_executor.shutdown(wait=False, cancel_futures=True)

    async def _run_tier(self, tier: Tier) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            await self.poll_round(tier)
            interval = self.intervals.of(tier)
            next_at += interval
            now = loop.time()
            if next_at < now:  # overran: skip the missed slots rather than bunching polls
                next_at = now + interval - (now - next_at) % interval
            await asyncio.sleep(next_at - now)

    # --- one round -----------------------------------------------------------------------------

    async def poll_round(self, tier: Tier) -> None:
        """Poll every GPU that is up, in parallel, under the tier's deadline; publish and render."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        polls: dict[int, asyncio.Future[tuple[Sample, float]]] = {}
        for gpu in self._gpus:
            if not gpu.up:
                continue
            if gpu.busy_until_done is not None and not gpu.busy_until_done.done():
                gpu.deadline_misses[tier.value] += 1  # still stuck in an earlier call
                continue
            polls[gpu.device.index] = loop.run_in_executor(gpu.executor, self._timed_poll, gpu.device.index, tier)
        deadline_at = loop.time() + self.intervals.deadline_of(tier)
        ib = None
        if tier is Tier.FAST and self.infiniband is not None and (self._ib_busy is None or self._ib_busy.done()):
            ib = self._ib_busy = loop.run_in_executor(self._ib_executor, self.infiniband.poll)
        complete = len(polls) == len(self._gpus)
        if ib is not None:
            waited: list[asyncio.Future[Any]] = [*polls.values(), ib]
            await asyncio.wait(waited, timeout=self.intervals.deadline_of(tier))
            if ib.done() and ib.exception() is None:
                for sample in ib.result():
                    self.store.put(sample)
            elif ib.done():
                log.error("InfiniBand poll failed", error=repr(ib.exception()))
            else:
                ib.add_done_callback(_consume)
                log.warning("InfiniBand poll missed its deadline", deadline_s=self.intervals.deadline_of(tier))
        if polls:
            _, pending = await asyncio.wait(polls.values(), timeout=max(0.0, deadline_at - loop.time()))
            for index, fut in polls.items():
                gpu = self._gpus[index]
                if fut in pending:
                    complete = False
                    gpu.deadline_misses[tier.value] += 1
                    gpu.busy_until_done = fut
                    fut.add_done_callback(_consume)  # its late result is discarded
                    log.warning("GPU poll missed its deadline; other GPUs are unaffected",
                                gpu=index, tier=tier.value, deadline_s=self.intervals.deadline_of(tier))
                    continue
                exc = fut.exception()
                if isinstance(exc, DeviceLost):
                    complete = False
                    self._lost(gpu, exc)
                elif exc is not None:
                    complete = False
                    log.error("GPU poll failed", gpu=index, tier=tier.value, error=repr(exc))
                else:
                    sample, duration = fut.result()
                    gpu.durations[tier.value] = duration
                    self.store.put(sample)
        self._round_durations[tier.value] = time.perf_counter() - started
        if complete:
            self._last_success[tier.value] = time.time()
        if tier is Tier.FAST and complete and not self.ready.is_set():
            self.ready.set()
        self.publish()

    def _timed_poll(self, index: int, tier: Tier) -> tuple[Sample, float]:
        t0 = time.perf_counter()
        sample = self.source.poll(index, tier)
        return sample, time.perf_counter() - t0

    def publish(self) -> None:
        """Refresh the self-metrics samples and render the exposition from fresh samples."""
        self.store.put(self.health_sample())
        self.store.put(self.health.sample())
        now = time.time()
        fresh = [s for s in self.store.latest() if now - s.timestamp <= self._stale_after(s.tier)]
        self.exporter.render(fresh)
        waiters, self._round_waiters = self._round_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def next_round(self) -> None:
        """Return once the next poll round is in the store (rules evaluate on fresh data)."""
        waiter = asyncio.get_running_loop().create_future()
        # waiters given up on (timed out) go now, so a sampler that stops publishing keeps no pile
        self._round_waiters = [w for w in self._round_waiters if not w.done()] + [waiter]
        await waiter

    def _stale_after(self, tier: str) -> float:
        if tier in (Tier.FAST.value, Tier.SLOW.value):
            t = Tier(tier)
            return STALE_AFTER_INTERVALS * self.intervals.of(t) + self.intervals.deadline_of(t)
        return float("inf")

    # --- faults --------------------------------------------------------------------------------

    def _lost(self, gpu: _GpuHealth, exc: DeviceLost) -> None:
        gpu.up = False
        self.store.discard(f"gpu{gpu.device.index}")
        log.error("GPU lost; its series are withdrawn and it will be re-initialised",
                  gpu=gpu.device.index, uuid=gpu.device.uuid, reason=exc.reason)
        if gpu.device.index not in self._reinit_tasks:
            self._reinit_tasks[gpu.device.index] = asyncio.create_task(self._reinit(gpu))

    async def _reinit(self, gpu: _GpuHealth) -> None:
        loop = asyncio.get_running_loop()
        index = gpu.device.index
        attempt = 0
        try:
            while True:
                await asyncio.sleep(REINIT_BACKOFF_S[min(attempt, len(REINIT_BACKOFF_S) - 1)])
                attempt += 1
                try:
                    gpu.device = await loop.run_in_executor(gpu.executor, self.source.reopen, index)
                    sample, _ = await loop.run_in_executor(gpu.executor, self._timed_poll, index, Tier.STATIC)
                except DeviceLost as exc:
                    log.info("GPU still lost", gpu=index, attempt=attempt, reason=exc.reason)
                    continue
                except Exception as exc:  # anything else: keep trying, never give the GPU up silently
                    log.error("GPU re-initialisation failed; will try again", gpu=index, attempt=attempt,
                              error=f"{type(exc).__name__}: {exc}")
                    continue
                self.store.put(sample)
                gpu.up = True
                gpu.reinits += 1
                log.warning("GPU re-initialised", gpu=index, uuid=gpu.device.uuid, attempts=attempt)
                self.publish()
                return
        finally:
            self._reinit_tasks.pop(index, None)

    # --- XID events: called from the event thread ----------------------------------------------

    def _on_xid_threadsafe(self, index: int, xid: int, at: float) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.record_xid, index, xid, at)

    def record_xid(self, index: int, xid: int, at: float) -> None:
        gpu = self._gpus[index]
        gpu.xids[xid] += 1
        gpu.last_xid = at
        log.error("XID error", gpu=index, uuid=gpu.device.uuid, xid=xid)
        self.publish()

    # --- self metrics --------------------------------------------------------------------------

    def health_sample(self) -> Sample:
        s = Sample("self", "self", time.time())
        s.add("gpumon_build_info", (("version", __version__), ("backend", self.source.backend),
                                    ("capture", self.capture)), 1.0)
        for tier, duration in self._round_durations.items():
            s.add("gpumon_poll_duration_seconds", (("tier", tier),), duration)
        for tier, at in self._last_success.items():
            s.add("gpumon_last_poll_success_timestamp_seconds", (("tier", tier),), at)
        for (call, error), count in sorted(self.source.error_counts().items()):
            s.add("gpumon_nvml_errors_total", (("call", call), ("error", error)), count)
        for gpu in self._gpus:
            d = gpu.device
            ids = d.labels
            s.add("gpumon_gpu_info", (*ids, ("name", d.name), ("pci_bus_id", d.pci_bus_id),
                                      ("architecture", d.architecture), ("driver_version", d.driver_version),
                                      ("cuda_driver_version", d.cuda_driver_version),
                                      ("gpm", "true" if d.gpm_supported else "false"),
                                      ("sm_activity_source", "gpm" if d.gpm_supported else "none"),
                                      ("memory_info", d.memory_info)), 1.0)
            s.add("gpumon_gpu_up", ids, 1.0 if gpu.up else 0.0)
            if gpu.up:
                gpu.unsupported = self.source.unsupported_count(d.index)
            s.add("gpumon_unsupported_metrics", ids, gpu.unsupported)
            s.add("gpumon_gpu_reinit_total", ids, gpu.reinits)
            for tier, duration in gpu.durations.items():
                s.add("gpumon_gpu_poll_duration_seconds", (*ids, ("tier", tier)), duration)
            for tier in (Tier.FAST.value, Tier.SLOW.value):
                s.add("gpumon_poll_deadline_exceeded_total", (*ids, ("tier", tier)), gpu.deadline_misses[tier])
            for xid, count in sorted(gpu.xids.items()):
                s.add("gpumon_xid_errors_total", (*ids, ("xid", str(xid))), count)
            if gpu.last_xid is not None:
                s.add("gpumon_last_xid_timestamp_seconds", ids, gpu.last_xid)
        return s


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # mark retrieved: a late failure of a timed-out poll is not an error to log
