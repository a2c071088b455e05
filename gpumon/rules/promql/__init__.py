"""A PromQL subset: parsed by promql-parser, checked when a rule loads, evaluated here.

Semantics follow the Prometheus 2.x engine (the version `promtool` on Debian 12 runs): 5 m lookback
for instant selectors, range selectors closed on both ends, staleness markers, counter resets and the
extrapolation of rate/increase/delta, vector matching with on/ignoring and group_left/group_right.
Times are integer milliseconds, as in Prometheus, so interval boundaries compare exactly.

Anything outside the subset is rejected by `compile_expr` with the construct and its column, so a
rule file that loads cannot fail at 3 a.m. for want of a feature.
"""

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

__all__ = ["AGGREGATIONS", "FUNCTIONS", "LOOKBACK_MS", "NAME", "EvalError", "Evaluator", "Labels", "Matcher",
           "Matrix", "PromQLError", "Sample", "Series", "Storage", "Value", "Vector", "compile_expr",
           "format_duration", "is_stale", "parse_prom_duration"]
