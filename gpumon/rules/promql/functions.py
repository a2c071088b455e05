"""Range-vector functions (rate, increase, avg_over_time, ...) over one series' points, with
Prometheus's extrapolation, counter resets and floating-point summation."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

from gpumon.rules.promql.values import duration_ms

Floats = Sequence[float]


def _extrapolated(times: Floats, values: Floats, ms: Any, t: int, counter: bool, rate: bool) -> float | None:
    if len(times) < 2:
        return None
    vs = ms.vector_selector
    range_ms = duration_ms(ms.range)
    range_start = t - range_ms - duration_ms(vs.offset)
    range_end = t - duration_ms(vs.offset)
    first_t, first_v = times[0], values[0]
    last_t, last_v = times[-1], values[-1]
    result = last_v - first_v
    if counter:
        previous = 0.0
        for v in values:
            if v < previous:
                result += previous
            previous = v
    to_start = (first_t - range_start) / 1000
    to_end = (range_end - last_t) / 1000
    sampled = (last_t - first_t) / 1000
    average = sampled / (len(times) - 1)
    if counter and result > 0 and first_v >= 0:
        to_zero = sampled * (first_v / result)
        if to_zero < to_start:
            to_start = to_zero
    threshold = average * 1.1
    interval = sampled
    interval += to_start if to_start < threshold else average / 2
    interval += to_end if to_end < threshold else average / 2
    factor = interval / sampled  # the same operation order as Prometheus, for identical rounding
    if rate:
        factor /= range_ms / 1000
    return result * factor


def _instant(times: Floats, values: Floats, rate: bool) -> float | None:
    if len(times) < 2:
        return None
    t1, v1, t2, v2 = times[-2], values[-2], times[-1], values[-1]
    value = v2 if rate and v2 < v1 else v2 - v1  # a counter reset: the counter restarted from 0
    if rate:
        if t2 == t1:
            return None
        return value / ((t2 - t1) / 1000)
    return value


def incremental_mean(values: list[float]) -> float:
    mean = 0.0
    count = 0.0
    for v in values:
        count += 1
        if math.isinf(mean):
            if math.isinf(v) and (mean > 0) == (v > 0):
                continue  # the mean stays the same infinity
            if not math.isinf(v) and not math.isnan(v):
                continue  # a finite value cannot change an infinite mean
        mean += v / count - mean / count
    return mean


def _kahan_inc(inc: float, total: float, c: float) -> tuple[float, float]:
    """Neumaier-compensated addition, as Prometheus's kahanSumInc."""
    t = total + inc
    if abs(total) >= abs(inc):
        c += (total - t) + inc
    else:
        c += (inc - t) + total
    return t, c


def _avg_over_time(values: Floats) -> float:
    mean = c = 0.0
    count = 0.0
    if math.isfinite(sum(values)):
        # No infinity or NaN among the values (their sum would not be finite), so the mean never
        # becomes infinite either: the same Kahan-compensated running mean without the checks for it,
        # which take half the time of this loop (it runs for every point of every window).
        for v in values:
            count += 1.0
            inc = v / count - mean / count
            t = mean + inc
            if -mean <= inc <= mean or mean <= inc <= -mean:  # abs(mean) >= abs(inc), without two calls
                c += (mean - t) + inc
            else:
                c += (inc - t) + mean
            mean = t
        return mean + c
    isinf = math.isinf
    for v in values:
        count += 1
        if isinf(mean):
            if isinf(v) and (mean > 0) == (v > 0):
                continue
            if not isinf(v) and not math.isnan(v):
                continue
        # _kahan_inc inlined: this loop runs for every point of every avg_over_time window
        inc = v / count - mean / count
        t = mean + inc
        if abs(mean) >= abs(inc):
            c += (mean - t) + inc
        else:
            c += (inc - t) + mean
        mean = t
    return mean if isinf(mean) else mean + c


def _changes(values: Floats) -> float:
    n = 0
    for a, b in itertools.pairwise(values):
        if a != b and not (math.isnan(a) and math.isnan(b)):
            n += 1
    return float(n)


def _resets(values: Floats) -> float:
    return float(sum(1 for a, b in itertools.pairwise(values) if b < a))


def _min(values: Floats) -> float:
    if not math.isnan(sum(values)):
        return min(values)  # no NaN: the builtin gives Prometheus's answer, in C
    value = values[0]
    for v in values[1:]:
        if v < value or math.isnan(value):
            value = v
    return value


def _max(values: Floats) -> float:
    if not math.isnan(sum(values)):
        return max(values)
    value = values[0]
    for v in values[1:]:
        if v > value or math.isnan(value):
            value = v
    return value


def _sum(values: Floats) -> float:
    total = c = 0.0
    for v in values:
        total, c = _kahan_inc(v, total, c)
    return total if math.isinf(total) else total + c


def quantile(q: float, values: list[float]) -> float:
    if not values or math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    lower = max(0, math.floor(rank))
    upper = min(len(ordered) - 1, lower + 1)
    weight = rank - math.floor(rank)
    return ordered[lower] * (1 - weight) + ordered[upper] * weight


# Without NaN among the values, Prometheus's max/min_over_time are Python's max and min.
NAN_FREE_BUILTINS: dict[str, Callable[[Floats], float]] = {"max_over_time": max, "min_over_time": min}

RANGE: dict[str, Callable[[Floats, Floats, Any, int], float | None]] = {
    "rate": lambda ts, vs, ms, t: _extrapolated(ts, vs, ms, t, counter=True, rate=True),
    "increase": lambda ts, vs, ms, t: _extrapolated(ts, vs, ms, t, counter=True, rate=False),
    "delta": lambda ts, vs, ms, t: _extrapolated(ts, vs, ms, t, counter=False, rate=False),
    "irate": lambda ts, vs, ms, t: _instant(ts, vs, rate=True),
    "idelta": lambda ts, vs, ms, t: _instant(ts, vs, rate=False),
    "changes": lambda ts, vs, ms, t: _changes(vs),
    "resets": lambda ts, vs, ms, t: _resets(vs),
    "avg_over_time": lambda ts, vs, ms, t: _avg_over_time(vs),
    "min_over_time": lambda ts, vs, ms, t: _min(vs),
    "max_over_time": lambda ts, vs, ms, t: _max(vs),
    "sum_over_time": lambda ts, vs, ms, t: _sum(vs),
    "count_over_time": lambda ts, vs, ms, t: float(len(vs)),
    "last_over_time": lambda ts, vs, ms, t: vs[-1],
}
