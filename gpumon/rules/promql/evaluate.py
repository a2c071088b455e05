"""Evaluation of a checked expression at one instant, against a Storage: selectors, functions,
aggregations and binary operators with vector matching, as the Prometheus 2.x engine does them."""

from __future__ import annotations

import math
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

import promql_parser as pp

from gpumon.regex import expand
from gpumon.rules.promql.functions import NAN_FREE_BUILTINS, RANGE, incremental_mean, quantile
from gpumon.rules.promql.parse import ARITHMETIC, COMPARISON, SET_OPS, anchored_regex, selector_matchers
from gpumon.rules.promql.values import (
    LOOKBACK_MS,
    NAME,
    EvalError,
    Labels,
    Matcher,
    Matrix,
    Sample,
    Series,
    Storage,
    Value,
    Vector,
    duration_ms,
    is_stale,
)


@dataclass(frozen=True, slots=True)
class _SeriesFilter:
    """Series an enclosing `and`/`unless` would drop anyway, so need not be computed at all.

    `A unless on(uuid) B` keeps only the A series whose signature B lacks: evaluating B first and
    skipping the other A series before their range functions run gives the same result for less work
    (the bundled non-GPM utilisation rule averages nothing on a GPU with GPM).
    """

    on: bool
    names: frozenset[str]
    sigs: frozenset[Labels]
    keep_matching: bool  # `and` keeps the series B matches; `unless` the ones it does not

    def admits(self, labels: Labels) -> bool:
        return (_signature(labels, self.on, self.names) in self.sigs) == self.keep_matching


Filters = tuple[_SeriesFilter, ...]  # all must admit a series; () evaluates everything


def _admitted(labels: Labels, filters: Filters) -> bool:
    return all(f.admits(labels) for f in filters)


