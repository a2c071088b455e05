"""Range-vector functions (rate, increase, avg_over_time, deriv, holt_winters, ...) over one series'
points in a window, with Prometheus 2.42's extrapolation, counter resets and floating-point summation."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gpumon.rules.promql.gomath import float_div
from gpumon.rules.promql.values import EvalError

Floats = Sequence[float]


@dataclass(frozen=True, slots=True)
class Window:
    """Where a range function looks: points in [end - range, end] (ms); `t` is the evaluation time, and
    `params` the function's scalar arguments (quantile_over_time's q, predict_linear's seconds)."""

    end: int
    range_ms: int
    t: int
    params: tuple[float, ...] = ()


def _extrapolated(times: Floats, values: Floats, w: Window, counter: bool, rate: bool) -> float | None:
    if len(times) < 2:
        return None
    range_ms = w.range_ms
    range_start = w.end - range_ms
    range_end = w.end
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
        factor /= range_ms // 1000 + (range_ms % 1000) * 1_000_000 / 1e9  # Go's Duration.Seconds()
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


def nan_first(v: float) -> tuple[bool, float]:
    """Sort key of Prometheus's vectorByValueHeap: NaN before every number."""
    return (v == v, v)


def quantile(q: float, values: Sequence[float]) -> float:
    if not values or math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    ordered = sorted(values, key=nan_first) if math.isnan(math.fsum(values)) else sorted(values)
    rank = q * (len(ordered) - 1)
    lower = max(0, math.floor(rank))
    upper = min(len(ordered) - 1, lower + 1)
    weight = rank - math.floor(rank)
    return ordered[lower] * (1 - weight) + ordered[upper] * weight


def _variance(values: Floats) -> float:
    """stdvar_over_time: Welford's algorithm with Kahan-compensated mean and sum of squares."""
    count = mean = c_mean = aux = c_aux = 0.0
    for v in values:
        count += 1
        delta = v - (mean + c_mean)
        mean, c_mean = _kahan_inc(delta / count, mean, c_mean)
        aux, c_aux = _kahan_inc(delta * (v - (mean + c_mean)), aux, c_aux)
    return (aux + c_aux) / count


def _linear_regression(times: Floats, values: Floats, intercept_ms: float) -> tuple[float, float]:
    """Least-squares slope and the intercept at `intercept_ms`, as Prometheus's linearRegression."""
    n = sum_x = c_x = sum_y = c_y = sum_xy = c_xy = sum_x2 = c_x2 = 0.0
    init_y = values[0]
    const_y = True
    for i, (t, v) in enumerate(zip(times, values, strict=True)):
        if const_y and i > 0 and v != init_y:
            const_y = False
        n += 1.0
        x = (t - intercept_ms) / 1e3
        sum_x, c_x = _kahan_inc(x, sum_x, c_x)
        sum_y, c_y = _kahan_inc(v, sum_y, c_y)
        sum_xy, c_xy = _kahan_inc(x * v, sum_xy, c_xy)
        sum_x2, c_x2 = _kahan_inc(x * x, sum_x2, c_x2)
    if const_y:
        if math.isinf(init_y):
            return math.nan, math.nan
        return 0.0, init_y
    sum_x += c_x
    sum_y += c_y
    sum_xy += c_xy
    sum_x2 += c_x2
    cov_xy = sum_xy - sum_x * sum_y / n
    var_x = sum_x2 - sum_x * sum_x / n
    slope = cov_xy / var_x if var_x else float_div(cov_xy, var_x)
    intercept = sum_y / n - slope * sum_x / n
    return slope, intercept



def _deriv(times: Floats, values: Floats) -> float | None:
    if len(times) < 2:
        return None
    return _linear_regression(times, values, times[0])[0]


def _predict_linear(times: Floats, values: Floats, w: Window) -> float | None:
    if len(times) < 2:
        return None
    slope, intercept = _linear_regression(times, values, w.t)
    return slope * w.params[0] + intercept


def _holt_winters(values: Floats, w: Window) -> float | None:
    sf, tf = w.params
    if sf <= 0 or sf >= 1:  # NaN passes, as in Go
        raise EvalError(f"invalid smoothing factor. Expected: 0 < sf < 1, got: {sf:f}")
    if tf <= 0 or tf >= 1:
        raise EvalError(f"invalid trend factor. Expected: 0 < tf < 1, got: {tf:f}")
    if len(values) < 2:
        return None
    s0, s1 = 0.0, values[0]
    b = values[1] - values[0]
    for i in range(1, len(values)):
        x = sf * values[i]
        if i - 1 != 0:  # the trend at the previous point (the first trend is the first difference)
            b = tf * (s1 - s0) + (1 - tf) * b
        y = (1 - sf) * (s1 + b)
        s0, s1 = s1, x + y
    return s1


# Without NaN among the values, Prometheus's max/min_over_time are Python's max and min.
NAN_FREE_BUILTINS: dict[str, Callable[[Floats], float]] = {"max_over_time": max, "min_over_time": min}

# name -> f(times, values, window): the value for one series, None for no sample.
RANGE: dict[str, Callable[[Floats, Floats, Window], float | None]] = {
    "rate": lambda ts, vs, w: _extrapolated(ts, vs, w, counter=True, rate=True),
    "increase": lambda ts, vs, w: _extrapolated(ts, vs, w, counter=True, rate=False),
    "delta": lambda ts, vs, w: _extrapolated(ts, vs, w, counter=False, rate=False),
    "irate": lambda ts, vs, w: _instant(ts, vs, rate=True),
    "idelta": lambda ts, vs, w: _instant(ts, vs, rate=False),
    "changes": lambda ts, vs, w: _changes(vs),
    "resets": lambda ts, vs, w: _resets(vs),
    "avg_over_time": lambda ts, vs, w: _avg_over_time(vs),
    "min_over_time": lambda ts, vs, w: _min(vs),
    "max_over_time": lambda ts, vs, w: _max(vs),
    "sum_over_time": lambda ts, vs, w: _sum(vs),
    "count_over_time": lambda ts, vs, w: float(len(vs)),
    "last_over_time": lambda ts, vs, w: vs[-1],
    "present_over_time": lambda ts, vs, w: 1.0,
    "stdvar_over_time": lambda ts, vs, w: _variance(vs),
    "stddev_over_time": lambda ts, vs, w: math.sqrt(_variance(vs)),
    "quantile_over_time": lambda ts, vs, w: quantile(w.params[0], vs),
    "deriv": lambda ts, vs, w: _deriv(ts, vs),
    "predict_linear": _predict_linear,
    "holt_winters": lambda ts, vs, w: _holt_winters(vs, w),
}
