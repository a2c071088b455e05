"""Regression tests for the evaluation bugs of issue 19: NaN clamp bounds, a parenthesised range
argument (and any unexpected exception in one rule), unary minus making two series alike, RE2-only
regexes everywhere gpumon reads one, and selector caches keyed by id() of freed parser nodes."""

from __future__ import annotations

import gc
import math
from pathlib import Path
from typing import Any

import pytest
import structlog

from gpumon.rules.alerting import RuleEngine
from gpumon.rules.promql import EvalError, Evaluator, compile_expr
from gpumon.rules.rulefile import load_rule_files
from gpumon.rules.ruletest import MemoryStorage, parse_series, run_test_file


def _storage(series: dict[str, list[float]], step_ms: int = 60_000) -> MemoryStorage:
    storage = MemoryStorage()
    for text, values in series.items():
        for i, v in enumerate(values):
            storage.add(parse_series(text), i * step_ms, v)
    return storage


def _values(got: Any) -> dict[str, float]:
    return {dict(s.labels).get("i", ""): s.value for s in got}


# (a) clamp with a NaN bound is NaN, as Go's math.Min/Max make it (and an infinity wins over NaN)

@pytest.mark.parametrize("expr, expected", [
    ("clamp(x, 0, NaN)", {"a": math.nan, "b": math.nan, "inf": math.nan}),
    ("clamp(x, NaN, 5)", {"a": math.nan, "b": math.nan, "inf": math.nan}),
    ("clamp_min(x, NaN)", {"a": math.nan, "b": math.nan, "inf": math.inf}),
    ("clamp_max(x, NaN)", {"a": math.nan, "b": math.nan, "inf": math.nan}),
    ("clamp_max(x, 1)", {"a": 1.0, "b": -2.0, "inf": 1.0}),
])
def test_clamp_with_a_nan_bound_is_nan(expr: str, expected: dict[str, float]) -> None:
    storage = _storage({'x{i="a"}': [3.0], 'x{i="b"}': [-2.0], 'x{i="inf"}': [math.inf]})
    got = _values(Evaluator(storage).instant(compile_expr(expr), 0))
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert (math.isnan(v) and math.isnan(got[k])) or got[k] == v, (k, got[k], v)


# (b) rate((x[5m])), and no exception in one rule stops the others

def test_parenthesised_range_argument_evaluates() -> None:
    storage = _storage({'x{i="a"}': [0.0, 60.0, 120.0, 180.0, 240.0, 300.0]})
    plain = Evaluator(storage).instant(compile_expr("rate(x[5m])"), 300_000)
    wrapped = Evaluator(storage).instant(compile_expr("rate(((x[5m])))"), 300_000)
    assert _values(wrapped) == _values(plain) == {"a": 1.0}


class _Broken(Evaluator):
    """An evaluator with a bug in one place: the expression `boom` raises what no rule should."""

    def instant(self, expr: Any, t: int) -> Any:
        if getattr(expr, "name", None) == "boom":
            raise AttributeError("'ParenExpr' object has no attribute 'vector_selector'")
        return super().instant(expr, t)


RULES = """groups:
- name: g
  rules:
  - record: first
    expr: vector(1)
  - alert: Broken
    expr: boom > 0
  - record: broken_too
    expr: boom
  - record: last
    expr: vector(2)
"""


def test_an_unexpected_exception_is_that_rules_error_and_the_group_goes_on(tmp_path: Path) -> None:
    (tmp_path / "r.yml").write_text(RULES)
    groups = load_rule_files([tmp_path / "r.yml"])
    written: list[str] = []
    engine = RuleEngine(groups, _Broken(MemoryStorage()), lambda labels, t, v: written.append(dict(labels)["__name__"]))
    engine.eval_group(groups[0], 60_000)
    states = [engine.states[(groups[0].file, "g", i)] for i in range(4)]
    assert written == ["first", "last"]
    assert [s.health for s in states] == ["ok", "ok", "err", "ok"]  # `boom > 0` is evaluated by the real code
    assert states[2].last_error == ("internal error: AttributeError: 'ParenExpr' object has no attribute "
                                    "'vector_selector'")


async def test_the_daemon_counts_and_logs_a_failing_rule_once(tmp_path: Path) -> None:
    from gpumon.rules.service import RuleService
    from gpumon.store import Store

    (tmp_path / "r.yml").write_text(RULES)
    service = RuleService(load_rule_files([tmp_path / "r.yml"]), Store(10), default_interval_s=10.0,
                          state_dir=None)
    service.engine.evaluator = _Broken(service.engine.evaluator.storage)
    with structlog.testing.capture_logs() as logs:
        for second in (100.0, 110.0, 120.0):
            service.evaluate(service.groups[0], second)
    failed = [e for e in logs if e["event"] == "rule evaluation failed"]
    assert len(failed) == 1 and failed[0]["rule"] == "broken_too" and "AttributeError" in failed[0]["error"]
    sample = service.alerts_sample(120.0)
    assert [v for name, _, v in sample.values if name == "gpumon_rule_evaluation_failures"] == [1]
    rules = service.api_rules()["data"]["groups"][0]["rules"]
    assert [(r["health"], bool(r["lastError"])) for r in rules] == [
        ("ok", False), ("ok", False), ("err", True), ("ok", False)]


