"""Prometheus 2.42's PromQL, parsed by promql-parser and checked and converted (ast.py) when a rule file
loads, so that an expression Prometheus 2.42 would refuse is refused then, naming the construct.

promql-parser follows Prometheus 3: it knows functions, aggregations and syntax 2.42 does not (they
are refused here) and no longer knows `holt_winters` (registered here under 2.42's signature)."""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable
from typing import Any, TypeVar

import promql_parser as pp

from gpumon.regex import Regex, RegexError, anchored
from gpumon.rules.promql import ast
from gpumon.rules.promql.values import MAX_DEPTH, NAME, Matcher, PromQLError, duration_ms

# Prometheus 2.42's functions (promql/parser/functions.go at v2.42.0): name -> (argument types, how
# many of them may be left out (-1: the last repeats), return type).
_V, _S, _M, _STR = ast.VECTOR, ast.SCALAR, ast.MATRIX, ast.STRING
FUNCTION_SIGNATURES: dict[str, tuple[tuple[str, ...], int, str]] = {
    **{name: ((_V,), 0, _V) for name in (
        "abs", "absent", "acos", "acosh", "asin", "asinh", "atan", "atanh", "ceil", "cos", "cosh", "deg", "exp",
        "floor", "histogram_count", "histogram_sum", "ln", "log10", "log2", "rad", "sgn", "sin", "sinh", "sort",
        "sort_desc", "sqrt", "tan", "tanh", "timestamp")},
    **{name: ((_M,), 0, _V) for name in (
        "absent_over_time", "avg_over_time", "changes", "count_over_time", "delta", "deriv", "idelta", "increase",
        "irate", "last_over_time", "max_over_time", "min_over_time", "present_over_time", "rate", "resets",
        "stddev_over_time", "stdvar_over_time", "sum_over_time")},
    **{name: ((_V,), 1, _V) for name in (
        "days_in_month", "day_of_month", "day_of_week", "day_of_year", "hour", "minute", "month", "year")},
    "clamp": ((_V, _S, _S), 0, _V),
    "clamp_max": ((_V, _S), 0, _V),
    "clamp_min": ((_V, _S), 0, _V),
    "histogram_fraction": ((_S, _S, _V), 0, _V),
    "histogram_quantile": ((_S, _V), 0, _V),
    "holt_winters": ((_M, _S, _S), 0, _V),
    "label_join": ((_V, _STR, _STR, _STR), -1, _V),
    "label_replace": ((_V, _STR, _STR, _STR, _STR), 0, _V),
    "pi": ((), 0, _S),
    "predict_linear": ((_M, _S), 0, _V),
    "quantile_over_time": ((_S, _M), 0, _V),
    "round": ((_V, _S), 1, _V),
    "scalar": ((_V,), 0, _S),
    "time": ((), 0, _S),
    "vector": ((_S,), 0, _V),
}
FUNCTIONS = frozenset(FUNCTION_SIGNATURES)
AGGREGATIONS = frozenset({"sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk",
                          "quantile", "count_values"})
ARITHMETIC = frozenset({"+", "-", "*", "/", "%", "^", "atan2"})
COMPARISON = frozenset({"==", "!=", ">", "<", ">=", "<="})
SET_OPS = frozenset({"and", "or", "unless"})
_MATCH_OPS = {"MatchOp.Equal": "=", "MatchOp.NotEqual": "!=", "MatchOp.Re": "=~", "MatchOp.NotRe": "!~"}
_CARD = {"VectorMatchCardinality.ManyToOne": "many-to-one", "VectorMatchCardinality.OneToMany": "one-to-many",
         "VectorMatchCardinality.ManyToMany": "many-to-many"}
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
T = TypeVar("T")


def _register_holt_winters() -> None:
    """promql-parser 0.12 knows Prometheus 3's name, double_exponential_smoothing, only."""
    try:
        pp.parse("holt_winters(x[1m], 0.5, 0.5)")
    except ValueError:
        vt = pp.ValueType
        pp.register_extra_functions([pp.Function("holt_winters", [vt.Matrix, vt.Scalar, vt.Scalar], vt.Vector)])


_register_holt_winters()


