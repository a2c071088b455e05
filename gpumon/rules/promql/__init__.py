"""Prometheus 2.42's PromQL for instant evaluation: parsed by promql-parser, checked and converted
when a rule loads, evaluated here.

Semantics follow the Prometheus 2.42 engine (the version `promtool` on Debian 12 runs): 5 m lookback
for instant selectors, range selectors closed on both ends, staleness markers, counter resets and the
extrapolation of rate/increase/delta, vector matching with on/ignoring and group_left/group_right,
subqueries, offset and @. Times are integer milliseconds, as in Prometheus, so interval boundaries
compare exactly.

Anything Prometheus 2.42 would refuse is rejected by `compile_expr` with the construct, so a rule file
that loads cannot fail at 3 a.m. for want of a feature.
"""

from gpumon.rules.promql import ast
from gpumon.rules.promql.evaluate import Evaluator
from gpumon.rules.promql.parse import AGGREGATIONS, FUNCTIONS, compile_expr
from gpumon.rules.promql.values import (
    LOOKBACK_MS,
    NAME,
    EvalError,
    Labels,
    Matcher,
    Matrix,
    PromQLError,
    Sample,
    Series,
    Storage,
    Value,
    Vector,
    format_duration,
    is_stale,
    parse_prom_duration,
)

__all__ = [
    "AGGREGATIONS",
    "FUNCTIONS",
    "LOOKBACK_MS",
    "NAME",
    "EvalError",
    "Evaluator",
    "Labels",
    "Matcher",
    "Matrix",
    "PromQLError",
    "Sample",
    "Series",
    "Storage",
    "Value",
    "Vector",
    "ast",
    "compile_expr",
    "format_duration",
    "is_stale",
    "parse_prom_duration",
]