class Evaluator:
    """Evaluates checked expressions at one instant against a Storage."""

    def __init__(self, storage: Storage, lookback_ms: int = LOOKBACK_MS) -> None:
        self.storage = storage
        self.lookback = lookback_ms
        # id(selector) -> (selector, its matchers). The entry keeps the selector alive: once an object
        # is freed its id can be reused by another, which would then read this selector's series.
        self._matcher_cache: dict[int, tuple[Any, list[Matcher]]] = {}

    def instant(self, expr: Any, t: int) -> Value:
        return self._eval(expr, t)

    # selectors

    def _selector_matchers(self, vs: Any) -> list[Matcher]:
        cached = self._matcher_cache.get(id(vs))
        if cached is None:
            cached = self._matcher_cache[id(vs)] = (vs, selector_matchers(vs))
        return cached[1]

    def _vector_selector(self, vs: Any, t: int, filters: Filters = ()) -> Vector:
        ref = t - duration_ms(vs.offset)
        out = []
        # An instant selector needs only each series' last point; storages that can say so cheaply do.
        select = getattr(self.storage, "select_last", self.storage.select)
        for series in select(self._selector_matchers(vs), ref - self.lookback, ref):
            if not series.times or (filters and not _admitted(series.labels, filters)):
                continue
            v = series.values[-1]
            if is_stale(v):
                continue
            out.append(Sample(series.labels, v, int(series.times[-1])))
        return _sorted(out)

    def _matrix_selector(self, ms: Any, t: int, filters: Filters = ()) -> Matrix:
        vs = ms.vector_selector
        ref = t - duration_ms(vs.offset)
        out = []
        for series in self.storage.select(self._selector_matchers(vs), ref - duration_ms(ms.range), ref):
            if filters and not _admitted(series.labels, filters):
                continue
            times, values = series.times, series.values
            if not series.nan_free and math.isnan(sum(values)):  # only then can a staleness marker be there
                keep = [i for i, v in enumerate(values) if not is_stale(v)]
                times, values = [times[i] for i in keep], [values[i] for i in keep]
            if times:
                out.append(Series(series.labels, times, values, series.nan_free))
        out.sort(key=lambda s: s.labels)
        return out

    # dispatch

    def _eval(self, e: Any, t: int, filters: Filters = ()) -> Value:
        """The value of `e` at `t`. `filters` may leave out series an enclosing set operator drops; they
        pass only through nodes that keep every label but the metric name, so signatures still match."""
        if isinstance(e, pp.NumberLiteral):
            return float(e.val)
        if isinstance(e, pp.StringLiteral):
            return str(e.val)
        if isinstance(e, pp.ParenExpr):
            return self._eval(e.expr, t, filters)
        if isinstance(e, pp.VectorSelector):
            return self._vector_selector(e, t, filters)
        if isinstance(e, pp.MatrixSelector):
            return self._matrix_selector(e, t, filters)
        if isinstance(e, pp.UnaryExpr):
            v = self._eval(e.expr, t)
            if isinstance(v, float):
                return -v
            return [Sample(_drop_name(s.labels), -s.value, s.t) for s in _vec(v)]
        if isinstance(e, pp.Call):
            return self._call(e, t, filters)
        if isinstance(e, pp.AggregateExpr):
            return self._aggregate(e, t)
        if isinstance(e, pp.BinaryExpr):
            return self._binary(e, t, filters)
        raise EvalError(f"cannot evaluate {type(e).__name__}")

    # functions

    def _call(self, e: Any, t: int, filters: Filters = ()) -> Value:
        name = e.func.name
        args = e.args
        if name == "time":
            return t / 1000
        if name == "vector":
            return [Sample((), _num(self._eval(args[0], t)), t)]
        if name == "scalar":
            v = _vec(self._eval(args[0], t))
            return v[0].value if len(v) == 1 else math.nan
        if name == "timestamp":
            arg = args[0]
            while isinstance(arg, pp.ParenExpr):
                arg = arg.expr
            vec = _vec(self._eval(arg, t))
            plain = isinstance(arg, pp.VectorSelector)
            return [Sample(_drop_name(s.labels), (s.t if plain else t) / 1000, t) for s in vec]
        if name == "absent":
            if _vec(self._eval(args[0], t)):
                return []
            return [Sample(_absent_labels(args[0]), 1.0, t)]
        if name == "absent_over_time":
            if self._eval(args[0], t):
                return []
            return [Sample(_absent_labels(args[0]), 1.0, t)]
        if name in ("abs", "clamp", "clamp_min", "clamp_max"):
            vec = _vec(self._eval(args[0], t))
            nums = [_num(self._eval(a, t)) for a in args[1:]]
            if name == "abs":
                fn: Callable[[float], float] = abs
            elif name == "clamp_min":
                fn = lambda x: x if math.isnan(x) else max(x, nums[0])  # noqa: E731
            elif name == "clamp_max":
                fn = lambda x: x if math.isnan(x) else min(x, nums[0])  # noqa: E731
            else:
                lo, hi = nums
                if hi < lo:
                    return []
                fn = lambda x: x if math.isnan(x) else max(lo, min(hi, x))  # noqa: E731
            return _unique([Sample(_drop_name(s.labels), fn(s.value), t) for s in vec])
        if name == "label_replace":
            return self._label_replace(e, t)
        if name == "quantile_over_time":
            q = _num(self._eval(args[0], t))
            m = _mat(self._eval(args[1], t))
            return _unique([Sample(_drop_name(s.labels), quantile(q, list(s.values)), t) for s in m])
        # range functions over one matrix argument: they keep the labels, so filters pass through
        ms = args[0]
        matrix = _mat(self._eval(ms, t, filters))
        fn_range = RANGE[name]
        builtin = NAN_FREE_BUILTINS.get(name)
        out: Vector = []
        for s in matrix:
            result = builtin(s.values) if builtin is not None and s.nan_free else fn_range(s.times, s.values, ms, t)
            if result is not None:
                labels = s.labels if name == "last_over_time" else _drop_name(s.labels)
                out.append(Sample(labels, result, t))
        return _unique(out)

    def _label_replace(self, e: Any, t: int) -> Vector:
        vec = _vec(self._eval(e.args[0], t))
        dst, repl, src, pattern = (a.val for a in e.args[1:])
        regex = anchored_regex(pattern, "label_replace()")
        out: Vector = []
        for s in vec:
            labels = dict(s.labels)
            m = regex.search(labels.get(src, ""))
            if m is not None:
                value = expand(repl, m, regex)
                if value:
                    labels[dst] = value
                else:
                    labels.pop(dst, None)
            out.append(Sample(tuple(sorted(labels.items())), s.value, s.t))
        return _unique(out)

    # aggregation

    def _aggregate(self, e: Any, t: int) -> Vector:
        op = str(e.op)
        vec = _vec(self._eval(e.expr, t))
        by: set[str] | None = set()  # no modifier: one group over everything
        without: set[str] | None = None
        if e.modifier is not None:
            if "Without" in str(e.modifier.type):
                by, without = None, set(e.modifier.labels)
            else:
                by = set(e.modifier.labels)
        def key_of(labels: Labels) -> Labels:
            if by is not None:
                return tuple((k, v) for k, v in labels if k in by)
            drop = (without or set()) | {NAME}
            return tuple((k, v) for k, v in labels if k not in drop)

        groups: dict[Labels, list[Sample]] = {}
        for s in vec:
            groups.setdefault(key_of(s.labels), []).append(s)
        if op in ("topk", "bottomk"):
            k = _num(self._eval(e.param, t))
            if math.isnan(k):
                raise EvalError(f"{op}: parameter is NaN")
            n = int(k)
            if n < 1:
                return []
            out: Vector = []
            for members in groups.values():
                def rank(s: Sample) -> float:
                    v = s.value
                    if math.isnan(v):
                        return -math.inf if op == "topk" else math.inf
                    return v
                ordered = sorted(members, key=rank, reverse=(op == "topk"))
                out.extend(Sample(s.labels, s.value, t) for s in ordered[:n])
            return out
        result: Vector = []
        for key, members in groups.items():
            values = [s.value for s in members]
            if op == "sum":
                value = 0.0
                for v in values:
                    value += v
            elif op == "count":
                value = float(len(values))
            elif op == "avg":
                value = incremental_mean(values)
            elif op == "max":
                value = values[0]
                for v in values[1:]:
                    if value < v or math.isnan(value):
                        value = v
            else:  # min
                value = values[0]
                for v in values[1:]:
                    if value > v or math.isnan(value):
                        value = v
            result.append(Sample(key, value, t))
        return result

    # binary operators

    def _binary(self, e: Any, t: int, filters: Filters = ()) -> Value:
        op = str(e.op)
        mod = e.modifier
        return_bool = bool(mod is not None and mod.return_bool)
        if op in ("and", "unless"):  # both sides are vectors: the parser allows nothing else
            on, labels, _, _ = _matching(mod)
            rhs = self._eval(e.rhs, t)
            sigs = frozenset(_signature(s.labels, on, labels) for s in _vec(rhs))
            mine = _SeriesFilter(on, frozenset(labels), sigs, keep_matching=(op == "and"))
            lhs = self._eval(e.lhs, t, (*filters, mine))
            return _set_op(op, _vec(lhs), _vec(rhs), on, labels)
        rhs = self._eval(e.rhs, t)
        # vector <op> scalar keeps each series' labels (but the name): the filters may reach the vector
        lhs = self._eval(e.lhs, t, filters if isinstance(rhs, float) else ())
        if isinstance(lhs, float) and isinstance(rhs, float):
            value, keep = _elem(op, lhs, rhs)
            if op in COMPARISON:
                return 1.0 if keep else 0.0  # the parser requires bool between scalars
            return value
        if isinstance(lhs, float) or isinstance(rhs, float):
            return self._vector_scalar(op, lhs, rhs, return_bool, t)
        lv, rv = _vec(lhs), _vec(rhs)
        on, labels, card, include = _matching(mod)
        if op in SET_OPS:
            return _set_op(op, lv, rv, on, labels)
        return _vector_binop(op, lv, rv, on, labels, card, include, return_bool, t)

    def _vector_scalar(self, op: str, lhs: Value, rhs: Value, return_bool: bool, t: int) -> Vector:
        swap = isinstance(lhs, float)
        scalar = float(lhs if swap else rhs)  # type: ignore[arg-type]
        vec = _vec(rhs if swap else lhs)
        drop = op in ARITHMETIC or return_bool
        out = []
        for s in vec:
            a, b = (scalar, s.value) if swap else (s.value, scalar)
            value, keep = _elem(op, a, b)
            if op in COMPARISON and swap:
                value = b
            if return_bool:
                value, keep = (1.0 if keep else 0.0), True
            if keep:
                out.append(Sample(_drop_name(s.labels) if drop else s.labels, value, t))
        return _unique(out) if drop else out


