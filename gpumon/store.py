"""In-memory store: the latest sample per (unit, tier) for the exporter, and a ring buffer per series
for range queries (the rules engine).

Ring buffers hold doubles in `array('d')`, two per point, so ten minutes of one-second samples for
eight GPUs stays in single-digit megabytes. Times are Unix milliseconds (exact integers in a double),
the unit PromQL evaluates in. When a series stops being reported (a metric became
unsupported, a GPU was lost) the store appends Prometheus's staleness marker, so rules evaluated here
see the series end exactly when a Prometheus scraping gpumon would.
"""

from __future__ import annotations

import math
import threading
import time
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

from gpumon.model import STALE_NAN, Labels, Sample

SeriesKey = tuple[str, Labels]


class Ring:
    """Fixed-capacity time series: timestamps and values, oldest overwritten first."""

    __slots__ = ("_head", "_size", "capacity", "last_nan_t", "put_id", "times", "values")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a ring holds at least one point, not {capacity}")
        self.capacity = capacity
        self.times = array("d")
        self.values = array("d")
        self._head = 0  # index of the oldest point once full
        self._size = 0
        # Time of the newest NaN (a staleness marker, or a NaN reading): a window starting after it
        # holds none, which spares the rules a scan for one.
        self.last_nan_t = -math.inf
        self.put_id = 0  # the Store.put that last wrote it

    def append(self, t: float, v: float) -> None:
        """Add a point; a time earlier than the newest point (the wall clock stepped back) drops the
        history, since every reader relies on times only growing."""
        if self._size and t < self.times[(self._head + self._size - 1) % self.capacity]:
            self.times, self.values = array("d"), array("d")
            self._head = self._size = 0
            self.last_nan_t = -math.inf
        if v != v:
            self.last_nan_t = t
        if self._size < self.capacity:
            self.times.append(t)
            self.values.append(v)
            self._size += 1
            return
        self.times[self._head] = t
        self.values[self._head] = v
        self._head = (self._head + 1) % self.capacity

    def __len__(self) -> int:
        return self._size

    def points(self, start: float = -math.inf, end: float = math.inf) -> list[tuple[float, float]]:
        """Points with start <= t <= end, oldest first."""
        times, values = self.window(start, end)
        return list(zip(times, values, strict=True))

    def window(self, start: float = -math.inf, end: float = math.inf) -> tuple[array[float], array[float]]:
        """Times and values with start <= t <= end, oldest first, as array slices (the rules' hot
        path: a binary search and at most two memcpy-like slices where the ring wraps)."""
        lo, hi = self._first_at_or_after(start), self._first_after(end)
        if lo >= hi:
            return array("d"), array("d")
        a, b = self._head + lo, self._head + hi
        n = self.capacity
        if b <= n:
            return self.times[a:b], self.values[a:b]
        if a >= n:
            return self.times[a - n:b - n], self.values[a - n:b - n]
        return self.times[a:] + self.times[:b - n], self.values[a:] + self.values[:b - n]

    def _first_at_or_after(self, t: float) -> int:
        return self._search(bisect_left, t)

    def _first_after(self, t: float) -> int:
        return self._search(bisect_right, t)

    def _search(self, bisect: Callable[..., int], t: float) -> int:
        """Index (oldest = 0) where `t` would go, by `bisect` over the ring's one or two sorted runs:
        the older run is times[head:], the newer times[:head] (in C: rules search every series)."""
        head, times = self._head, self.times
        if head == 0:
            return bisect(times, t, 0, self._size)
        newer_first = times[0]
        if t < newer_first or (t == newer_first and bisect is bisect_left):
            return bisect(times, t, head, self.capacity) - head
        return self.capacity - head + bisect(times, t, 0, head)

    def last_until(self, start: float, end: float) -> tuple[list[float], list[float]]:
        """The newest point with start <= t <= end: times and values of zero or one point."""
        i = self._first_after(end) - 1
        if i < 0:
            return [], []
        j = (self._head + i) % self.capacity
        return ([self.times[j]], [self.values[j]]) if self.times[j] >= start else ([], [])

    def last(self) -> tuple[float, float] | None:
        if not self._size:
            return None
        i = (self._head - 1) % self.capacity if self._size == self.capacity else self._size - 1
        return self.times[i], self.values[i]


class Matcher(Protocol):
    """A label matcher (gpumon.rules.promql.Matcher); the store needs only this much of it."""

    @property
    def name(self) -> str: ...
    @property
    def op(self) -> str: ...
    @property
    def value(self) -> str: ...

    def matches(self, labels: dict[str, str]) -> bool: ...


