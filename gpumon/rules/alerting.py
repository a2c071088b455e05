"""Rule evaluation: recording rules, and the alert state machine of Prometheus's rules/alerting.go.

inactive -> pending (condition true) -> firing (true for `for`) -> inactive/resolved (false), with
`keep_firing_for`, resolved alerts kept for 15 minutes so notifiers see the resolution, and gpumon's
two extensions (see rulefile.py): a hysteresis condition that must hold before a firing alert
resolves, and a policy for when the series behind an alert disappear.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gpumon.rules.promql import NAME, EvalError, Evaluator, Labels, Sample, Vector, ast
from gpumon.rules.rulefile import AlertRule, RecordRule, RuleGroup

RESOLVED_RETENTION_MS = 15 * 60 * 1000
ALERT_NAME = "alertname"

Sink = Callable[[Labels, int, float], None]  # where recording rules write their samples


class State(enum.StrEnum):
    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"


@dataclass
class Alert:
    labels: Labels  # sorted, includes alertname
    source: Labels  # the expression's output labels (without __name__): what the alert is about
    annotations: dict[str, str]
    state: State
    active_at: int
    value: float
    fired_at: int = 0
    resolved_at: int = 0
    keep_firing_since: int = 0

    @property
    def fingerprint(self) -> Labels:
        return self.labels


@dataclass
class RuleState:
    """The evaluation state of one rule: health, and for an alerting rule its active alerts."""

    rule: AlertRule | RecordRule
    active: dict[Labels, Alert] = field(default_factory=dict)
    last_error: str = ""
    last_eval_ms: int = 0
    health: str = "unknown"


def eval_record(rule: RecordRule, evaluator: Evaluator, t: int, sink: Sink) -> Vector:
    """Evaluate a recording rule and write its samples (named after the rule) through `sink`."""
    value = evaluator.instant(rule.expr, t)
    vector: Vector = [Sample((), value, t)] if isinstance(value, float) else _only_vector(value)
    out: Vector = []
    seen: set[Labels] = set()
    for s in vector:
        labels = dict(s.labels)
        labels[NAME] = rule.name
        labels.update(rule.labels)
        key = tuple(sorted((k, v) for k, v in labels.items() if v != ""))
        if key in seen:
            raise EvalError("vector contains metrics with the same labelset after applying rule labels")
        seen.add(key)
        out.append(Sample(key, s.value, t))
    for s in out:
        sink(s.labels, t, s.value)
    return out


def eval_alert(state: RuleState, evaluator: Evaluator, t: int, external_labels: dict[str, str]) -> None:
    """One evaluation of an alerting rule at time `t` (ms), updating `state.active` in place."""
    rule = state.rule
    assert isinstance(rule, AlertRule)
    value = evaluator.instant(rule.expr, t)
    vector: Vector = [Sample((), value, t)] if isinstance(value, float) else _only_vector(value)
    current: dict[Labels, Alert] = {}
    for s in vector:
        source = tuple(p for p in s.labels if p[0] != NAME)
        source_dict = dict(source)
        labels = dict(source)
        for k, tmpl in rule.labels.items():
            labels[k] = tmpl.render(source_dict, s.value, external_labels)
        labels[ALERT_NAME] = rule.name
        key = tuple(sorted((k, v) for k, v in labels.items() if v != ""))
        if key in current:
            raise EvalError("vector contains metrics with the same labelset after applying alert labels")
        annotations = {k: tmpl.render(source_dict, s.value, external_labels) for k, tmpl in rule.annotations.items()}
        current[key] = Alert(key, source, annotations, State.PENDING, t, s.value)
    for key, new in current.items():
        old = state.active.get(key)
        if old is not None and old.state is not State.INACTIVE:
            old.value, old.annotations = new.value, new.annotations
        else:
            state.active[key] = new

    absent = [a for k, a in state.active.items() if k not in current and a.state is not State.INACTIVE]
    holds = _resolve_condition(rule, evaluator, t, absent)
    no_data = _without_data(rule, evaluator, t, absent) if rule.no_data != "resolve" else set()
    for key in list(state.active):
        alert = state.active[key]
        if key not in current:
            if alert.state is not State.INACTIVE and key in no_data:
                if rule.no_data == "keep_state":
                    continue  # the series are gone: neither advance nor resolve
                # "fire": missing data counts as the condition being true
            elif not _keeps_firing(rule, alert, t, key in holds):
                expired = alert.resolved_at and t - alert.resolved_at > RESOLVED_RETENTION_MS
                if alert.state is State.PENDING or expired:
                    del state.active[key]
                if alert.state is not State.INACTIVE:
                    alert.state = State.INACTIVE
                    alert.resolved_at = t
                continue
        else:
            alert.keep_firing_since = 0
        if alert.state is State.PENDING and t - alert.active_at >= rule.for_ms:
            alert.state = State.FIRING
            alert.fired_at = t


def _keeps_firing(rule: AlertRule, alert: Alert, t: int, may_resolve: bool) -> bool:
    """Whether a firing alert whose condition is gone stays firing: keep_firing_for, or hysteresis."""
    if alert.state is not State.FIRING:
        return False
    if rule.resolve_when is not None and not may_resolve:
        return True
    if rule.keep_firing_for_ms > 0:
        if not alert.keep_firing_since:
            alert.keep_firing_since = t
        return t - alert.keep_firing_since < rule.keep_firing_for_ms
    return False


def _resolve_condition(rule: AlertRule, evaluator: Evaluator, t: int, alerts: list[Alert]) -> set[Labels]:
    """The alerts for which the rule's resolve condition holds now (all of them without one)."""
    if rule.resolve_when is None or not alerts:
        return {a.labels for a in alerts}
    result = evaluator.instant(rule.resolve_when, t)
    if isinstance(result, float):
        return {a.labels for a in alerts} if result else set()
    samples = _only_vector(result)
    return {a.labels for a in alerts if any(_agrees(s.labels, a.source) for s in samples)}