def test_rules_test_reports_a_failing_case_and_runs_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty.yml").write_text("groups: []\n")
    (tmp_path / "t.yml").write_text("""rule_files: [empty.yml]
tests:
- input_series:
  - series: 'x{i="a"}'
    values: '0+60x10'
  promql_expr_test:
  - expr: boom
    eval_time: 5m
  - expr: rate((x[5m]))
    eval_time: 5m
    exp_samples: [{labels: '{i="a"}', value: 1}]
  - expr: x
    eval_time: 5m
    exp_samples: [{labels: 'x{i="a"}', value: 999}]
- input_series: []
  promql_expr_test:
  - expr: vector(1)
    eval_time: 0s
    exp_samples: [{labels: '{}', value: 2}]
""")
    monkeypatch.setattr("gpumon.rules.ruletest.Evaluator", _Broken)
    result = run_test_file(tmp_path / "t.yml")
    assert len(result.failures) == 3, result.failures
    assert "expr: 'boom', time: 5m, err: internal error: AttributeError" in result.failures[0]
    assert "expr: 'x'" in result.failures[1] and "expr: 'vector(1)'" in result.failures[2]
    assert "Traceback" not in "".join(result.failures)


# (c) unary minus that makes two series alike fails, as in Prometheus

def test_unary_minus_on_series_alike_but_for_the_name_fails() -> None:
    storage = _storage({'a{x="1"}': [1.0], 'b{x="1"}': [2.0], 'c{x="2"}': [3.0]})
    evaluator = Evaluator(storage)
    with pytest.raises(EvalError, match="vector cannot contain metrics with the same labelset"):
        evaluator.instant(compile_expr('-{__name__=~"a|b"}'), 0)
    got = evaluator.instant(compile_expr('-{__name__=~"a|c"}'), 0)
    assert [(s.labels, s.value) for s in got] == [((("x", "1"),), -1.0), ((("x", "2"),), -3.0)]


# (d) a pattern RE2 takes and Python's re does not: in selectors, templates and notification matchers

PATTERN = "((?i)PRO).*"


def test_re2_pattern_in_a_selector() -> None:
    storage = _storage({'job{group="production"}': [1.0], 'job{group="PROD"}': [1.0], 'job{group="dev"}': [1.0]})
    got = Evaluator(storage).instant(compile_expr(f'job{{group=~"{PATTERN}"}}'), 0)
    assert sorted(dict(s.labels)["group"] for s in got) == ["PROD", "production"]


def test_re2_pattern_in_a_template() -> None:
    from gpumon.rules.gotemplate import compile_template
    template = compile_template('{{ reReplaceAll "' + PATTERN.replace("\\", "\\\\") + '" "x" $labels.group }}')
    assert template.render({"group": "Production"}, 1.0) == "x"
    assert template.render({"group": "dev"}, 1.0) == "dev"


def test_re2_pattern_in_a_notification_matcher() -> None:
    from gpumon.notify.routing import parse_matcher
    matcher = parse_matcher(f'group=~"{PATTERN}"')
    assert matcher.matches({"group": "pRoduction"}) and not matcher.matches({"group": "dev"})


# (e) no cache keyed by id() of a node that may be freed: selectors carry their compiled matchers

def test_selectors_of_freed_expressions_never_leak_into_later_ones() -> None:
    storage = _storage({'a_metric{x="a"}': [1.0] * 10, 'b_total{x="b"}': [float(i % 3) for i in range(10)]})
    evaluator = Evaluator(storage)
    for _ in range(300):
        got = evaluator.instant(compile_expr("a_metric"), 540_000)
        assert [(dict(s.labels)["x"], s.value) for s in got] == [("a", 1.0)]
        gc.collect()
        got = evaluator.instant(compile_expr("resets(b_total[5m])"), 540_000)
        assert [(dict(s.labels)["x"], s.value) for s in got] == [("b", 2.0)]
        gc.collect()
    assert not [name for name in vars(evaluator) if "cache" in name]


def test_no_rule_module_keys_anything_on_id() -> None:
    import re
    root = Path(__file__).resolve().parents[2] / "gpumon" / "rules"
    offenders = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"(?<![\w.])id\(", line)]
    assert offenders == []

