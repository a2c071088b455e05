"""The poll loop: the only caller of a source.

Every tier's round polls the units of every threaded source in parallel under a deadline and stores
whatever answered; a unit still stuck in an earlier call is skipped, so a hung NVML call stalls only
its own GPU. A lost unit drops out of the exposition and is re-opened with exponential backoff while
the others carry on. Asynchronous sources (network) run on their own tasks. After each round the
sampler stores the sources' own series and its own, then announces the round on `rounds`: the
exposition, the rules and everything else downstream subscribe; the sampler calls none of them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from gpumon.health import Health, start
from gpumon.lifecycle import Service
from gpumon.model import Sample, Tier
from gpumon.rounds import Round, Rounds
from gpumon.sources.base import AsyncSource, Schedule, Source, Unit, UnitHealth, UnitLost
from gpumon.store import Store

log = structlog.get_logger("gpumon.sampler")

REINIT_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 60.0)
STALE_AFTER_INTERVALS = 3  # a sample older than this many intervals is no longer exported


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


@dataclass(eq=False)
class _Polled:
    """A unit of a threaded source, the thread it runs in and the sampler's record of it."""

    source: Source
    unit: Unit
    executor: concurrent.futures.ThreadPoolExecutor
    health: UnitHealth
    busy_until_done: asyncio.Future[Any] | None = None  # a poll that missed its deadline
    reopening: asyncio.Task[None] | None = None


