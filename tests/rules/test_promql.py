"""The PromQL evaluator against promtool: a corpus whose expected samples were recorded from
promtool 2.42, run by gpumon's rule-test runner, and (when promtool is installed, as `make test`
ensures) the same files run by promtool itself with deliberately broken variants."""

from __future__ import annotations

import contextlib
import copy
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gpumon.rules.promql import EvalError, PromQLError, compile_expr, golibm, parse_prom_duration
from gpumon.rules.ruletest import expand_values, run_test_file

CORPUS = yaml.safe_load((Path(__file__).parent / "corpus" / "promql_cases.yaml").read_text())
CASES = {c["name"]: c for c in CORPUS["cases"]}


def _value(v: Any) -> float:
    return {"NaN": math.nan, "+Inf": math.inf, "-Inf": -math.inf}.get(v, v) if isinstance(v, str) else float(v)


def _expects_nan(case: dict[str, Any]) -> bool:
    # promtool compares with reflect.DeepEqual, so an expected NaN never matches: such cases fail in both.
    return any(math.isnan(_value(s["value"])) for s in case["exp_samples"])


def write_test(tmp: Path, case: dict[str, Any], name: str = "case") -> Path:
    data = CORPUS["datasets"][case["data"]]
    (tmp / "empty.yml").write_text("groups: []\n")
    doc = {"rule_files": ["empty.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": data["interval"],
        "input_series": [{"series": k, "values": v} for k, v in data["series"].items()],
        "promql_expr_test": [{"expr": case["expr"], "eval_time": case["eval_time"],
                              "exp_samples": [{"labels": s["labels"], "value": _value(s["value"])}
                                              for s in case["exp_samples"]]}]}]}
    path = tmp / f"{name}.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def broken(case: dict[str, Any]) -> dict[str, Any]:
    """The same case with a wrong expectation: one value off, or a sample too many."""
    wrong = copy.deepcopy(case)
    samples = wrong["exp_samples"]
    if samples and math.isfinite(_value(samples[0]["value"])):
        samples[0]["value"] = _value(samples[0]["value"]) + 1
    else:
        samples.append({"labels": '{gpu="9"}', "value": 1.0})
    return wrong


@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus_case_gives_promtools_samples(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The corpus was recorded on a CPU with FMA, where Go's exp takes its FMA path: so does gpumon here,
    # whatever this machine has (test_golibm.py checks both paths).
    monkeypatch.setattr(golibm, "USE_FMA", True)
    case = CASES[name]
    result = run_test_file(write_test(tmp_path, case))
    if "exp_err" in case:
        # promtool's error text; the two series a many-to-many error names come in either order
        assert len(result.failures) == 1 and f"err: {case['exp_err'].split(': [')[0]}" in result.failures[0], \
            result.failures
    else:
        assert result.ok != _expects_nan(case), result.failures
    assert not run_test_file(write_test(tmp_path, broken(case), "broken")).ok


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(CASES))
def test_same_verdict_as_promtool(name: str, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: run the tests with `make test`, which installs it")
    for variant, case in (("good", CASES[name]), ("broken", broken(CASES[name]))):
        path = write_test(tmp_path, case, variant)
        theirs = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True)
        ours = run_test_file(path)
        assert ours.ok == (theirs.returncode == 0), (variant, ours.failures, theirs.stdout)


# Prometheus 2.42's functions: the keys of FunctionCalls in promql/functions.go at tag v2.42.0
# (github.com/prometheus/prometheus), copied here so that a change on either side shows.
PROMETHEUS_2_42_FUNCTIONS = frozenset({
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "avg_over_time", "ceil",
    "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh", "count_over_time", "days_in_month", "day_of_month",
    "day_of_week", "day_of_year", "deg", "delta", "deriv", "exp", "floor", "histogram_count", "histogram_fraction",
    "histogram_quantile", "histogram_sum", "holt_winters", "hour", "idelta", "increase", "irate", "label_replace",
    "label_join", "ln", "log10", "log2", "last_over_time", "max_over_time", "min_over_time", "minute", "month", "pi",
    "predict_linear", "present_over_time", "quantile_over_time", "rad", "rate", "resets", "round", "scalar", "sgn",
    "sin", "sinh", "sort", "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan",
    "tanh", "time", "timestamp", "vector", "year",
})
# promql/parser/lex.go at v2.42.0: the aggregation keywords
PROMETHEUS_2_42_AGGREGATIONS = frozenset(
    ["avg", "bottomk", "count", "count_values", "group", "max", "min", "quantile", "stddev", "stdvar", "sum", "topk"])