def _guarded(read: Callable[[], T], what: str) -> T:
    """A value promql-parser computes on access; its Rust code panics (a BaseException) on some."""
    try:
        return read()
    except (KeyboardInterrupt, SystemExit, PromQLError):
        raise
    except BaseException as exc:
        raise PromQLError(f"{what}: promql-parser cannot represent it ({type(exc).__name__})") from None


def compile_expr(text: str) -> ast.Node:
    """Parse, check and convert an expression; raises PromQLError naming the construct."""
    _refuse_quoted_names(text)
    expr = _guarded(lambda: _parse(text), "cannot parse expression")
    if _depth(expr) > MAX_DEPTH:
        raise PromQLError(f"the expression nests more than {MAX_DEPTH} levels deep, which gpumon does not "
                          "evaluate (Prometheus has no such limit)")
    return _Converter(text).convert(expr)


def _parse(text: str) -> Any:
    try:
        return pp.parse(text)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise PromQLError(f"cannot parse expression: {exc}") from None


def _refuse_quoted_names(text: str) -> None:
    """`{"metric"}` and `x{"label"="v"}` are Prometheus 3's UTF-8 names; 2.42 refuses them, promql-parser
    reads them as `__name__="metric"` and `label="v"`."""
    depth, last, i = 0, "", 0
    while i < len(text):
        c = text[i]
        if c in "\"'`":
            if depth and last in "{,":
                raise PromQLError(f"quoted metric or label names are not Prometheus 2.42 syntax at column {i + 1}")
            j = i + 1
            while j < len(text) and text[j] != c:
                j += 2 if text[j] == "\\" and c != "`" else 1
            i, last = j + 1, c
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth = max(0, depth - 1)
        if not c.isspace():
            last = c
        i += 1


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


def anchored_regex(pattern: str, where: str) -> Regex:
    try:
        return anchored(pattern)
    except RegexError as exc:
        raise PromQLError(f"{where}: invalid regular expression {pattern!r}: {exc}") from None


def _at(modifier: Any) -> ast.At | None:
    if modifier is None:
        return None
    kind = str(modifier.type)
    if kind.endswith("Start") or kind.endswith("End"):
        return ast.At(None, "start" if kind.endswith("Start") else "end")
    when = _guarded(lambda: modifier.at, "an @ time before 1970 or after 9999")
    delta = when - _EPOCH
    return ast.At(delta.days * 86_400_000 + delta.seconds * 1000 + round(delta.microseconds / 1000))