class Sampler(Service):
    def __init__(self, sources: Sequence[Source | AsyncSource], store: Store, intervals: Intervals, *,
                 rounds: Rounds | None = None, health: Health | None = None) -> None:
        self.sources = list(sources)
        self.store = store
        self.intervals = intervals
        self.rounds = rounds or Rounds()
        self.health = health or Health()
        self.ready = asyncio.Event()
        self._units: list[_Polled] = []
        self._async: list[tuple[AsyncSource, list[Unit]]] = []
        self._round_durations: dict[str, float] = {}
        self._last_success: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # --- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Open every source in order (a later one may use an earlier one's units, as InfiniBand
        uses the GPUs) and read static facts. Raises BackendUnavailable."""
        self._loop = loop = asyncio.get_running_loop()
        for source in self.sources:
            if isinstance(source, AsyncSource) and source.schedule is Schedule.ASYNC:
                self._async.append((source, await source.open()))
                continue
            assert isinstance(source, Source)
            units = await loop.run_in_executor(None, source.open)
            if source.schedule is Schedule.THREAD_PER_UNIT:
                for unit in units:
                    executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"gpumon-{unit.key}")
                    self._units.append(_Polled(source, unit, executor, UnitHealth()))
            else:
                executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"gpumon-{source.name}")
                self._units.extend(_Polled(source, unit, executor, UnitHealth()) for unit in units)
        await self.poll_round(Tier.STATIC)

    async def start(self) -> None:
        """Open if needed, then run the tiers' loops and the asynchronous sources until `stop()`."""
        if self._loop is None:
            await self.open()
        for source in {p.source for p in self._units}:
            source.start(self._changed_threadsafe)
        self._tasks = [start("poll-fast", functools.partial(self._run_tier, Tier.FAST), self.health),
                       start("poll-slow", functools.partial(self._run_tier, Tier.SLOW), self.health)]
        self._tasks += [start(source.name, functools.partial(self._run_async, source, units), self.health)
                        for source, units in self._async]

    async def stop(self) -> None:
        """Stop polling and close the sources (once: a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        reopening = [p.reopening for p in self._units if p.reopening is not None]
        for task in [*self._tasks, *reopening]:
            task.cancel()
        await asyncio.gather(*self._tasks, *reopening, return_exceptions=True)
        self._tasks.clear()
        loop = asyncio.get_running_loop()
        for threaded in {p.source for p in self._units}:
            await loop.run_in_executor(None, threaded.close)
        for source, _ in self._async:
            await source.close()
        for polled in self._units:
            polled.executor.shutdown(wait=False, cancel_futures=True)

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

    async def _run_async(self, source: AsyncSource, units: list[Unit]) -> None:
        """An asynchronous source on its own task: its timeouts never delay a round."""
        while True:
            await self.poll_async(source, units)
            await asyncio.sleep(source.interval)

    async def poll_async(self, source: AsyncSource, units: list[Unit]) -> None:
        """One poll of an asynchronous source's units, stored and announced."""
        for unit in units:
            for sample in await source.poll(unit, Tier.SLOW):
                self.store.put(sample)
        self._announce(Round(source.name, time.time(), complete=False))

    async def poll_all_async(self) -> None:
        """Every asynchronous source once, together (`gpumon snapshot` has no tasks running)."""
        await asyncio.gather(*(self.poll_async(source, units) for source, units in self._async))

    # --- one round -----------------------------------------------------------------------------

    async def poll_round(self, tier: Tier) -> None:
        """Poll every unit that is up, in parallel, under the tier's deadline; store and announce."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        deadline = self.intervals.deadline_of(tier)
        polls: dict[_Polled, asyncio.Future[tuple[list[Sample], float]]] = {}
        complete = True
        for polled in self._units:
            if not polled.health.up:
                complete = complete and not polled.source.essential
                continue
            if polled.busy_until_done is not None and not polled.busy_until_done.done():
                polled.health.deadline_misses[tier.value] += 1  # still stuck in an earlier call
                complete = complete and not polled.source.essential
                continue
            polls[polled] = loop.run_in_executor(polled.executor, _timed_poll, polled.source, polled.unit, tier)
        if polls:
            _, pending = await asyncio.wait(polls.values(), timeout=deadline)
            for polled, fut in polls.items():
                if fut in pending:
                    complete = complete and not polled.source.essential
                    polled.health.deadline_misses[tier.value] += 1
                    polled.busy_until_done = fut
                    fut.add_done_callback(_consume)  # its late result is discarded
                    log.warning("poll missed its deadline; other units are unaffected", unit=polled.unit.key,
                                tier=tier.value, deadline_s=deadline)
                    continue
                exc = fut.exception()
                if isinstance(exc, UnitLost):
                    complete = complete and not polled.source.essential
                    self._lost(polled, exc)
                elif exc is not None:
                    complete = complete and not polled.source.essential
                    log.error("poll failed", unit=polled.unit.key, tier=tier.value,
                              error=f"{type(exc).__name__}: {exc}")
                else:
                    samples, duration = fut.result()
                    polled.health.durations[tier.value] = duration
                    for sample in samples:
                        self.store.put(sample)
        if tier is Tier.FAST:
            self.store.restamp(Tier.STATIC.value, time.time())
        self._round_durations[tier.value] = time.perf_counter() - started
        if complete:
            self._last_success[tier.value] = time.time()
        if tier is Tier.FAST and complete and not self.ready.is_set():
            self.ready.set()
        self._announce(Round(tier.value, time.time(), complete))

    def _announce(self, round_: Round) -> None:
        """Store the sources' and the sampler's own series, then tell the subscribers."""
        self._store_health()
        self.rounds.publish(round_)

    def _store_health(self) -> None:
        by_source: dict[Source, dict[Unit, UnitHealth]] = {}
        for polled in self._units:
            by_source.setdefault(polled.source, {})[polled.unit] = polled.health
        for source, units in by_source.items():
            sample = source.health(units)
            if sample is not None:
                self.store.put(sample)
        self.store.put(self._own_sample())
        self.store.put(self.health.sample())

    def _own_sample(self) -> Sample:
        s = Sample("sampler", "self", time.time())
        for tier, duration in self._round_durations.items():
            s.add("gpumon_poll_duration_seconds", (("tier", tier),), duration)
        for tier, at in self._last_success.items():
            s.add("gpumon_last_poll_success_timestamp_seconds", (("tier", tier),), at)
        return s

    def fresh(self, now: float) -> list[Sample]:
        """The latest samples not older than their tier allows: what the exposition shows (a unit
        hung for three intervals shows no stale values)."""
        return [s for s in self.store.latest() if now - s.timestamp <= self._stale_after(s.tier)]

    def _stale_after(self, tier: str) -> float:
        if tier in (Tier.FAST.value, Tier.SLOW.value):
            t = Tier(tier)
            return STALE_AFTER_INTERVALS * self.intervals.of(t) + self.intervals.deadline_of(t)
        return float("inf")

    # --- faults --------------------------------------------------------------------------------

    def _lost(self, polled: _Polled, exc: UnitLost) -> None:
        polled.health.up = False
        self.store.discard(polled.unit.key)
        log.error("unit lost; its series are withdrawn and it will be re-opened", unit=polled.unit.key,
                  reason=exc.reason)
        if polled.reopening is None:
            polled.reopening = asyncio.create_task(self._reopen(polled), name=f"gpumon-reopen-{polled.unit.key}")

    async def _reopen(self, polled: _Polled) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        try:
            while True:
                await asyncio.sleep(REINIT_BACKOFF_S[min(attempt, len(REINIT_BACKOFF_S) - 1)])
                attempt += 1
                try:
                    await loop.run_in_executor(polled.executor, polled.source.reopen, polled.unit)
                    samples, _ = await loop.run_in_executor(polled.executor, _timed_poll, polled.source,
                                                            polled.unit, Tier.STATIC)
                except UnitLost as exc:
                    log.info("unit still lost", unit=polled.unit.key, attempt=attempt, reason=exc.reason)
                    continue
                except Exception as exc:  # anything else: keep trying, never give a unit up silently
                    log.error("re-opening failed; will try again", unit=polled.unit.key, attempt=attempt,
                              error=f"{type(exc).__name__}: {exc}")
                    continue
                for sample in samples:
                    self.store.put(sample)
                polled.health.up = True
                polled.health.reopens += 1
                log.warning("unit re-opened", unit=polled.unit.key, attempts=attempt)
                self._announce(Round(Tier.STATIC.value, time.time(), complete=False))
                return
        finally:
            polled.reopening = None

    # --- events: called from a source's own thread ---------------------------------------------

    def _changed_threadsafe(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._announce, Round("event", time.time(), complete=False))


def _timed_poll(source: Source, unit: Unit, tier: Tier) -> tuple[list[Sample], float]:
    t0 = time.perf_counter()
    samples = source.poll(unit, tier)
    return samples, time.perf_counter() - t0


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # mark retrieved: a late failure of a timed-out poll is not an error to log
