"""Rule unit tests in promtool's format (`promtool test rules`), run by gpumon's own evaluator.

The file format is promtool's, unchanged: `rule_files`, `evaluation_interval`, and `tests[]` with
`interval`, `input_series` (expanding notation `a+bxn`, `_`, `stale`), `external_labels`,
`alert_rule_test` and `promql_expr_test`. Rule groups are evaluated every `evaluation_interval` from
0; recording rules write into the test's series, so expressions and later rules can read them.
Failures are reported the way promtool reports them.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import promql_parser as pp

from gpumon.model import STALE_NAN
from gpumon.rules.alerting import ALERT_NAME, RuleEngine, State
from gpumon.rules.promql import (
    NAME,
    EvalError,
    Evaluator,
    Labels,
    Matcher,
    PromQLError,
    Sample,
    Series,
    compile_expr,
    format_duration,
    parse_prom_duration,
)
from gpumon.rules.promql.gomath import value_text
from gpumon.rules.rulefile import RuleGroup, expand_globs, load_rule_files
from gpumon.yamlfile import ConfigError, load_yaml

_NUMBER = r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|Inf|inf|NaN|nan)"
_EXPANDING = re.compile(rf"(?P<a>{_NUMBER})(?:(?P<op>[-+])(?P<b>{_NUMBER}))?x(?P<n>\d+)")
_BLANKS = re.compile(r"_x(?P<n>\d+)")


def parse_series(text: str) -> Labels:
    """A series description such as `metric{a="1"}` as sorted labels including __name__."""
    if text.strip() in ("{}", ""):
        return ()
    try:
        e = pp.parse(text)
    except (ValueError, RuntimeError) as exc:
        raise ValueError(f"invalid series {text!r}: {exc}") from None
    if not isinstance(e, pp.VectorSelector) or e.offset is not None or e.at is not None:
        raise ValueError(f"invalid series {text!r}: expected metric{{label=\"value\", ...}}")
    labels = {NAME: e.name} if e.name else {}
    for m in e.matchers.matchers:
        if str(m.op) != "MatchOp.Equal":
            raise ValueError(f"invalid series {text!r}: only = is allowed in a series description")
        labels[m.name] = m.value
    return tuple(sorted((k, v) for k, v in labels.items() if v != ""))


def expand_values(text: str) -> list[float | None]:
    """promtool's expanding notation: `1+2x3` -> 1 3 5 7, `_` a missing sample, `stale` a marker."""
    out: list[float | None] = []
    for token in str(text).split():
        if token == "_":
            out.append(None)
        elif token == "stale":
            out.append(STALE_NAN)
        elif m := _BLANKS.fullmatch(token):
            out.extend([None] * int(m.group("n")))
        elif m := _EXPANDING.fullmatch(token):
            a = float(m.group("a"))
            b = float(m.group("b") or 0) * (-1 if m.group("op") == "-" else 1)
            out.extend(a + i * b for i in range(int(m.group("n")) + 1))
        elif re.fullmatch(_NUMBER, token):
            out.append(float(token))
        else:
            raise ValueError(f"invalid value {token!r} in series values {text!r}")
    return out


class MemoryStorage:
    """Series held in lists: the storage of a rule unit test."""

    def __init__(self) -> None:
        self._series: dict[Labels, tuple[list[float], list[float]]] = {}
        # promtool loads a test's samples only up to the time it has evaluated to: later ones are unseen
        self.until: int | None = None

    def add(self, labels: Labels, t: int, v: float) -> None:
        times, values = self._series.setdefault(labels, ([], []))
        times.append(t)
        values.append(v)

    def select(self, matchers: Sequence[Matcher], start: int, end: int) -> Iterable[Series]:
        if self.until is not None:
            end = min(end, self.until)
        for labels, (times, values) in self._series.items():
            as_dict = dict(labels)
            if all(m.matches(as_dict) for m in matchers):
                lo, hi = bisect.bisect_left(times, start), bisect.bisect_right(times, end)
                yield Series(labels, times[lo:hi], values[lo:hi])


@dataclass
class TestResult:
    file: Path
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def run_test_file(path: Path) -> TestResult:
    """Run one promtool-format test file; problems in the file itself are failures too."""
    result = TestResult(path)
    try:
        doc, _ = load_yaml(path)
    except ConfigError as exc:
        result.failures.append(str(exc))
        return result
    if not isinstance(doc, dict):
        result.failures.append(f"{path}: expected a mapping with rule_files and tests")
        return result
    try:
        groups = load_rule_files(expand_globs([str(f) for f in doc.get("rule_files") or []], path.parent))
    except ConfigError as exc:
        result.failures.append(str(exc))
        return result
    for i, test in enumerate(doc.get("tests") or []):
        try:
            result.failures.extend(_run_test(test, doc, groups))
        except (ValueError, PromQLError, TypeError, KeyError, AttributeError) as exc:
            result.failures.append(f"tests[{i}]: {exc}")
    return result


