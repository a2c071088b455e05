"""Functions of an instant vector, as Prometheus 2.42's promql/functions.go computes them: arithmetic
(abs, ceil, ln, sin, ...) with Go's answers (its math library ported in golibm), clamping and rounding, dates, sorting,
label_replace/label_join, and the classic (bucket) histogram_quantile."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from gpumon.regex import expand
from gpumon.rules.promql import golibm
from gpumon.rules.promql.gomath import float_div, parse_float, to_int64
from gpumon.rules.promql.values import NAME, EvalError, Labels, Sample, Vector

Arg = float | str


def drop_name(labels: Labels) -> Labels:
    return tuple(p for p in labels if p[0] != NAME)


# --- arithmetic ------------------------------------------------------------------------------------


def _domain(fn: Callable[[float], float], overflow: Callable[[float], float] = lambda x: math.inf,
            pole: Callable[[float], float] | None = None) -> Callable[[float], float]:
    """`fn` with IEEE results where Python raises: NaN outside the domain, an infinity on overflow
    (`overflow(x)` gives its sign) and at a pole (`pole(x)`, e.g. ln(0) = -Inf)."""
    def safe(x: float) -> float:
        try:
            return fn(x)
        except OverflowError:
            return overflow(x)
        except ValueError:
            if pole is not None:
                return pole(x)
            return math.nan
    return safe


def _floor(x: float) -> float:
    return x if not math.isfinite(x) or x == 0 else math.copysign(float(math.floor(x)), x)


def _ceil(x: float) -> float:
    return x if not math.isfinite(x) or x == 0 else math.copysign(float(math.ceil(x)), x)


def _sgn(x: float) -> float:
    return -1.0 if x < 0 else 1.0 if x > 0 else x


MATH: dict[str, Callable[[float], float]] = {
    "abs": abs,
    "ceil": _ceil,
    "floor": _floor,
    "exp": golibm.go_exp,
    "sqrt": _domain(math.sqrt),  # IEEE's square root, correctly rounded in Go as in C
    "ln": golibm.go_log,
    "log2": golibm.go_log2,
    "log10": golibm.go_log10,
    "sin": golibm.go_sin,
    "cos": golibm.go_cos,
    "tan": golibm.go_tan,
    "asin": golibm.go_asin,
    "acos": golibm.go_acos,
    "atan": golibm.go_atan,
    "sinh": golibm.go_sinh,
    "cosh": golibm.go_cosh,
    "tanh": golibm.go_tanh,
    "asinh": golibm.go_asinh,
    "acosh": golibm.go_acosh,
    "atanh": golibm.go_atanh,
    "rad": lambda v: v * math.pi / 180,
    "deg": lambda v: v * 180 / math.pi,
    "sgn": _sgn,
}


def _round(x: float, inverse: float) -> float:
    return float_div(_floor(x * inverse + 0.5), inverse)


def round_vector(vec: Vector, args: Sequence[Arg], t: int) -> Vector:
    inverse = float_div(1.0, float(args[0]) if args else 1.0)  # ties round up, as Prometheus's round
    return [Sample(drop_name(s.labels), _round(s.value, inverse), t) for s in vec]


# --- dates -----------------------------------------------------------------------------------------


_U64 = 2**64
_SECONDS_PER_DAY = 86_400
_ABSOLUTE_ZERO_YEAR = -292_277_022_399
_UNIX_TO_ABSOLUTE = 62_135_596_800 + 9_223_371_966_579_724_800  # unixToInternal + internalToAbsolute
_DAYS_BEFORE = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334, 365)


def _civil(seconds: int) -> tuple[int, int, int, int, int, int, int]:
    """(year, month, day, hour, minute, weekday, day of year) of Unix time `seconds` in UTC, computed as
    Go's time package does (absDate), with its unsigned 64-bit wraparound: so for any int64, including
    the one Go makes of NaN or an infinity, the same answer as Prometheus."""
    sec = (seconds + _UNIX_TO_ABSOLUTE) % _U64
    d = sec // _SECONDS_PER_DAY
    n = d // 146_097
    y = 400 * n
    d -= 146_097 * n
    n = d // 36_524
    n -= n >> 2
    y += 100 * n
    d -= 36_524 * n
    n = d // 1461
    y += 4 * n
    d -= 1461 * n
    n = d // 365
    n -= n >> 2
    y += n
    d -= 365 * n
    y %= _U64
    year = (y - _U64 if y >= 2**63 else y) + _ABSOLUTE_ZERO_YEAR
    yday = day = d
    hour = sec % _SECONDS_PER_DAY // 3600
    minute = sec % 3600 // 60
    weekday = (sec + _SECONDS_PER_DAY) % (7 * _SECONDS_PER_DAY) // _SECONDS_PER_DAY  # Monday: 1
    if _leap(year):
        if day > 31 + 29 - 1:
            day -= 1
        elif day == 31 + 29 - 1:
            return year, 2, 29, hour, minute, weekday, yday + 1
    month = day // 31
    end = _DAYS_BEFORE[month + 1]
    if day >= end:
        month += 1
        begin = end
    else:
        begin = _DAYS_BEFORE[month]
    return year, month + 1, day - begin + 1, hour, minute, weekday, yday + 1


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_in_month(year: int, month: int) -> int:
    return 29 if month == 2 and _leap(year) else _MONTH_DAYS[month - 1]


DATES: dict[str, Callable[[tuple[int, int, int, int, int, int, int]], int]] = {
    "year": lambda c: c[0],
    "month": lambda c: c[1],
    "day_of_month": lambda c: c[2],
    "hour": lambda c: c[3],
    "minute": lambda c: c[4],
    "day_of_week": lambda c: c[5],
    "day_of_year": lambda c: c[6],
    "days_in_month": lambda c: _days_in_month(c[0], c[1]),
}


def date_of(name: str, seconds: int) -> float:
    return float(DATES[name](_civil(seconds)))


def date_function(name: str, vec: Vector, t: int) -> Vector:
    """hour(v), day_of_week(v), ...: each sample's value read as Unix seconds (truncated, as Go's
    int64() truncates)."""
    return [Sample(drop_name(s.labels), date_of(name, to_int64(s.value)), t) for s in vec]


# --- labels ----------------------------------------------------------------------------------------


# gpumon's bound on a label value label_replace or label_join makes (Prometheus has none): each level of
# `label_replace(x, "a", "$1$1...", "a", "(.*)")` multiplies a value, and five levels make gigabytes.
MAX_LABEL_VALUE = 65_536


def _bounded(value: str, function: str) -> str:
    if len(value) > MAX_LABEL_VALUE:
        raise EvalError(f"{function} would make a label value of {len(value)} characters; gpumon allows "
                        f"{MAX_LABEL_VALUE}")
    return value


def label_replace(vec: Vector, args: Sequence[Arg], regex: Any) -> Vector:
    dst, repl, src = str(args[0]), str(args[1]), str(args[2])
    out: Vector = []
    for s in vec:
        labels = dict(s.labels)
        m = regex.search(labels.get(src, ""))
        if m is not None:
            value = _bounded(expand(repl, m, regex), "label_replace")
            if value:
                labels[dst] = value
            else:
                labels.pop(dst, None)
            out.append(Sample(tuple(sorted(labels.items())), s.value, s.t))
        else:
            out.append(Sample(s.labels, s.value, s.t))
    return out


def label_join(vec: Vector, args: Sequence[Arg], t: int) -> Vector:
    dst, sep, sources = str(args[0]), str(args[1]), [str(a) for a in args[2:]]
    out: Vector = []
    for s in vec:
        labels = dict(s.labels)
        joined = _bounded(sep.join(labels.get(src, "") for src in sources), "label_join")
        if joined:
            labels[dst] = joined
        else:
            labels.pop(dst, None)
        out.append(Sample(tuple(sorted(labels.items())), s.value, s.t))
    return out


# --- sorting ---------------------------------------------------------------------------------------


def sort_vector(vec: Vector, descending: bool) -> Vector:
    """sort/sort_desc: by value, NaN last either way."""
    numbers = [s for s in vec if s.value == s.value]
    numbers.sort(key=lambda s: s.value, reverse=descending)
    return numbers + [s for s in vec if s.value != s.value]


# --- histograms ------------------------------------------------------------------------------------


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's bucketQuantile over (upper bound, cumulative count) pairs."""
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    buckets.sort(key=lambda b: b[0])
    if buckets[-1][0] != math.inf:
        return math.nan
    merged: list[list[float]] = []
    for bound, count in buckets:  # coalesce buckets with the same bound
        if merged and merged[-1][0] == bound:
            merged[-1][1] += count
        else:
            merged.append([bound, count])
    highest = merged[0][1]
    for bucket in merged[1:]:  # make the counts monotonic: the envelope of the buckets
        if bucket[1] > highest:
            highest = bucket[1]
        elif bucket[1] < highest:
            bucket[1] = highest
    if len(merged) < 2:
        return math.nan
    observations = merged[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    lo, hi = 0, len(merged) - 1  # Go's sort.Search for the first bucket holding the rank
    while lo < hi:
        mid = (lo + hi) // 2
        if merged[mid][1] >= rank:
            hi = mid
        else:
            lo = mid + 1
    index = lo
    if index == len(merged) - 1:
        return merged[-2][0]
    if index == 0 and merged[0][0] <= 0:
        return merged[0][0]
    start, end, count = 0.0, merged[index][0], merged[index][1]
    if index > 0:
        start = merged[index - 1][0]
        count -= merged[index - 1][1]
        rank -= merged[index - 1][1]
    return start + (end - start) * (rank / count)


def histogram_quantile(q: float, vec: Vector, t: int) -> Vector:
    """Classic histograms: the `le` series of one histogram (all labels alike but `le`) as buckets.
    Samples without a readable `le` are ignored; the result drops the name and `le`."""
    groups: dict[Labels, list[tuple[float, float]]] = {}
    for s in vec:
        le = next((v for k, v in s.labels if k == "le"), None)
        bound = parse_float(le) if le is not None else None
        if bound is None:
            continue
        key = tuple(p for p in s.labels if p[0] != "le")
        groups.setdefault(key, []).append((bound, s.value))
    return [Sample(drop_name(key), bucket_quantile(q, buckets), t) for key, buckets in groups.items()]
