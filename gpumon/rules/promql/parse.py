"""The subset of PromQL gpumon evaluates: an expression is parsed by promql-parser and checked here
when its rule file loads, so that one outside the subset is refused then, naming the construct
and its column."""

from __future__ import annotations

import re
from typing import Any

import promql_parser as pp

from gpumon.regex import Regex, RegexError, anchored
from gpumon.rules.promql.values import MAX_DEPTH, NAME, Matcher, PromQLError

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
        selector_matchers(e)  # compiles regexes: a bad one is a load error
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
            anchored_regex(args[4].val, "label_replace()")
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


def anchored_regex(pattern: str, where: str) -> Regex:
    try:
        return anchored(pattern)
    except RegexError as exc:
        raise PromQLError(f"{where}: invalid regular expression {pattern!r}: {exc}") from None


def selector_matchers(vs: Any) -> list[Matcher]:
    out = []
    if vs.name:
        out.append(Matcher(NAME, "=", vs.name))
    for m in vs.matchers.matchers:
        op = _MATCH_OPS[str(m.op)]
        regex = anchored_regex(m.value, f"matcher {m.name}{op}{m.value!r}") if op in ("=~", "!~") else None
        out.append(Matcher(m.name, op, m.value, regex))
    return out