def _matching(mod: Any) -> tuple[bool, set[str], str, list[str]]:
    """(on?, labels, cardinality, group labels) of a binary expression's modifier."""
    if mod is None:
        return False, set(), "one-to-one", []
    on = False
    labels: set[str] = set()
    if mod.matching is not None:
        on = "Include" in str(mod.matching.type)
        labels = set(mod.matching.labels)
    card = str(mod.card)
    card = {"VectorMatchCardinality.ManyToOne": "many-to-one",
            "VectorMatchCardinality.OneToMany": "one-to-many"}.get(card, "one-to-one")
    include = list(mod.group_labels or []) if card != "one-to-one" else []
    return on, labels, card, include


def _signature(labels: Labels, on: bool, names: AbstractSet[str]) -> Labels:
    if on:
        return tuple((k, v) for k, v in labels if k in names)
    return tuple((k, v) for k, v in labels if k not in names and k != NAME)


def _set_op(op: str, lhs: Vector, rhs: Vector, on: bool, names: set[str]) -> Vector:
    rsigs = {_signature(s.labels, on, names) for s in rhs}
    if op == "and":
        return [s for s in lhs if _signature(s.labels, on, names) in rsigs]
    if op == "unless":
        return [s for s in lhs if _signature(s.labels, on, names) not in rsigs]
    lsigs = {_signature(s.labels, on, names) for s in lhs}
    return lhs + [s for s in rhs if _signature(s.labels, on, names) not in lsigs]


