"""A PromQL subset: parsed by promql-parser, checked when a rule loads, evaluated here.

Semantics follow the Prometheus 2.x engine (the version `promtool` on Debian 12 runs): 5 m lookback
for instant selectors, range selectors closed on both ends, staleness markers, counter resets and the
extrapolation of rate/increase/delta, vector matching with on/ignoring and group_left/group_right.
Times are integer milliseconds, as in Prometheus, so interval boundaries compare exactly.

Anything outside the subset is rejected by `compile_expr` with the construct and its column, so a
rule file that loads cannot fail at 3 a.m. for want of a feature.
"""

from __future__ import annotations

import itertools
import math
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

import promql_parser as pp

from gpumon.model import STALE_NAN
from gpumon.regex import Regex, RegexError, anchored, expand

LOOKBACK_MS = 5 * 60 * 1000
MAX_DEPTH = 128  # nesting levels of an expression: the evaluator recurses (Python's stack is ~1,000 frames)
MAX_DURATION_MS = (2**63 - 1) // 1_000_000  # Go's time.Duration, as Prometheus's ParseDuration checks
_STALE_BITS = struct.pack("<d", STALE_NAN)
NAME = "__name__"

Labels = tuple[tuple[str, str], ...]  # sorted by name; includes __name__ when the series has one


_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000,
            "y": 31_536_000_000}


def parse_prom_duration(text: str) -> int:
    """Prometheus duration (`1h30m`, `0s`, `5m`) in milliseconds; ValueError when malformed."""
    text = str(text).strip()
    if text == "0":
        return 0
    if not text or _DURATION.sub("", text) != "":
        raise ValueError(f"not a valid duration string: {text!r}")
    ms = sum(int(n) * _UNIT_MS[u] for n, u in _DURATION.findall(text))
    if ms > MAX_DURATION_MS:
        raise ValueError("duration out of range")
    return ms


def format_duration(ms: int) -> str:
    """Milliseconds as Prometheus prints a duration (`1h30m`, `0s`)."""
    if ms == 0:
        return "0s"
    parts = []
    for unit in ("y", "w", "d", "h", "m", "s", "ms"):
        n, ms = divmod(ms, _UNIT_MS[unit])
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


def is_stale(v: float) -> bool:
    return v != v and struct.pack("<d", v) == _STALE_BITS


class PromQLError(Exception):
    """An expression outside the supported subset, or malformed; raised when the rule loads."""


class EvalError(Exception):
    """An evaluation that Prometheus would also fail (e.g. many-to-many matching)."""


@dataclass(slots=True)
class Sample:
    labels: Labels
    value: float
    t: int = 0  # sample timestamp (ms); what timestamp() returns for a plain selector


@dataclass(slots=True)
class Series:
    """A series in a range: times (ms) and values side by side, as storages slice them cheaply."""

    labels: Labels
    times: Sequence[float] = field(default_factory=list)
    values: Sequence[float] = field(default_factory=list)
    # The storage knows there is no NaN (so no staleness marker) among the values: the evaluator
    # need not look for one, and max/min_over_time are the builtins.
    nan_free: bool = False


Vector = list[Sample]
Matrix = list[Series]
Value = Vector | Matrix | float | str


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


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str  # "=", "!=", "=~", "!~"
    value: str
    regex: Regex | None = None  # anchored, for =~ and !~

    def matches(self, labels: dict[str, str]) -> bool:
        v = labels.get(self.name, "")
        if self.op == "=":
            return v == self.value
        if self.op == "!=":
            return v != self.value
        assert self.regex is not None
        return self.regex.matches(v) == (self.op == "=~")


class Storage(Protocol):
    """Where selectors read from: series whose labels satisfy all matchers, points in [start, end]."""

    def select(self, matchers: Sequence[Matcher], start: int, end: int) -> Iterable[Series]: ...


# --- the subset ------------------------------------------------------------------------------------

RANGE_FUNCTIONS = {"rate", "irate", "increase", "delta", "idelta", "changes", "resets", "avg_over_time",
                   "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "last_over_time",
                   "quantile_over_time", "absent_over_time"}
VECTOR_FUNCTIONS = {"absent", "abs", "clamp", "clamp_min", "clamp_max", "timestamp", "label_replace", "scalar"}
SCALAR_FUNCTIONS = {"time", "vector"}
FUNCTIONS = RANGE_FUNCTIONS | VECTOR_FUNCTIONS | SCALAR_FUNCTIONS
AGGREGATIONS = {"sum", "avg", "min", "max", "count", "topk", "bottomk"}
ARITHMETIC = {"+", "-", "*", "/", "%", "^"}
COMPARISON = {"==", "!=", ">", "<", ">=", "<="}
SET_OPS = {"and", "or", "unless"}
_MATCH_OPS = {"MatchOp.Equal": "=", "MatchOp.NotEqual": "!=", "MatchOp.Re": "=~", "MatchOp.NotRe": "!~"}
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def compile_expr(text: str) -> Any:
    """Parse and check an expression; raises PromQLError naming the construct and its column."""
    try:
        expr = pp.parse(text)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise PromQLError(f"cannot parse expression: {exc}") from None
    if _depth(expr) > MAX_DEPTH:
        raise PromQLError(f"the expression nests more than {MAX_DEPTH} levels deep, which gpumon does not "
                          "evaluate (Prometheus has no such limit)")
    _check(expr, text)
    return expr


def _children(e: Any) -> list[Any]:
    if isinstance(e, pp.BinaryExpr):
        return [e.lhs, e.rhs]
    if isinstance(e, pp.Call):
        return list(e.args)
    if isinstance(e, pp.AggregateExpr):
        return [e.expr] if e.param is None else [e.expr, e.param]
    if isinstance(e, pp.MatrixSelector):
        return [e.vector_selector]
    if isinstance(e, (pp.ParenExpr, pp.UnaryExpr, pp.SubqueryExpr)):
        return [e.expr]
    return []


