"""The ring buffer and the store of latest samples."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from gpumon.model import Labels, Sample
from gpumon.rules.promql import is_stale
from gpumon.store import Ring, Store

GPU0: Labels = (("gpu", "0"), ("uuid", "GPU-a"))
GPU1: Labels = (("gpu", "1"), ("uuid", "GPU-b"))


# --- Ring --------------------------------------------------------------------------------------


def test_empty_ring() -> None:
    ring = Ring(3)
    assert len(ring) == 0
    assert ring.points() == []
    assert ring.last() is None


@pytest.mark.parametrize("capacity", [0, -1])
def test_ring_needs_room(capacity: int) -> None:
    with pytest.raises(ValueError):
        Ring(capacity)


def test_below_capacity() -> None:
    ring = Ring(4)
    for t in (1.0, 2.0, 3.0):
        ring.append(t, t * 10)
    assert len(ring) == 3
    assert ring.points() == [(1.0, 10.0), (2.0, 20.0), (3.0, 30.0)]
    assert ring.last() == (3.0, 30.0)


def test_beyond_capacity_keeps_the_newest_oldest_first() -> None:
    ring = Ring(3)
    for t in range(1, 8):
        ring.append(float(t), float(-t))
        assert ring.last() == (float(t), float(-t))
    assert len(ring) == 3
    assert ring.points() == [(5.0, -5.0), (6.0, -6.0), (7.0, -7.0)]


def test_exactly_full_and_one_more() -> None:
    ring = Ring(2)
    ring.append(1, 1)
    ring.append(2, 2)
    assert ring.points() == [(1, 1), (2, 2)] and ring.last() == (2, 2)
    ring.append(3, 3)
    assert ring.points() == [(2, 2), (3, 3)] and ring.last() == (3, 3)


def test_capacity_one() -> None:
    ring = Ring(1)
    for t in (1.0, 2.0, 3.0):
        ring.append(t, t)
        assert ring.points() == [(t, t)]
        assert ring.last() == (t, t)
    assert len(ring) == 1


def test_time_filter_is_inclusive() -> None:
    ring = Ring(5)
    for t in range(10):  # keeps 5..9
        ring.append(float(t), float(t) / 2)
    assert ring.points(6, 8) == [(6.0, 3.0), (7.0, 3.5), (8.0, 4.0)]
    assert ring.points(start=8) == [(8.0, 4.0), (9.0, 4.5)]
    assert ring.points(end=5) == [(5.0, 2.5)]
    assert ring.points(0, 4) == []  # overwritten
    assert ring.points(8, 6) == []
    assert ring.points(-math.inf, math.inf) == ring.points()


def test_values_are_doubles() -> None:
    ring = Ring(2)
    ring.append(1.5, math.nan)
    ring.append(2.5, 1e300)
    (t0, v0), (t1, v1) = ring.points()
    assert t0 == 1.5 and math.isnan(v0)
    assert (t1, v1) == (2.5, 1e300)


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@given(capacity=st.integers(1, 12), points=st.lists(st.tuples(finite, finite), max_size=40),
       start=finite, end=finite)
def test_ring_matches_a_list(capacity: int, points: list[tuple[float, float]], start: float, end: float) -> None:
    ring = Ring(capacity)
    model: list[tuple[float, float]] = []
    for t, v in points:
        ring.append(t, v)
        model = _model_append(model, (t, v), capacity)
    kept = model
    assert len(ring) == len(kept)
    assert ring.points() == kept
    assert ring.points(start, end) == [(t, v) for t, v in kept if start <= t <= end]
    assert ring.last() == (kept[-1] if kept else None)


@given(capacity=st.integers(1, 12), times=st.lists(st.integers(0, 30), max_size=40),
       start=st.integers(-1, 31), end=st.integers(-1, 31))
def test_ring_search_matches_a_list_when_wrapped(capacity: int, times: list[int], start: int, end: int) -> None:
    """Ever-growing times (repeats allowed) wrap the ring: both sorted runs and their seam are searched."""
    ring = Ring(capacity)
    model: list[tuple[float, float]] = []
    for i, t in enumerate(sorted(times)):
        ring.append(float(t), float(i))
        model = _model_append(model, (float(t), float(i)), capacity)
    assert ring.points(start, end) == [(t, v) for t, v in model if start <= t <= end]
    last = [p for p in model if start <= p[0] <= end][-1:]
    assert ring.last_until(start, end) == ([p[0] for p in last], [p[1] for p in last])


def _model_append(model: list[tuple[float, float]], point: tuple[float, float],
                  capacity: int) -> list[tuple[float, float]]:
    """The list model of a ring: the last `capacity` points; a step back in time drops the history."""
    if model and point[0] < model[-1][0]:
        model = []
    return [*model, point][-capacity:]


class RingMachine(RuleBasedStateMachine):
    """Appends and reads in any order; the ring always equals its list model."""

    def __init__(self) -> None:
        super().__init__()
        self.ring = Ring(1)
        self.model: list[tuple[float, float]] = []
        self.capacity = 1

    @initialize(capacity=st.integers(1, 8))
    def make(self, capacity: int) -> None:
        self.ring = Ring(capacity)
        self.capacity = capacity

    @rule(t=finite, v=finite)
    def append(self, t: float, v: float) -> None:
        self.ring.append(t, v)
        self.model = _model_append(self.model, (t, v), self.capacity)

    @rule(start=finite, end=finite)
    def window(self, start: float, end: float) -> None:
        assert self.ring.points(start, end) == [(t, v) for t, v in self.model if start <= t <= end]

    @invariant()
    def same_as_model(self) -> None:
        assert len(self.ring) == len(self.model)
        assert self.ring.points() == self.model
        assert self.ring.last() == (self.model[-1] if self.model else None)


RingMachine.TestCase.settings = settings(max_examples=50, stateful_step_count=30, deadline=None)
TestRingMachine = RingMachine.TestCase


# --- Store -------------------------------------------------------------------------------------


def sample(unit: str, tier: str, t: float, **values: float) -> Sample:
    s = Sample(unit, tier, t)
    for name, value in values.items():
        s.add(name, GPU0 if unit == "gpu0" else GPU1, value)
    return s


def test_capacity_at_least_two() -> None:
    assert Store(0).capacity == 2
    assert Store(1).capacity == 2
    assert Store(50).capacity == 50


def test_put_replaces_latest_per_unit_and_tier() -> None:
    store = Store(10)
    a = sample("gpu0", "fast", 1.0, gpumon_gpu_up=1)
    b = sample("gpu0", "slow", 1.0, gpumon_energy_joules_total=5)
    c = sample("gpu1", "fast", 1.0, gpumon_gpu_up=1)
    for s in (a, b, c):
        store.put(s)
    assert store.latest() == [a, b, c]
    a2 = sample("gpu0", "fast", 2.0, gpumon_gpu_up=0)
    store.put(a2)
    latest = store.latest()
    assert len(latest) == 3
    assert a2 in latest and a not in latest
    assert b in latest and c in latest


def test_put_appends_history_per_series() -> None:
    store = Store(3)
    for t in range(5):
        store.put(sample("gpu0", "fast", float(t), gpumon_gpu_up=t, gpumon_sm_active_ratio=t / 10))
    store.put(sample("gpu1", "fast", 9.0, gpumon_gpu_up=1))
    ring = store.ring("gpumon_gpu_up", GPU0)
    assert ring is not None
    assert ring.points() == [(2000.0, 2.0), (3000.0, 3.0), (4000.0, 4.0)]  # capacity 3; times in ms
    assert store.ring("gpumon_sm_active_ratio", GPU0) is not None
    assert store.ring("gpumon_gpu_up", GPU1) is not None
    assert store.ring("gpumon_gpu_up", (("gpu", "7"),)) is None
    assert {key for key, _ in store.series()} == {
        ("gpumon_gpu_up", GPU0), ("gpumon_sm_active_ratio", GPU0), ("gpumon_gpu_up", GPU1)}


def test_same_metric_different_labels_are_different_series() -> None:
    store = Store(4)
    s = Sample("gpu0", "slow", 1.0)
    s.add("gpumon_ecc_volatile_errors_total", (*GPU0, ("severity", "corrected")), 1)
    s.add("gpumon_ecc_volatile_errors_total", (*GPU0, ("severity", "uncorrected")), 2)
    store.put(s)
    assert len(list(store.series())) == 2


def test_discard_forgets_latest_but_keeps_history() -> None:
    store = Store(10)
    store.put(sample("gpu0", "fast", 1.0, gpumon_gpu_up=1))
    store.put(sample("gpu0", "slow", 1.0, gpumon_energy_joules_total=5))
    keep = sample("gpu1", "fast", 1.0, gpumon_gpu_up=1)
    store.put(keep)
    store.discard("gpu0")
    assert store.latest() == [keep]
    ring = store.ring("gpumon_gpu_up", GPU0)
    assert ring is not None and ring.points()[0] == (1000.0, 1.0)  # times in ms
    assert len(ring) == 2 and is_stale(ring.points()[1][1])  # the series ends, as Prometheus would see it
    assert store.ring("gpumon_energy_joules_total", GPU0) is not None
    store.discard("gpu0")  # idempotent
    store.discard("nonexistent")
    assert store.latest() == [keep]


def test_discard_does_not_match_unit_prefixes() -> None:
    store = Store(10)
    store.put(sample("gpu1", "fast", 1.0, gpumon_gpu_up=1))
    store.put(Sample("gpu10", "fast", 1.0))
    store.discard("gpu1")
    assert [s.unit for s in store.latest()] == ["gpu10"]


def test_prune_drops_series_without_recent_points() -> None:
    store = Store(10)
    store.put(sample("gpu0", "fast", 1.0, gpumon_gpu_up=1, gpumon_sm_active_ratio=0.5))
    store.put(sample("gpu0", "fast", 5.0, gpumon_gpu_up=1))  # sm_active not read this time
    store.put(sample("gpu1", "fast", 10.0, gpumon_gpu_up=1))
    stale = store.ring("gpumon_sm_active_ratio", GPU0)
    assert stale is not None and is_stale(stale.points()[-1][1])  # ended with a staleness marker at 5.0
    assert store.prune(1.0) == 0  # nothing older than 1.0
    assert store.prune(5.0) == 0  # newest point exactly at the cutoff stays
    assert store.prune(6.0) == 2
    assert store.ring("gpumon_sm_active_ratio", GPU0) is None
    assert store.ring("gpumon_gpu_up", GPU1) is not None
    assert store.prune(100.0) == 1
    assert list(store.series()) == []
    assert len(store.latest()) == 2  # prune touches history only


def test_static_facts_stay_within_promql_lookback_as_a_scrape_would_see_them() -> None:
    """A threshold read once at start-up is repeated at each fast round: 6 minutes later a rule joining it
    still sees it (without the repeats it left the 5-minute lookback), and a lost GPU's end stays ended."""
    from gpumon.rules.promql import Evaluator, compile_expr
    from gpumon.rules.service import StoreStorage

    store = Store(1000)
    static = Sample("gpu0", "static", 1000.0, gpu=0)
    static.add("gpumon_temperature_threshold_celsius", (("gpu", "0"), ("threshold", "slowdown")), 89.0)
    store.put(static)
    for t in range(1001, 1361):
        fast = Sample("gpu0", "fast", float(t), gpu=0)
        fast.add("gpumon_gpu_temperature_celsius", (("gpu", "0"),), 88.0)
        store.put(fast)
        store.restamp("static", float(t))
    near = compile_expr('gpumon_gpu_temperature_celsius > ignoring(threshold) '
                        '(gpumon_temperature_threshold_celsius{threshold="slowdown"} - 5)')
    assert len(Evaluator(StoreStorage(store)).instant(near, 1_360_000)) == 1
    ring = store.ring("gpumon_temperature_threshold_celsius", (("gpu", "0"), ("threshold", "slowdown")))
    assert ring is not None and len(ring) == 361
    store.discard("gpu0")  # the GPU is lost: its series end with a staleness marker, and are not revived
    store.restamp("static", 1400.0)
    assert len(ring) == 362 and ring.last() is not None and math.isnan(ring.last()[1])  # type: ignore[index]


def test_a_name_among_literal_alternatives_selects_by_name() -> None:
    """`{__name__=~"a|b"}` (the console's query) looks the names up instead of matching every series,
    and selects exactly what matching would."""
    from gpumon.rules.promql import compile_expr

    store = Store(10)
    s = Sample("gpu0", "fast", 1.0, gpu=0)
    for name in ("a", "b", "ab", "c"):
        s.add(name, (("gpu", "0"),), 1.0)
    store.put(s)
    for pattern, want in (('{__name__=~"a|b"}', {"a", "b"}), ('{__name__=~"a.*"}', {"a", "ab"}),
                          ('{__name__=~"a|b", gpu="1"}', set())):
        expr = compile_expr(pattern)
        got = {dict(labels)["__name__"] for labels, *_ in store.select(expr.matchers, 0, 2000)}  # type: ignore[union-attr]
        assert got == want, pattern