class _Converter:
    def __init__(self, text: str) -> None:
        self.text = text

    def convert(self, e: Any) -> ast.Node:
        while isinstance(e, pp.ParenExpr):
            e = e.expr
        if isinstance(e, pp.NumberLiteral):
            return ast.NumberLiteral(float(e.val))
        if isinstance(e, pp.StringLiteral):
            return ast.StringLiteral(str(e.val))
        if isinstance(e, pp.VectorSelector):
            return self.selector(e)
        if isinstance(e, pp.MatrixSelector):
            return ast.MatrixSelector(self.selector(e.vector_selector), duration_ms(e.range))
        if isinstance(e, pp.SubqueryExpr):
            return ast.Subquery(self.convert(e.expr), duration_ms(e.range), duration_ms(e.step),
                                duration_ms(e.offset), _at(e.at))
        if isinstance(e, pp.UnaryExpr):
            inner = self.convert(e.expr)
            return ast.Negation(inner, inner.type)
        if isinstance(e, pp.Call):
            return self.call(e)
        if isinstance(e, pp.AggregateExpr):
            return self.aggregate(e)
        if isinstance(e, pp.BinaryExpr):
            return self.binary(e)
        raise PromQLError(f"{type(e).__name__} is not supported")

    def selector(self, vs: Any) -> ast.VectorSelector:
        if vs.matchers.or_matchers:
            raise PromQLError(f"'or' inside a selector is not Prometheus 2.42 syntax{_where(self.text, ' or ')}")
        matchers: list[Matcher] = []
        if vs.name:
            matchers.append(Matcher(NAME, "=", vs.name))
        absent: dict[str, str] = {}
        has: set[str] = set()
        for m in vs.matchers.matchers:
            op = _MATCH_OPS[str(m.op)]
            if not _LABEL_NAME.fullmatch(m.name):
                raise PromQLError(f"invalid label name {m.name!r} in a selector")
            if m.name == NAME and op == "=" and not _METRIC_NAME.fullmatch(m.value) and not vs.name:
                raise PromQLError(f"invalid metric name {m.value!r}")
            regex = anchored_regex(m.value, f"matcher {m.name}{op}{m.value!r}") if op in ("=~", "!~") else None
            matchers.append(Matcher(m.name, op, m.value, regex))
            if m.name != NAME:  # absent()'s labels: the first equality matcher of a label; any other drops it
                if op == "=" and m.name not in has:
                    absent[m.name] = m.value
                    has.add(m.name)
                else:
                    absent.pop(m.name, None)
        labels = tuple(sorted((k, v) for k, v in absent.items() if v))
        return ast.VectorSelector(vs.name or None, tuple(matchers), labels, duration_ms(vs.offset), _at(vs.at))

    def call(self, e: Any) -> ast.Call:
        name = e.func.name
        if name not in FUNCTION_SIGNATURES:
            raise PromQLError(f"function {name}() is not in Prometheus 2.42's PromQL{_where(self.text, name + '(')}")
        args = tuple(self.convert(a) for a in e.args)
        if name in ("label_replace", "label_join"):
            strings = [a.value for a in args[1:] if isinstance(a, ast.StringLiteral)]
            if len(strings) != len(args) - 1:
                raise PromQLError(f"{name}() takes string literals after the vector")
            if not _LABEL_NAME.fullmatch(strings[0]):
                raise PromQLError(f"invalid destination label name in {name}(): {strings[0]}")
            if name == "label_replace":
                anchored_regex(strings[3], "label_replace()")
            for src in strings[2:] if name == "label_join" else ():
                if not _LABEL_NAME.fullmatch(src):
                    raise PromQLError(f"invalid source label name in label_join(): {src}")
        return ast.Call(name, args, FUNCTION_SIGNATURES[name][2])

    def aggregate(self, e: Any) -> ast.Aggregate:
        op = str(e.op)
        if op not in AGGREGATIONS:
            raise PromQLError(f"aggregation {op} is not in Prometheus 2.42's PromQL{_where(self.text, op)}")
        grouping: tuple[str, ...] = ()
        without = False
        if e.modifier is not None:
            without = "Without" in str(e.modifier.type)
            grouping = tuple(sorted(set(e.modifier.labels)))
        param = self.convert(e.param) if e.param is not None else None
        if op == "count_values" and isinstance(param, ast.StringLiteral) and not _LABEL_NAME.fullmatch(param.value):
            raise PromQLError(f"count_values(): invalid label name {param.value!r}")
        return ast.Aggregate(op, self.convert(e.expr), param, grouping, without)

    def binary(self, e: Any) -> ast.Binary:
        op = str(e.op)
        if op not in ARITHMETIC | COMPARISON | SET_OPS:
            raise PromQLError(f"operator {op} is not supported{_where(self.text, op)}")
        mod = e.modifier
        if mod is not None and getattr(mod, "fill_values", None) is not None and _has_fill(mod):
            raise PromQLError("fill() modifiers are not Prometheus 2.42 syntax")
        on, labels, card, include = False, frozenset[str](), "one-to-one", ()
        if mod is not None:
            if mod.matching is not None:
                on = "Include" in str(mod.matching.type)
                labels = frozenset(mod.matching.labels)
            card = _CARD.get(str(mod.card), "one-to-one")
            include = tuple(mod.group_labels or ()) if card in ("many-to-one", "one-to-many") else ()
        if op in SET_OPS:
            card = "many-to-many"
        lhs, rhs = self.convert(e.lhs), self.convert(e.rhs)
        kind = ast.SCALAR if lhs.type == ast.SCALAR and rhs.type == ast.SCALAR else ast.VECTOR
        return ast.Binary(op, lhs, rhs, bool(mod is not None and mod.return_bool),
                          ast.Matching(on, labels, card, include), kind)


def _has_fill(modifier: Any) -> bool:
    fv = modifier.fill_values
    return any(getattr(fv, k, None) is not None for k in ("lhs", "rhs"))