def _without_data(rule: AlertRule, evaluator: Evaluator, t: int, alerts: list[Alert]) -> set[Labels]:
    """The alerts none of whose expression's selectors return a series about them any more."""
    if not alerts:
        return set()
    found: list[Labels] = []
    for selector in _selectors(rule.expr):
        value = evaluator.instant(selector, t)
        if isinstance(value, list):
            found.extend(x.labels for x in value)
    return {a.labels for a in alerts if not any(_agrees(labels, a.source) for labels in found)}


def _agrees(labels: Labels, source: Labels) -> bool:
    """Labels describe the same thing as an alert's source labels: equal on every shared name."""
    mine = dict(source)
    return all(mine.get(k, v) == v for k, v in labels if k != NAME)


def _selectors(expr: Any) -> list[Any]:
    """The instant-vector selectors an expression reads (range selectors as their instant form)."""
    out: list[Any] = []
    stack = [expr]
    while stack:
        e = stack.pop()
        if isinstance(e, ast.VectorSelector):
            out.append(e)
        elif isinstance(e, ast.MatrixSelector):
            out.append(e.selector)
        else:
            stack.extend(reversed(ast.children(e)))
    return out


def _only_vector(value: Any) -> Vector:
    if isinstance(value, list) and all(isinstance(s, Sample) for s in value):
        return value
    raise EvalError("a rule expression must give an instant vector or a scalar")


class RuleEngine:
    """Evaluates rule groups in order; alert state lives in `states` (one per alerting rule)."""

    def __init__(self, groups: list[RuleGroup], evaluator: Evaluator, sink: Sink,
                 external_labels: dict[str, str] | None = None) -> None:
        self.groups = groups
        self.evaluator = evaluator
        self.sink = sink
        self.external_labels = external_labels or {}
        self.states: dict[tuple[str, str, int], RuleState] = {
            (g.file, g.name, i): RuleState(r) for g in groups for i, r in enumerate(g.rules)}

    def eval_group(self, group: RuleGroup, t: int) -> None:
        """Evaluate every rule of a group at `t`; a failing rule is recorded and the others go on."""
        for i, rule in enumerate(group.rules):
            state = self.states[(group.file, group.name, i)]
            try:
                if isinstance(rule, RecordRule):
                    eval_record(rule, self.evaluator, t, self.sink)
                else:
                    eval_alert(state, self.evaluator, t, self.external_labels)
                state.health, state.last_error = "ok", ""
            except EvalError as exc:
                state.health, state.last_error = "err", str(exc)
            except Exception as exc:  # a bug in gpumon's evaluator: that rule's error, never the group's
                state.health, state.last_error = "err", f"internal error: {type(exc).__name__}: {exc}"
            state.last_eval_ms = t

    def alerts(self) -> list[Alert]:
        return [a for s in self.states.values() for a in s.active.values()]
