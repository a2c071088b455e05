"""In-memory store: the latest sample per (unit, tier) for the exporter, and a ring buffer per series
for range queries (the rules engine).

Ring buffers hold doubles in `array('d')`, two per point, so ten minutes of one-second samples for
eight GPUs stays in single-digit megabytes.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator

from gpumon.model import Labels, Sample

SeriesKey = tuple[str, Labels]


class Ring:
    """Fixed-capacity time series: timestamps and values, oldest overwritten first."""

    __slots__ = ("_head", "_size", "capacity", "times", "values")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a ring holds at least one point, not {capacity}")
        self.capacity = capacity
        self.times = array("d")
        self.values = array("d")
        self._head = 0  # index of the oldest point once full
        self._size = 0

    def append(self, t: float, v: float) -> None:
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
        order = range(self._head, self._head + self._size)
        n = self.capacity
        return [(self.times[i % n], self.values[i % n]) for i in order
                if start <= self.times[i % n] <= end]

    def last(self) -> tuple[float, float] | None:
        if not self._size:
            return None
        i = (self._head - 1) % self.capacity if self._size == self.capacity else self._size - 1
        return self.times[i], self.values[i]


class Store:
    """Latest samples by (unit, tier) and recent history by series."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(2, capacity)
        self._latest: dict[tuple[str, str], Sample] = {}
        self._series: dict[SeriesKey, Ring] = {}

    def put(self, sample: Sample) -> None:
        self._latest[(sample.unit, sample.tier)] = sample
        t = sample.timestamp
        series = self._series
        for name, labels, value in sample.values:
            ring = series.get((name, labels))
            if ring is None:
                ring = series[(name, labels)] = Ring(self.capacity)
            ring.append(t, value)

    def discard(self, unit: str) -> None:
        """Forget the latest samples of a unit (a lost GPU): its series leave the exposition."""
        for key in [k for k in self._latest if k[0] == unit]:
            del self._latest[key]

    def latest(self) -> list[Sample]:
        return list(self._latest.values())

    def series(self) -> Iterator[tuple[SeriesKey, Ring]]:
        yield from self._series.items()

    def ring(self, name: str, labels: Labels) -> Ring | None:
        return self._series.get((name, labels))

    def prune(self, older_than: float) -> int:
        """Drop series whose newest point is older than `older_than`; returns how many."""
        dead = [k for k, r in self._series.items() if (last := r.last()) is None or last[0] < older_than]
        for k in dead:
            del self._series[k]
        return len(dead)