def test_the_evaluator_implements_prometheus_2_42s_functions_and_the_corpus_covers_each() -> None:
    from gpumon.rules import promql
    assert len(PROMETHEUS_2_42_FUNCTIONS) == 70
    assert promql.FUNCTIONS == PROMETHEUS_2_42_FUNCTIONS
    assert promql.AGGREGATIONS == PROMETHEUS_2_42_AGGREGATIONS
    for fn in sorted(PROMETHEUS_2_42_FUNCTIONS):  # each compiles and has a recorded case
        args = ", ".join({"vector": "x", "matrix": "x[5m]", "scalar": "1", "string": '"a"'}[a]
                         for a in promql.parse.FUNCTION_SIGNATURES[fn][0])
        compile_expr(f"{fn}({args})")
    text = " ".join(c["expr"] for c in CASES.values())
    missing = [fn for fn in sorted(PROMETHEUS_2_42_FUNCTIONS) if f"{fn}(" not in text]
    assert missing == []
    for agg in PROMETHEUS_2_42_AGGREGATIONS:
        assert f"{agg}(" in text or f"{agg} by" in text or f"{agg} without" in text, agg
    for op in ["+", "-", "*", "/", "%", "^", " atan2 ", "==", "<", ">", " and ", " or ", " unless ", "bool",
               "on(", "ignoring(", "group_left", "group_right", "=~", "!~", "!=", "offset", "offset -", "@ ",
               "@ start()", "@ end()", ":1m]", ":]"]:
        assert op in text, op
    assert len(CASES) >= 230


@pytest.mark.parametrize("expr, construct", [
    # Prometheus 3 syntax promql-parser reads but Prometheus 2.42 refuses
    ("mad_over_time(x[5m])", "function mad_over_time() is not in Prometheus 2.42's PromQL at column 1"),
    ("sort_by_label(x, \"a\")", "function sort_by_label() is not in Prometheus 2.42's PromQL"),
    ("double_exponential_smoothing(x[5m], 0.5, 0.5)", "function double_exponential_smoothing() is not in"),
    ("limitk(1, x)", "aggregation limitk is not in Prometheus 2.42's PromQL"),
    ("x{a=\"1\" or a=\"2\"}", "'or' inside a selector is not Prometheus 2.42 syntax"),
    ("{\"x\"}", "quoted metric or label names are not Prometheus 2.42 syntax at column 2"),
    ("x{\"a\"=\"1\"}", "quoted metric or label names are not Prometheus 2.42 syntax"),
    # refused by both
    ("label_replace(x, \"a\", \"$1\", \"b\", \"(\")", "invalid regular expression"),
    ("label_join(x, \"1a\", \",\", \"b\")", "invalid destination label name in label_join(): 1a"),
    ("count_values(\"1a\", x)", "count_values(): invalid label name"),
    ("sum(", "cannot parse expression"),
    ("x{a=~\"[\"}", "cannot parse expression"),
    ("1 < 2", "comparisons between scalars must use BOOL modifier"),
    ("x offset 0s", "cannot parse expression"),
    # Prometheus 2.42 takes this, promql-parser cannot represent it (docs/rules.md lists the gaps)
    ("x @ -5", "an @ time before 1970 or after 9999: promql-parser cannot represent it"),
])
def test_outside_the_subset_is_rejected_at_load(expr: str, construct: str) -> None:
    with pytest.raises(PromQLError, match=construct.replace("(", r"\(").replace(")", r"\)")):
        compile_expr(expr)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_fuzzed_expressions_are_accepted_or_rejected_cleanly(text: str) -> None:
    with contextlib.suppress(PromQLError):
        compile_expr(text)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(CASES)), st.integers(min_value=0, max_value=30))