def _vector_binop(op: str, lhs: Vector, rhs: Vector, on: bool, names: set[str], card: str,
                  include: list[str], return_bool: bool, t: int) -> Vector:
    if card == "one-to-many":
        lhs, rhs = rhs, lhs
    right: dict[Labels, Sample] = {}
    for s in rhs:
        sig = _signature(s.labels, on, names)
        if sig in right:
            side = "left" if card == "one-to-many" else "right"
            raise EvalError(f"found duplicate series for the match group {_fmt(sig)} on the {side} hand-side "
                            "of the operation; many-to-many matching not allowed: matching labels must be "
                            "unique on one side")
        right[sig] = s
    matched: set[Labels] = set()
    inserted: set[Labels] = set()
    out = []
    for ls in lhs:
        sig = _signature(ls.labels, on, names)
        rs = right.get(sig)
        if rs is None:
            continue
        if card == "one-to-one":
            if sig in matched:
                raise EvalError("multiple matches for labels: many-to-one matching must be explicit "
                                "(group_left/group_right)")
            matched.add(sig)
        a, b = ls.value, rs.value
        if card == "one-to-many":
            a, b = b, a
        value, keep = _elem(op, a, b)
        if return_bool:
            value, keep = (1.0 if keep else 0.0), True
        if not keep:
            continue
        labels = _result_labels(ls.labels, rs.labels, op, return_bool, on, names, card, include)
        if card != "one-to-one":
            if labels in inserted:
                raise EvalError("multiple matches for labels: grouping labels must ensure unique matches")
            inserted.add(labels)
        out.append(Sample(labels, value, t))
    return out if card != "one-to-one" else _unique(out)


