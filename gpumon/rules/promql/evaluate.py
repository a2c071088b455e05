"""Evaluation of a compiled expression (ast.py) at one instant, against a Storage: selectors with
offset and @, subqueries, functions, aggregations and binary operators, as the Prometheus 2.42 engine
evaluates an instant query (a rule evaluation, or a promtool unit test's promql_expr_test)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from gpumon.rules.promql import ast
from gpumon.rules.promql.aggregate import aggregate
from gpumon.rules.promql.binary import scalar_binop, set_op, signature, vector_binop, vector_scalar
from gpumon.rules.promql.functions_instant import (
    DATES,
    MATH,
    date_function,
    date_of,
    drop_name,
    histogram_quantile,
    label_join,
    label_replace,
    round_vector,
    sort_vector,
)
from gpumon.rules.promql.functions_range import NAN_FREE_BUILTINS, RANGE, Window
from gpumon.rules.promql.gomath import go_div, go_max, go_min
from gpumon.rules.promql.parse import FUNCTION_SIGNATURES, anchored_regex
from gpumon.rules.promql.values import (
    LOOKBACK_MS,
    NAME,
    EvalError,
    Labels,
    Matrix,
    Sample,
    Series,
    Storage,
    Value,
    Vector,
    is_stale,
)

DEFAULT_SUBQUERY_STEP_MS = 60_000  # Prometheus's default global evaluation_interval


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
        return (signature(labels, self.on, self.names) in self.sigs) == self.keep_matching


Filters = tuple[_SeriesFilter, ...]  # all must admit a series; () evaluates everything

# Functions that keep every label but the metric name, so an enclosing filter may reach their argument.
_LABEL_KEEPING = frozenset(MATH) | frozenset(DATES) | {"clamp", "clamp_min", "clamp_max", "round", "sort", "sort_desc"}
_NO_FLOAT_RESULT = frozenset({"histogram_count", "histogram_sum", "histogram_fraction"})


def _admitted(labels: Labels, filters: Filters) -> bool:
    return all(f.admits(labels) for f in filters)


class Evaluator:
    """Evaluates compiled expressions at one instant against a Storage. `subquery_step_ms` is the step
    of a subquery that names none (`x[1h:]`): Prometheus's global evaluation interval, or promtool's
    test-file evaluation_interval."""

    def __init__(self, storage: Storage, lookback_ms: int = LOOKBACK_MS,
                 subquery_step_ms: int = DEFAULT_SUBQUERY_STEP_MS, budget: Callable[[int], None] | None = None
                 ) -> None:
        self.storage = storage
        # Called with the points each subquery step makes (the query API's limits: a subquery of a
        # constant, `vector(1)[1d:1ms]`, never reaches a selector); it raises to stop the evaluation.
        self.budget = budget
        self.lookback = lookback_ms
        self.subquery_step_ms = subquery_step_ms or DEFAULT_SUBQUERY_STEP_MS
        self._edges = (0, 0)  # what @ start() and @ end() mean: the query's first and last instant

    def instant(self, expr: ast.Node, t: int, edges: tuple[int, int] | None = None) -> Value:
        """The value at `t`; `edges` are a range query's start and end (default: t, t)."""
        self._edges = edges or (t, t)
        return self._eval(expr, t)

    # selectors

    def _ref(self, at: ast.At | None, offset_ms: int, t: int) -> int:
        if at is None:
            return t - offset_ms
        if at.ms is None:
            return self._edges[0 if at.edge == "start" else 1] - offset_ms
        return at.ms - offset_ms

    def _vector_selector(self, vs: ast.VectorSelector, t: int, filters: Filters = ()) -> Vector:
        ref = self._ref(vs.at, vs.offset_ms, t)
        out = []
        # An instant selector needs only each series' last point; storages that can say so cheaply do.
        select = getattr(self.storage, "select_last", self.storage.select)
        for series in select(vs.matchers, ref - self.lookback, ref):
            if not series.times or (filters and not _admitted(series.labels, filters)):
                continue
            v = series.values[-1]
            if is_stale(v):
                continue
            out.append(Sample(series.labels, v, int(series.times[-1])))
        out.sort(key=lambda s: s.labels)
        return out

    def _matrix_selector(self, ms: ast.MatrixSelector, t: int, filters: Filters = ()) -> Matrix:
        vs = ms.selector
        ref = self._ref(vs.at, vs.offset_ms, t)
        out = []
        for series in self.storage.select(vs.matchers, ref - ms.range_ms, ref):
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

    def _subquery(self, sq: ast.Subquery, t: int) -> Matrix:
        """The inner expression at every step in the range, the steps aligned to multiples of the step."""
        end = self._ref(sq.at, sq.offset_ms, t)
        step = sq.step_ms or self.subquery_step_ms
        start = end - sq.range_ms
        first = go_div(start, step) * step
        if first < start:
            first += step
        found: dict[Labels, tuple[list[float], list[float]]] = {}
        for ts in range(first, end + 1, step):
            inner = _vec(self._eval(sq.expr, ts))
            if self.budget is not None:
                self.budget(len(inner))
            for s in inner:
                times, values = found.setdefault(s.labels, ([], []))
                times.append(ts)
                values.append(s.value)
        return [Series(labels, times, values) for labels, (times, values) in sorted(found.items())]

    # dispatch

    def _eval(self, e: ast.Node, t: int, filters: Filters = ()) -> Value:
        """The value of `e` at `t`. `filters` may leave out series an enclosing set operator drops; they
        pass only through nodes that keep every label but the metric name, so signatures still match."""
        if isinstance(e, ast.VectorSelector):
            return self._vector_selector(e, t, filters)
        if isinstance(e, ast.Call):
            return self._call(e, t, filters)
        if isinstance(e, ast.Binary):
            return self._binary(e, t, filters)
        if isinstance(e, ast.NumberLiteral):
            return e.value
        if isinstance(e, ast.Aggregate):
            vec = _vec(self._eval(e.expr, t))
            param = None if e.param is None else self._eval(e.param, t)
            if isinstance(param, list):
                raise EvalError("expected a scalar parameter")
            return aggregate(e.op, vec, param, e.grouping, e.without, t)
        if isinstance(e, ast.Negation):
            v = self._eval(e.expr, t)
            if isinstance(v, float):
                return -v
            return _unique([Sample(drop_name(s.labels), -s.value, s.t) for s in _vec(v)])
        if isinstance(e, ast.MatrixSelector):
            return self._matrix_selector(e, t, filters)
        if isinstance(e, ast.Subquery):
            return self._subquery(e, t)
        if isinstance(e, ast.StringLiteral):
            return e.value
        raise EvalError(f"cannot evaluate {type(e).__name__}")

    # functions

    def _call(self, e: ast.Call, t: int, filters: Filters = ()) -> Value:
        name, args = e.name, e.args
        if name in RANGE or name == "absent_over_time":
            return self._range_call(e, t, filters)
        if name == "time":
            return t / 1000
        if name == "pi":
            return math.pi
        if name == "vector":
            return [Sample((), _num(self._eval(args[0], t)), t)]
        if name == "scalar":
            v = _vec(self._eval(args[0], t))
            return v[0].value if len(v) == 1 else math.nan
        if name == "timestamp":
            return self._timestamp(args[0], t)
        if name == "absent":
            if _vec(self._eval(args[0], t)):
                return []
            arg = args[0]
            return [Sample(arg.absent_labels if isinstance(arg, ast.VectorSelector) else (), 1.0, t)]
        if name in DATES and not args:
            return [Sample((), date_of(name, go_div(t, 1000)), t)]
        if name == "histogram_quantile":
            q = _num(self._eval(args[0], t))
            return _unique(histogram_quantile(q, _vec(self._eval(args[1], t)), t))
        if name in _NO_FLOAT_RESULT:  # native histograms only: a float sample gives nothing
            for a in args:
                self._eval(a, t)
            return []
        vec = _vec(self._eval(args[0], t, filters if name in _LABEL_KEEPING else ()))
        rest = [self._eval(a, t) for a in args[1:]]
        fn = MATH.get(name)
        if fn is not None:
            return _unique([Sample(drop_name(s.labels), fn(s.value), t) for s in vec])
        if name in DATES:
            return _unique(date_function(name, vec, t))
        if name in ("clamp", "clamp_min", "clamp_max"):
            nums = [_num(v) for v in rest]
            if name == "clamp":
                if nums[1] < nums[0]:
                    return []
                lo, hi = nums
                return _unique([Sample(drop_name(s.labels), go_max(lo, go_min(hi, s.value)), t) for s in vec])
            clamp = go_max if name == "clamp_min" else go_min
            return _unique([Sample(drop_name(s.labels), clamp(nums[0], s.value), t) for s in vec])
        if name == "round":
            return _unique(round_vector(vec, [_num(v) for v in rest], t))
        if name in ("sort", "sort_desc"):
            return _unique(sort_vector(vec, descending=name == "sort_desc"))
        strings = [str(v) for v in rest]
        if name == "label_replace":
            return _unique(label_replace(vec, strings, anchored_regex(strings[3], "label_replace()")))
        if name == "label_join":
            return _unique(label_join(vec, strings, t))
        raise EvalError(f"function {name}() cannot be evaluated")

    def _timestamp(self, arg: ast.Node, t: int) -> Vector:
        if isinstance(arg, ast.VectorSelector):  # a selector's own sample times
            vec = self._vector_selector(arg, t)
            return _unique([Sample(drop_name(s.labels), s.t / 1000, t) for s in vec])
        return _unique([Sample(drop_name(s.labels), t / 1000, t) for s in _vec(self._eval(arg, t))])

    def _range_call(self, e: ast.Call, t: int, filters: Filters) -> Vector:
        name = e.name
        index = FUNCTION_SIGNATURES[name][0].index(ast.MATRIX)
        params = tuple(_num(self._eval(a, t)) for i, a in enumerate(e.args) if i != index)
        node = e.args[index]
        if isinstance(node, ast.MatrixSelector):
            matrix = self._matrix_selector(node, t, filters)
            window = Window(self._ref(node.selector.at, node.selector.offset_ms, t), node.range_ms, t, params)
        elif isinstance(node, ast.Subquery):
            matrix = self._subquery(node, t)
            window = Window(self._ref(node.at, node.offset_ms, t), node.range_ms, t, params)
        else:
            raise EvalError(f"{name}() expects a range vector")
        if name == "absent_over_time":
            if matrix:
                return []
            labels = node.selector.absent_labels if isinstance(node, ast.MatrixSelector) else ()
            return [Sample(labels, 1.0, t)]
        fn = RANGE[name]
        builtin = NAN_FREE_BUILTINS.get(name)
        keep_name = name == "last_over_time"
        out: Vector = []
        for s in matrix:
            result = builtin(s.values) if builtin is not None and s.nan_free else fn(s.times, s.values, window)
            if result is not None:
                out.append(Sample(s.labels if keep_name else drop_name(s.labels), result, t))
        return _unique(out)

    # binary operators

    def _binary(self, e: ast.Binary, t: int, filters: Filters = ()) -> Value:
        op, m = e.op, e.matching
        if op in ("and", "unless"):  # both sides are vectors: the parser allows nothing else
            rhs = _vec(self._eval(e.rhs, t))
            if m.on and NAME in m.labels:  # a signature with the name: it would change under the filters
                lhs = self._eval(e.lhs, t)
            else:
                sigs = frozenset(signature(s.labels, m.on, m.labels) for s in rhs)
                mine = _SeriesFilter(m.on, m.labels, sigs, keep_matching=(op == "and"))
                lhs = self._eval(e.lhs, t, (*filters, mine))
            return set_op(op, _vec(lhs), rhs, m.on, m.labels)
        rhs_v = self._eval(e.rhs, t)
        # vector <op> scalar keeps each series' labels (but the name): the filters may reach the vector
        lhs_v = self._eval(e.lhs, t, filters if isinstance(rhs_v, float) else ())
        if isinstance(lhs_v, float) and isinstance(rhs_v, float):
            return scalar_binop(op, lhs_v, rhs_v)
        if isinstance(lhs_v, float):
            return _unique(vector_scalar(op, _vec(rhs_v), lhs_v, True, e.return_bool, t))
        if isinstance(rhs_v, float):
            return _unique(vector_scalar(op, _vec(lhs_v), rhs_v, False, e.return_bool, t))
        if op == "or":
            return set_op(op, _vec(lhs_v), _vec(rhs_v), m.on, m.labels)
        return _unique(vector_binop(op, _vec(lhs_v), _vec(rhs_v), m, e.return_bool, t))


# --- helpers ---------------------------------------------------------------------------------------


def _num(v: Value) -> float:
    if isinstance(v, float):
        return v
    raise EvalError(f"expected a scalar, got {type(v).__name__}")


def _vec(v: Value) -> Vector:
    if isinstance(v, list) and (not v or isinstance(v[0], Sample)):
        return v  # type: ignore[return-value]
    raise EvalError("expected an instant vector")


def _unique(vec: Vector) -> Vector:
    """Prometheus checks every function's and operator's result (rangeEval): no two samples alike."""
    if len(vec) > 1:
        seen: set[Labels] = set()
        for s in vec:
            if s.labels in seen:
                raise EvalError("vector cannot contain metrics with the same labelset")
            seen.add(s.labels)
    return vec