class Store:
    """Latest samples by (unit, tier) and recent history by series."""

    def __init__(self, capacity: int, capacity_by_name: dict[str, int] | None = None) -> None:
        self.capacity = max(2, capacity)
        # Metrics that rules read over long ranges get longer rings than `capacity`.
        self.capacity_by_name = capacity_by_name or {}
        self._latest: dict[tuple[str, str], Sample] = {}
        self._series: dict[SeriesKey, Ring] = {}
        self._by_name: dict[str, list[SeriesKey]] = {}
        self._full_labels: dict[SeriesKey, Labels] = {}  # sorted, with __name__: what PromQL sees
        self._rings: dict[tuple[str, str], list[Ring]] = {}  # the rings each unit's latest put wrote
        self._puts = 0
        # Held by every write, and by a reader on another thread (the query API's) around each select:
        # the event loop's own readers (rules, exposition) need not take it.
        self.lock = threading.Lock()

    def put(self, sample: Sample) -> None:
        with self.lock:
            self._put(sample)

    def _put(self, sample: Sample) -> None:
        unit = (sample.unit, sample.tier)
        self._latest[unit] = sample
        t = round(sample.timestamp * 1000)  # rings hold milliseconds, as PromQL evaluates them
        self._puts += 1
        put_id = self._puts
        series = self._series
        rings = []
        for name, labels, value in sample.values:
            ring = series.get((name, labels))
            if ring is None:
                ring = self._new_series((name, labels))
            ring.append(t, value)
            ring.put_id = put_id
            rings.append(ring)
        # A series the unit's previous sample had and this one lacks ends: its ring was not written
        # by this put (a stamp compare, not a set of keys, since this runs for every sample).
        for ring in self._rings.get(unit, ()):
            if ring.put_id != put_id:
                self._end(ring, t)
        self._rings[unit] = rings

    def _new_series(self, key: SeriesKey) -> Ring:
        ring = self._series[key] = Ring(max(self.capacity, self.capacity_by_name.get(key[0], 0)))
        self._by_name.setdefault(key[0], []).append(key)
        self._full_labels[key] = tuple(sorted((("__name__", key[0]), *key[1])))
        return ring

    def restamp(self, tier: str, timestamp: float) -> None:
        """Repeat the latest values of `tier`'s samples at `timestamp`, as each scrape of a Prometheus
        shows a static fact again: without it a series read once at start-up (a temperature threshold)
        would fall out of PromQL's 5-minute lookback, and a rule joining it would stop firing."""
        t = round(timestamp * 1000)
        with self.lock:
            self._restamp(tier, t)

    def _restamp(self, tier: str, t: int) -> None:
        for (_, unit_tier), rings in self._rings.items():
            if unit_tier != tier:
                continue
            for ring in rings:
                last = ring.last()
                if last is not None and last[0] < t and last[1] == last[1]:  # not ended (NaN marker)
                    ring.append(t, last[1])

    @staticmethod
    def _end(ring: Ring, t: int) -> None:
        if (last := ring.last()) is not None and last[0] < t:
            ring.append(t, STALE_NAN)

    def discard(self, unit: str) -> None:
        """Forget the latest samples of a unit (a lost GPU): its series leave the exposition and
        end, for range queries, with a staleness marker."""
        now = round(time.time() * 1000)
        with self.lock:
            self._discard(unit, now)

    def _discard(self, unit: str, now: int) -> None:
        for key in [k for k in self._latest if k[0] == unit]:
            del self._latest[key]
            for ring in self._rings.pop(key, ()):
                self._end(ring, now)

    def select(self, matchers: Sequence[Matcher], start_ms: int, end_ms: int, last_only: bool = False
               ) -> Iterator[tuple[Labels, Sequence[float], Sequence[float], bool]]:
        """Series matching every matcher, with their points in [start, end] (ms) and whether none of
        those is NaN: the rules' view. `last_only` returns just the newest such point (what an instant
        selector reads)."""
        name = next((m for m in matchers if m.name == "__name__" and m.op == "="), None)
        keys: Iterable[SeriesKey]
        if name is not None:
            keys = self._by_name.get(name.value, ())
        elif (names := _literal_names(matchers)) is not None:  # {__name__=~"a|b|c"}: the console's query
            keys = [key for n in sorted(names) for key in self._by_name.get(n, ())]
        else:
            keys = list(self._series)
        others = [m for m in matchers if m is not name]  # the name matcher holds for every key by_name gave
        for key in keys:
            labels = self._full_labels[key]
            if others:
                as_dict = dict(labels)
                if not all(m.matches(as_dict) for m in others):
                    continue
            ring = self._series[key]
            times, values = ring.last_until(start_ms, end_ms) if last_only else ring.window(start_ms, end_ms)
            if times:
                yield labels, times, values, ring.last_nan_t < start_ms

    def latest(self) -> list[Sample]:
        return list(self._latest.values())

    def latest_by_gpu(self) -> dict[int, list[Sample]]:
        """The latest samples that belong to a GPU, by GPU index (snapshot, MQTT telemetry)."""
        out: dict[int, list[Sample]] = {}
        for sample in self._latest.values():
            if sample.gpu is not None:
                out.setdefault(sample.gpu, []).append(sample)
        return out

    def series(self) -> Iterator[tuple[SeriesKey, Ring]]:
        yield from self._series.items()

    def ring(self, name: str, labels: Labels) -> Ring | None:
        return self._series.get((name, labels))

    def prune(self, older_than: float) -> int:
        """Drop series whose newest point is older than `older_than` (Unix seconds); returns how many."""
        cutoff = older_than * 1000
        with self.lock:
            dead = [k for k, r in self._series.items() if (last := r.last()) is None or last[0] < cutoff]
            for k in dead:
                del self._series[k]
                del self._full_labels[k]
                self._by_name[k[0]].remove(k)
        return len(dead)


def _literal_names(matchers: Sequence[Matcher]) -> frozenset[str] | None:
    """The metric names a `__name__=~"a|b|c"` matcher allows, when it is one of literal alternatives."""
    for m in matchers:
        if m.name == "__name__" and m.op == "=~":
            literals = getattr(getattr(m, "regex", None), "literals", None)
            if literals is not None:
                return frozenset(literals)
    return None
