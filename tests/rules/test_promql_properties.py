"""Algebraic identities of PromQL functions, checked on generated series: what must hold whatever
the values (abs(x) >= 0, ceil >= floor, clamp within its bounds, topk a subset of its input, ...)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from gpumon.rules.promql import Evaluator, Sample, compile_expr
from gpumon.rules.ruletest import MemoryStorage

FINITE = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
VALUES = st.lists(FINITE, min_size=1, max_size=8)


def _eval(values: list[float], expr: str) -> list[Sample]:
    storage = MemoryStorage()
    for i, v in enumerate(values):
        storage.add((("__name__", "x"), ("i", f"{i:02}"), ("kind", "ab"[i % 2])), 0, v)
    got = Evaluator(storage).instant(compile_expr(expr), 0)
    assert isinstance(got, list)
    return got  # type: ignore[return-value]


def _by_i(samples: list[Sample]) -> dict[str, float]:
    return {dict(s.labels)["i"]: s.value for s in samples}


@settings(max_examples=60, deadline=None)
@given(VALUES)
def test_abs_is_never_negative_and_sgn_times_abs_is_x(values: list[float]) -> None:
    absolute = _by_i(_eval(values, "abs(x)"))
    assert all(v >= 0 for v in absolute.values())
    product = _by_i(_eval(values, "sgn(x) * abs(x)"))
    assert product == _by_i(_eval(values, "x"))


@settings(max_examples=60, deadline=None)
@given(VALUES)
def test_ceil_is_at_least_floor_and_round_between(values: list[float]) -> None:
    ceil, floor, rounded = (_by_i(_eval(values, f"{f}(x)")) for f in ("ceil", "floor", "round"))
    for i, v in _by_i(_eval(values, "x")).items():
        assert floor[i] <= v <= ceil[i] and ceil[i] - floor[i] <= 1
        assert rounded[i] in (floor[i], ceil[i])


@settings(max_examples=60, deadline=None)
@given(VALUES, FINITE, FINITE)
def test_clamp_is_within_its_bounds(values: list[float], a: float, b: float) -> None:
    lo, hi = min(a, b), max(a, b)
    clamped = _eval(values, f"clamp(x, {lo!r}, {hi!r})")
    assert len(clamped) == len(values) and all(lo <= s.value <= hi for s in clamped)
    assert _by_i(_eval(values, f"clamp_min(clamp_max(x, {hi!r}), {lo!r})")) == _by_i(clamped)
    if lo < hi:
        assert _eval(values, f"clamp(x, {hi!r}, {lo!r})") == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=1e-3, max_value=1e3), min_size=1, max_size=8))
def test_exp_of_ln_is_x_for_positive_x(values: list[float]) -> None:
    for i, v in _by_i(_eval(values, "exp(ln(x))")).items():
        assert math.isclose(v, values[int(i)], rel_tol=1e-12)
    for i, v in _by_i(_eval(values, "log2(x) - ln(x) / 0.6931471805599453")).items():
        assert abs(v) <= 1e-12 * max(1.0, abs(math.log2(values[int(i)])))


@settings(max_examples=60, deadline=None)
@given(VALUES)
def test_sort_orders_by_value_and_keeps_every_series(values: list[float]) -> None:
    ascending = [s.value for s in _eval(values, "sort(x)")]
    descending = [s.value for s in _eval(values, "sort_desc(x)")]
    assert ascending == sorted(values) and descending == sorted(values, reverse=True)


@settings(max_examples=60, deadline=None)
@given(VALUES, st.integers(min_value=1, max_value=10))
def test_topk_and_bottomk_pick_a_subset_of_extreme_values(values: list[float], k: int) -> None:
    every = {(s.labels, s.value) for s in _eval(values, "x")}
    top = _eval(values, f"topk({k}, x)")
    bottom = _eval(values, f"bottomk({k}, x)")
    assert {(s.labels, s.value) for s in top} <= every and len(top) == min(k, len(values))
    assert {(s.labels, s.value) for s in bottom} <= every and len(bottom) == min(k, len(values))
    rest_top = sorted(values, reverse=True)[len(top):]
    assert all(s.value >= v for s in top for v in rest_top)
    rest_bottom = sorted(values)[len(bottom):]
    assert all(s.value <= v for s in bottom for v in rest_bottom)


@settings(max_examples=60, deadline=None)
@given(VALUES, st.floats(min_value=0, max_value=1))
def test_quantile_lies_between_min_and_max_and_aggregates_agree(values: list[float], q: float) -> None:
    [quantile] = _eval(values, f"quantile({q!r}, x)")
    [low] = _eval(values, "min(x)")
    [high] = _eval(values, "max(x)")
    # Prometheus interpolates lower*(1-w) + upper*w, which can round one ulp past both: promtool 2.42
    # gives 524288.0697380422 for quantile(1.192092896e-07, x) over two samples of 524288.0697380421
    assert low.value - math.ulp(low.value) <= quantile.value <= high.value + math.ulp(high.value)
    assert [s.value for s in _eval(values, "count(x)")] == [float(len(values))]
    assert [s.value for s in _eval(values, "group(x)")] == [1.0]
    [stddev] = _eval(values, "stddev(x)")
    [stdvar] = _eval(values, "stdvar(x)")
    assert stddev.value >= 0 and math.isclose(stddev.value ** 2, stdvar.value, rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=60, deadline=None)
@given(VALUES, st.sampled_from(["-", ":", ""]))
def test_label_join_gives_the_joined_values(values: list[float], sep: str) -> None:
    for s in _eval(values, f'label_join(x, "joined", "{sep}", "kind", "i")'):
        labels = dict(s.labels)
        assert labels["joined"] == f"{labels['kind']}{sep}{labels['i']}"


@settings(max_examples=60, deadline=None)
@given(VALUES)
def test_count_values_counts_every_series_once(values: list[float]) -> None:
    counted = _eval(values, 'count_values("v", x)')
    assert sum(s.value for s in counted) == len(values)
    assert {float(dict(s.labels)["v"]) for s in counted} == set(values)