def _depth(expr: Any) -> int:
    """How deep the tree goes, found without recursion (the checks and the evaluator recurse)."""
    deepest, stack = 0, [(expr, 1)]
    while stack:
        e, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth <= MAX_DEPTH:  # deeper is refused anyway: no need to walk a 5,000-level tree
            stack.extend((child, depth + 1) for child in _children(e))
    return deepest


def _where(text: str, token: str) -> str:
    i = text.find(token)
    return f" at column {i + 1}" if i >= 0 else ""


def _check(e: Any, text: str) -> None:
    if isinstance(e, pp.SubqueryExpr):
        raise PromQLError(f"subqueries are not supported{_where(text, ':')}")
    if isinstance(e, pp.VectorSelector):
        if e.at is not None:
            raise PromQLError(f"the @ modifier is not supported{_where(text, '@')}")
        if e.matchers.or_matchers:
            raise PromQLError(f"'or' inside a selector is not supported{_where(text, ' or ')}")
        _matchers(e)  # compiles regexes: a bad one is a load error
    elif isinstance(e, pp.MatrixSelector):
        _check(e.vector_selector, text)
    elif isinstance(e, pp.Call):
        name = e.func.name
        if name not in FUNCTIONS:
            raise PromQLError(f"function {name}() is not supported{_where(text, name + '(')}; supported: "
                              + ", ".join(sorted(FUNCTIONS)))
        if name == "label_replace":
            args = e.args
            if not all(isinstance(a, pp.StringLiteral) for a in args[1:]):
                raise PromQLError("label_replace() takes string literals after the vector")
            if not _LABEL_NAME.fullmatch(args[1].val):
                raise PromQLError(f"label_replace(): invalid destination label name {args[1].val!r}")
            _anchored(args[4].val, "label_replace()")
        for a in e.args:
            _check(a, text)
    elif isinstance(e, pp.AggregateExpr):
        op = str(e.op)
        if op not in AGGREGATIONS:
            raise PromQLError(f"aggregation {op} is not supported{_where(text, op)}; supported: "
                              + ", ".join(sorted(AGGREGATIONS)))
        _check(e.expr, text)
        if e.param is not None:
            _check(e.param, text)
    elif isinstance(e, pp.BinaryExpr):
        op = str(e.op)
        if op not in ARITHMETIC | COMPARISON | SET_OPS:
            raise PromQLError(f"operator {op} is not supported{_where(text, op)}")
        if e.modifier is not None and getattr(e.modifier, "fill_values", None) and _has_fill(e.modifier):
            raise PromQLError("fill() modifiers are not supported")
        _check(e.lhs, text)
        _check(e.rhs, text)
    elif isinstance(e, (pp.ParenExpr, pp.UnaryExpr)):
        _check(e.expr, text)
    elif not isinstance(e, (pp.NumberLiteral, pp.StringLiteral)):
        raise PromQLError(f"{type(e).__name__} is not supported")


def _has_fill(modifier: Any) -> bool:
    fv = modifier.fill_values
    return any(getattr(fv, k, None) is not None for k in ("lhs", "rhs"))


def _anchored(pattern: str, where: str) -> Regex:
    try:
        return anchored(pattern)
    except RegexError as exc:
        raise PromQLError(f"{where}: invalid regular expression {pattern!r}: {exc}") from None


def _matchers(vs: Any) -> list[Matcher]:
    out = []
    if vs.name:
        out.append(Matcher(NAME, "=", vs.name))
    for m in vs.matchers.matchers:
        op = _MATCH_OPS[str(m.op)]
        regex = _anchored(m.value, f"matcher {m.name}{op}{m.value!r}") if op in ("=~", "!~") else None
        out.append(Matcher(m.name, op, m.value, regex))
    return out


def _ms(d: timedelta | None) -> int:
    return 0 if d is None else round(d.total_seconds() * 1000)


# --- evaluation ------------------------------------------------------------------------------------


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
            cached = self._matcher_cache[id(vs)] = (vs, _matchers(vs))
        return cached[1]

    def _vector_selector(self, vs: Any, t: int, filters: Filters = ()) -> Vector:
        ref = t - _ms(vs.offset)
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
        ref = t - _ms(vs.offset)
        out = []
        for series in self.storage.select(self._selector_matchers(vs), ref - _ms(ms.range), ref):
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
            return _unique([Sample(_drop_name(s.labels), _quantile(q, list(s.values)), t) for s in m])
        # range functions over one matrix argument: they keep the labels, so filters pass through
        ms = args[0]
        matrix = _mat(self._eval(ms, t, filters))
        fn_range = _RANGE[name]
        builtin = _NAN_FREE_BUILTIN.get(name)
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
        regex = _anchored(pattern, "label_replace()")
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
                value = _incremental_mean(values)
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


# --- range functions -------------------------------------------------------------------------------

Floats = Sequence[float]


def _extrapolated(times: Floats, values: Floats, ms: Any, t: int, counter: bool, rate: bool) -> float | None:
    if len(times) < 2:
        return None
    vs = ms.vector_selector
    range_ms = _ms(ms.range)
    range_start = t - range_ms - _ms(vs.offset)
    range_end = t - _ms(vs.offset)
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


def _incremental_mean(values: list[float]) -> float:
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


def _quantile(q: float, values: list[float]) -> float:
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
_NAN_FREE_BUILTIN: dict[str, Callable[[Floats], float]] = {"max_over_time": max, "min_over_time": min}

_RANGE: dict[str, Callable[[Floats, Floats, Any, int], float | None]] = {
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