def test_any_corpus_expression_evaluates_at_any_time_without_crashing(name: str, minute: int) -> None:
    from gpumon.rules.promql import Evaluator
    from gpumon.rules.ruletest import MemoryStorage, parse_series
    case = CASES[name]
    data = CORPUS["datasets"][case["data"]]
    storage = MemoryStorage()
    for series, values in data["series"].items():
        for i, v in enumerate(expand_values(values)):
            if v is not None:
                storage.add(parse_series(series), i * 60_000, v)
    with contextlib.suppress(EvalError):
        Evaluator(storage).instant(compile_expr(case["expr"]), minute * 60_000)


def test_set_operators_skip_the_left_series_they_would_drop(monkeypatch: pytest.MonkeyPatch) -> None:
    """`A unless on(gpu) B` averages nothing for a GPU that B has; `A and B` only for those it has."""
    from gpumon.rules import promql
    from gpumon.rules.promql.functions_range import RANGE
    from gpumon.rules.ruletest import MemoryStorage, parse_series

    storage = MemoryStorage()
    for gpu in range(4):
        for i in range(10):
            storage.add(parse_series(f'util{{gpu="{gpu}"}}'), i * 60_000, 0.1 * gpu)
    for gpu in (1, 3):
        storage.add(parse_series(f'sm{{gpu="{gpu}"}}'), 540_000, 0.5)
    averaged: list[int] = []
    real = RANGE["avg_over_time"]

    def counting(times: Any, values: Any, window: Any) -> float | None:
        averaged.append(len(values))
        return real(times, values, window)

    monkeypatch.setitem(RANGE, "avg_over_time", counting)
    evaluator = promql.Evaluator(storage)
    got = evaluator.instant(compile_expr("avg_over_time(util[5m]) >= 0 unless on(gpu) sm"), 540_000)
    assert sorted(dict(s.labels)["gpu"] for s in got) == ["0", "2"] and len(averaged) == 2
    averaged.clear()
    got = evaluator.instant(compile_expr("avg_over_time(util[5m]) > 0.15 and on(gpu) sm"), 540_000)
    assert [dict(s.labels)["gpu"] for s in got] == ["3"] and len(averaged) == 2


def test_expanding_notation() -> None:
    assert expand_values("1+2x3") == [1, 3, 5, 7]
    assert expand_values("5-1x2 _ _x2 7x1") == [5, 4, 3, None, None, None, 7, 7]
    stale = expand_values("stale")[0]
    assert stale is not None and math.isnan(stale)
    assert expand_values("1e3 -Inf NaN")[0:2] == [1000.0, -math.inf]
    with pytest.raises(ValueError):
        expand_values("1+x3")
    assert parse_prom_duration("1h30m") == 5_400_000
    assert parse_prom_duration("0s") == 0


def test_an_evaluator_never_mixes_up_the_selectors_of_freed_expressions() -> None:
    """`gpumon rules test` runs every test of a file on one evaluator: an expression freed after its
    test must not lend its selector to the next one that happens to reuse its memory address."""
    from gpumon.rules import promql
    from gpumon.rules.ruletest import MemoryStorage, parse_series

    storage = MemoryStorage()
    for i in range(10):
        storage.add(parse_series('a_metric{x="a"}'), i * 60_000, 1.0)
        storage.add(parse_series('b_total{x="b"}'), i * 60_000, float(i % 3))
    evaluator = promql.Evaluator(storage)
    for _ in range(200):
        assert [dict(s.labels)["x"] for s in evaluator.instant(compile_expr("a_metric"), 540_000)] == ["a"]
        got = evaluator.instant(compile_expr("resets(b_total[5m])"), 540_000)
        assert [(dict(s.labels)["x"], s.value) for s in got] == [("b", 2.0)]