def _run_test(test: dict[str, Any], doc: dict[str, Any], groups: list[RuleGroup]) -> list[str]:
    eval_interval = parse_prom_duration(doc.get("evaluation_interval") or "1m")
    interval = parse_prom_duration(test.get("interval") or doc.get("evaluation_interval") or "1m")
    storage = MemoryStorage()
    for item in test.get("input_series") or []:
        labels = parse_series(item["series"])
        for i, v in enumerate(expand_values(item.get("values", ""))):
            if v is not None:
                storage.add(labels, i * interval, v)
    failures = []
    evaluator = Evaluator(storage, subquery_step_ms=eval_interval)  # promtool's step for `x[1h:]`
    external = {str(k): str(v) for k, v in (test.get("external_labels") or {}).items()}
    alert_cases = sorted(test.get("alert_rule_test") or [], key=lambda c: parse_prom_duration(c.get("eval_time", "0s")))
    end = max([parse_prom_duration(c.get("eval_time", "0s")) for c in alert_cases]
              + [parse_prom_duration(c.get("eval_time", "0s")) for c in test.get("promql_expr_test") or []], default=0)
    # promtool evaluates the groups every evaluation_interval up to the last eval_time, loading the
    # samples up to each evaluation as it goes; the expression tests then see samples up to the last.
    storage.until = end // eval_interval * eval_interval if eval_interval > 0 else end
    if groups and (alert_cases or test.get("promql_expr_test")):
        engine = RuleEngine(groups, evaluator, storage.add, external)
        pending = list(alert_cases)
        t = 0
        while t <= end:
            storage.until = t
            for group in groups:
                engine.eval_group(group, t)
            # An alert test at eval_time compares with the evaluation at the last tick <= eval_time.
            while pending and parse_prom_duration(pending[0].get("eval_time", "0s")) < t + eval_interval:
                failures.extend(_alert_case(pending.pop(0), engine))
            t += eval_interval
    for case in test.get("promql_expr_test") or []:
        failures.extend(_expr_case(case, evaluator))
    return failures


def _alert_case(case: dict[str, Any], engine: RuleEngine) -> list[str]:
    name = str(case.get("alertname", ""))
    t = parse_prom_duration(case.get("eval_time", "0s"))
    got = sorted((a.labels, tuple(sorted(a.annotations.items()))) for a in engine.alerts()
                 if a.state is State.FIRING and dict(a.labels).get(ALERT_NAME) == name)
    expected = []
    for exp in case.get("exp_alerts") or []:
        labels = {str(k): str(v) for k, v in (exp.get("exp_labels") or {}).items()}
        labels[ALERT_NAME] = name
        annotations = tuple(sorted((str(k), str(v)) for k, v in (exp.get("exp_annotations") or {}).items()))
        expected.append((tuple(sorted(labels.items())), annotations))
    expected.sort()
    if got == expected:
        return []
    return [f"    alertname: {name}, time: {format_duration(t)},\n"
            f"        exp:{_show_alerts(expected)},\n        got:{_show_alerts(got)}"]


def _show_alerts(alerts: list[tuple[Labels, tuple[tuple[str, str], ...]]]) -> str:
    parts = []
    for i, (labels, notes) in enumerate(alerts):
        parts.append(f"\n            {i}:\n              Labels:{_metric(labels)}\n"
                     f"              Annotations:{_metric(notes)}")
    return "[" + "".join(parts) + "]" if parts else "[]"


def _expr_case(case: dict[str, Any], evaluator: Evaluator) -> list[str]:
    expr_text = str(case["expr"])
    t = parse_prom_duration(case.get("eval_time") or "0s")
    try:
        value = evaluator.instant(compile_expr(expr_text), t)
    except (PromQLError, EvalError) as exc:
        return [f"    expr: {expr_text!r}, time: {format_duration(t)}, err: {exc}"]
    except Exception as exc:  # a bug in gpumon's evaluator: this case fails, the others still run
        return [f"    expr: {expr_text!r}, time: {format_duration(t)}, "
                f"err: internal error: {type(exc).__name__}: {exc}"]
    if isinstance(value, float):
        got = [Sample((), value)]
    elif isinstance(value, str):
        return [f"    expr: {expr_text!r}, time: {format_duration(t)}, err: string result not allowed"]
    else:
        got = [s for s in value if isinstance(s, Sample)]
        if len(got) != len(value):
            return [f"    expr: {expr_text!r}, time: {format_duration(t)}, err: range vector result"]
    expected = [(parse_series(str(s.get("labels", "{}"))), float(s["value"]))
                for s in case.get("exp_samples") or []]
    got_pairs = sorted(((s.labels, s.value) for s in got), key=lambda p: p[0])
    expected.sort(key=lambda p: p[0])
    if _same(expected, got_pairs):
        return []
    return [f"    expr: {expr_text!r}, time: {format_duration(t)},\n"
            f"        exp: {_show(expected)}\n        got: {_show(got_pairs)}"]


def _same(a: list[tuple[Labels, float]], b: list[tuple[Labels, float]]) -> bool:
    # Exact comparison, as promtool's reflect.DeepEqual (so NaN never equals NaN).
    return len(a) == len(b) and all(la == lb and va == vb for (la, va), (lb, vb) in zip(a, b, strict=True))


def _show(samples: list[tuple[Labels, float]]) -> str:
    return "[" + ", ".join(_metric(labels) + f" {value_text(v)}" for labels, v in samples) + "]"


def _metric(labels: Labels) -> str:
    name = dict(labels).get(NAME, "")
    rest = ", ".join(f'{k}="{v}"' for k, v in labels if k != NAME)
    return f"{name}{{{rest}}}"