def _result_labels(lhs: Labels, rhs: Labels, op: str, return_bool: bool, on: bool, names: set[str],
                   card: str, include: list[str]) -> Labels:
    labels = dict(lhs)
    if op in ARITHMETIC or return_bool:
        labels.pop(NAME, None)
    if card == "one-to-one":
        if on:
            labels = {k: v for k, v in labels.items() if k in names}
        else:
            for n in names:
                labels.pop(n, None)
    r = dict(rhs)
    for n in include:
        if r.get(n):
            labels[n] = r[n]
        else:
            labels.pop(n, None)
    return tuple(sorted(labels.items()))


def _elem(op: str, a: float, b: float) -> tuple[float, bool]:
    """Value and keep-flag of `a op b`, with IEEE results where Python would raise."""
    if op == "+":
        return a + b, True
    if op == "-":
        return a - b, True
    if op == "*":
        return a * b, True
    if op == "/":
        if b == 0:
            if a == 0 or math.isnan(a):
                return math.nan, True
            return math.copysign(math.inf, a) * math.copysign(1.0, b), True
        return a / b, True
    if op == "%":
        if b == 0 or math.isinf(a) or math.isnan(a) or math.isnan(b):
            return math.nan, True
        return math.fmod(a, b), True
    if op == "^":
        try:
            return math.pow(a, b), True
        except OverflowError:
            return math.inf, True
        except ValueError:
            return math.nan, True
    keep = {"==": a == b, "!=": a != b, ">": a > b, "<": a < b, ">=": a >= b, "<=": a <= b}[op]
    return a, keep


# --- helpers ---------------------------------------------------------------------------------------


def _num(v: Value) -> float:
    if isinstance(v, float):
        return v
    raise EvalError(f"expected a scalar, got {type(v).__name__}")


def _vec(v: Value) -> Vector:
    if isinstance(v, list) and (not v or isinstance(v[0], Sample)):
        return v  # type: ignore[return-value]
    raise EvalError("expected an instant vector")


def _mat(v: Value) -> Matrix:
    if isinstance(v, list) and (not v or isinstance(v[0], Series)):
        return v  # type: ignore[return-value]
    raise EvalError("expected a range vector")


def _drop_name(labels: Labels) -> Labels:
    return tuple(p for p in labels if p[0] != NAME)


def _sorted(vec: Vector) -> Vector:
    vec.sort(key=lambda s: s.labels)
    return vec


def _unique(vec: Vector) -> Vector:
    seen: set[Labels] = set()
    for s in vec:
        if s.labels in seen:
            raise EvalError("vector cannot contain metrics with the same labelset")
        seen.add(s.labels)
    return vec


def _absent_labels(arg: Any) -> Labels:
    """absent()'s output labels: the selector's equality matchers, minus labels matched more than once."""
    if isinstance(arg, pp.MatrixSelector):
        arg = arg.vector_selector
    if not isinstance(arg, pp.VectorSelector):
        return ()
    labels: dict[str, str] = {}
    dropped: set[str] = set()
    for m in arg.matchers.matchers:
        if m.name == NAME:
            continue
        if str(m.op) == "MatchOp.Equal" and m.name not in labels:
            labels[m.name] = m.value
        else:
            dropped.add(m.name)
    return tuple(sorted((k, v) for k, v in labels.items() if k not in dropped and v))


def _fmt(labels: Labels) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in labels) + "}"
