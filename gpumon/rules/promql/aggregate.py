"""Aggregation operators (sum, avg, topk, quantile, count_values, ...) over an instant vector, as
Prometheus 2.42's evaluator.aggregation computes them, down to the order values are added in and the
heaps topk and bottomk keep (which decide the winners among equal values)."""

from __future__ import annotations

import math
from collections.abc import Callable

from gpumon.rules.promql.functions_range import quantile
from gpumon.rules.promql.gomath import INT64_MAX, INT64_MIN, format_float, value_text
from gpumon.rules.promql.values import NAME, EvalError, Labels, Sample, Vector

Less = Callable[[list[Sample], int, int], bool]


def _less_top(h: list[Sample], i: int, j: int) -> bool:  # vectorByValueHeap: NaN is the smallest
    a = h[i].value
    return a != a or a < h[j].value


def _less_bottom(h: list[Sample], i: int, j: int) -> bool:  # vectorByReverseValueHeap
    a = h[i].value
    return a != a or a > h[j].value


def _up(h: list[Sample], j: int, less: Less) -> None:
    while j > 0:
        i = (j - 1) // 2
        if not less(h, j, i):
            break
        h[i], h[j] = h[j], h[i]
        j = i


def _down(h: list[Sample], i: int, n: int, less: Less) -> None:
    while True:
        j = 2 * i + 1
        if j >= n:
            break
        if j + 1 < n and less(h, j + 1, j):
            j += 1
        if not less(h, j, i):
            break
        h[i], h[j] = h[j], h[i]
        i = j


def _push(h: list[Sample], s: Sample, less: Less) -> None:
    h.append(s)
    _up(h, len(h) - 1, less)


def _pop(h: list[Sample], less: Less) -> None:
    n = len(h) - 1
    h[0], h[n] = h[n], h[0]
    _down(h, 0, n, less)
    h.pop()


def _k(op: str, param: float) -> int:
    if not (INT64_MIN <= param <= INT64_MAX):
        raise EvalError(f"Scalar value {value_text(param)} overflows int64")
    return int(param)




def _select(op: str, groups: dict[Labels, list[Sample]], k: int, t: int) -> Vector:
    """topk/bottomk: Prometheus's heap, replaced in place when k is 1."""
    top = op == "topk"
    less = _less_top if top else _less_bottom
    out: Vector = []
    for members in groups.values():
        heap = [members[0]]
        for s in members[1:]:
            head = heap[0].value
            if len(heap) < k or head != head or (head < s.value if top else head > s.value):
                if len(heap) == k:
                    if k == 1:
                        heap[0] = s
                        continue
                    _pop(heap, less)
                _push(heap, s, less)
        numbers = sorted((s for s in heap if s.value == s.value), key=lambda s: s.value, reverse=top)
        out.extend(Sample(s.labels, s.value, t) for s in numbers + [s for s in heap if s.value != s.value])
    return out


def aggregate(op: str, vec: Vector, param: float | str | None, grouping: tuple[str, ...], without: bool,
              t: int) -> Vector:
    names = set(grouping)
    if op == "count_values":
        label = str(param)
        vec = [Sample(tuple(sorted({**dict(s.labels), label: format_float(s.value)}.items())), s.value, s.t)
               for s in vec]
        if not without:
            names.add(label)
    if without:
        names.add(NAME)

    groups: dict[Labels, list[Sample]] = {}
    if without:
        for s in vec:
            groups.setdefault(tuple(p for p in s.labels if p[0] not in names), []).append(s)
    elif names:
        for s in vec:
            groups.setdefault(tuple(p for p in s.labels if p[0] in names), []).append(s)
    elif vec:
        groups[()] = vec

    if op in ("topk", "bottomk"):
        k = _k(op, float(param))  # type: ignore[arg-type]
        return [] if k < 1 else _select(op, groups, k, t)
    fn = _FOLDS[op]
    if op == "quantile":
        q = float(param)  # type: ignore[arg-type]
        return [Sample(key, quantile(q, [s.value for s in members]), t) for key, members in groups.items()]
    return [Sample(key, fn([s.value for s in members]), t) for key, members in groups.items()]


def _sum(values: list[float]) -> float:
    total = values[0]
    for v in values[1:]:
        total += v
    return total


def _avg(values: list[float]) -> float:
    mean = values[0]
    count = 1.0
    for v in values[1:]:
        count += 1
        if math.isinf(mean):
            if math.isinf(v) and (mean > 0) == (v > 0):
                continue
            if not math.isinf(v) and not math.isnan(v):
                continue
        mean += v / count - mean / count
    return mean


def _max(values: list[float]) -> float:
    value = values[0]
    for v in values[1:]:
        if value < v or value != value:
            value = v
    return value


def _min(values: list[float]) -> float:
    value = values[0]
    for v in values[1:]:
        if value > v or value != value:
            value = v
    return value


def _variance(values: list[float]) -> float:
    mean, value, count = values[0], 0.0, 1.0
    for v in values[1:]:
        count += 1
        delta = v - mean
        mean += delta / count
        value += delta * (v - mean)
    return value / count


_FOLDS: dict[str, Callable[[list[float]], float]] = {
    "sum": _sum,
    "avg": _avg,
    "max": _max,
    "min": _min,
    "count": lambda values: float(len(values)),
    "count_values": lambda values: float(len(values)),
    "group": lambda values: 1.0,
    "stdvar": _variance,
    "stddev": lambda values: math.sqrt(_variance(values)),
    "quantile": lambda values: math.nan,  # computed with its parameter in aggregate()
}
