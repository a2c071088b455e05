"""Runs rule groups inside the daemon: evaluates them over the store on their interval, keeps alert
state in SQLite, exports `gpumon_alerts` series and serves the Prometheus-shaped HTTP API."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from gpumon.health import Health, start
from gpumon.lifecycle import Service
from gpumon.model import Labels
from gpumon.model import Sample as StoreSample
from gpumon.rounds import Round
from gpumon.rules.alerting import Alert, RuleEngine, RuleState, State
from gpumon.rules.promql import Evaluator, Matcher, Series
from gpumon.rules.rulefile import AlertRule, RuleGroup, load_rule_files
from gpumon.rules.state import AlertStateDB
from gpumon.store import Store

log = structlog.get_logger("gpumon.rules")

BUNDLED_RULES = Path(__file__).resolve().parent / "bundled"
STATE_FILE = "alerts.sqlite"


class StoreStorage:
    """The store as PromQL storage."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def select(self, matchers: Sequence[Matcher], start: int, end: int) -> list[Series]:
        return [Series(*found) for found in self.store.select(matchers, start, end)]

    def select_last(self, matchers: Sequence[Matcher], start: int, end: int) -> list[Series]:
        return [Series(*found) for found in self.store.select(matchers, start, end, last_only=True)]


@dataclass
class Evaluation:
    seconds: float = 0.0
    at: float = 0.0


class RuleService(Service):
    """Evaluates each group when its interval has passed, right after the round that is in the store
    then (`on_round`, subscribed to the sampler's rounds before the exposition, so the alert series
    an evaluation makes are in that round's exposition). Should rounds stop coming (a sampler that
    hangs), a watchdog evaluates the groups on their intervals anyway: the alerts about a stalled
    poll must still fire."""

    def __init__(self, groups: list[RuleGroup], store: Store, *, default_interval_s: float,
                 state_dir: Path | None, external_labels: dict[str, str] | None = None,
                 health: Health | None = None,
                 on_evaluated: Callable[[list[Alert]], None] | None = None) -> None:
        self.store = store
        self.default_interval_s = default_interval_s
        self.external_labels = external_labels or {}
        self.health = health or Health()
        self.db = AlertStateDB(state_dir / STATE_FILE, self.health) if state_dir is not None else None
        self._watchdog: asyncio.Task[None] | None = None
        self.evaluations: dict[tuple[str, str], Evaluation] = {}
        self.on_evaluated = on_evaluated  # notifications hook here
        self._due: dict[tuple[str, str], float] = {}  # group -> Unix time of its next evaluation
        self._logged: dict[tuple[str, str, int], str] = {}  # (file, group, rule index) -> error last logged
        self._install(groups)

    def _install(self, groups: list[RuleGroup]) -> None:
        self.groups = groups
        self._due = {(g.file, g.name): 0.0 for g in groups}  # each evaluates at the first round
        # A subquery without a step (`x[1h:]`) steps by the default evaluation interval, as Prometheus's
        # global evaluation_interval.
        evaluator = Evaluator(StoreStorage(self.store), subquery_step_ms=round(self.default_interval_s * 1000))
        self.engine = RuleEngine(groups, evaluator, self._record, self.external_labels)
        self._logged = {}
        if self.db is not None:
            restored = self.db.restore(list(self.engine.states.values()))
            if restored:
                log.info("alert state restored", alerts=restored)

    def _record(self, labels: Labels, t: int, value: float) -> None:
        name = dict(labels)["__name__"]
        rest = tuple(p for p in labels if p[0] != "__name__")
        self.store.put(StoreSample(f"record:{name}:{rest}", "rules", t / 1000, [(name, rest, value)]))

    def interval_of(self, group: RuleGroup) -> float:
        return group.interval_ms / 1000 if group.interval_ms else self.default_interval_s

    # --- running -------------------------------------------------------------------------------

    def start(self) -> None:
        self._watchdog = start("rules-watchdog", self._watch, self.health)

    async def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
            self._watchdog = None
        self.save()

    async def reload(self, groups: list[RuleGroup]) -> None:
        """Swap in new groups; alert state of rules that are unchanged carries over."""
        self.save()
        self._install(groups)

    def on_round(self, round_: Round) -> None:
        """After a round is stored: evaluate every group whose interval has passed."""
        self.evaluate_due(round_.at)

    def evaluate_due(self, now: float, overdue: bool = False) -> None:
        """Evaluate the groups due at `now` (with `overdue`, only those late by a whole interval)."""
        for group in self.groups:
            key, interval = (group.file, group.name), self.interval_of(group)
            if now >= self._due[key] + (interval if overdue else 0.0):
                self._due[key] = now + interval
                self.evaluate(group, now)

    async def _watch(self) -> None:
        """Evaluate groups that no round has let evaluate for a whole interval."""
        while True:
            await asyncio.sleep(min((self.interval_of(g) for g in self.groups), default=self.default_interval_s))
            self.evaluate_due(time.time(), overdue=True)

    def evaluate(self, group: RuleGroup, now: float | None = None) -> None:
        started = time.perf_counter()
        at = time.time() if now is None else now
        self.engine.eval_group(group, round(at * 1000))
        self.evaluations[(group.file, group.name)] = Evaluation(time.perf_counter() - started, at)
        for i, state in enumerate(self._states(group)):  # a failure is logged when it starts or changes
            key = (group.file, group.name, i)
            if state.health == "err" and self._logged.get(key) != state.last_error:
                log.warning("rule evaluation failed", group=group.name, rule=state.rule.name, error=state.last_error)
                self._logged[key] = state.last_error
            elif state.health == "ok" and self._logged.pop(key, None) is not None:
                log.info("rule evaluation recovered", group=group.name, rule=state.rule.name)
        self.save()
        self.store.put(self.alerts_sample(at))
        if self.on_evaluated is not None:
            self.on_evaluated(self.engine.alerts())

    def save(self) -> None:
        if self.db is not None:
            self.db.save(list(self.engine.states.values()))

    def _states(self, group: RuleGroup) -> list[RuleState]:
        return [self.engine.states[(group.file, group.name, i)] for i in range(len(group.rules))]

    # --- outputs -------------------------------------------------------------------------------

    def alerts_sample(self, at: float) -> StoreSample:
        """`gpumon_alerts` (1 per pending/firing alert) and the time each became active, like
        Prometheus's ALERTS and ALERTS_FOR_STATE, under names that cannot collide with them."""
        sample = StoreSample("alerts", "rules", at)
        for g in self.groups:
            ev = self.evaluations.get((g.file, g.name), Evaluation())
            sample.add("gpumon_rule_group_last_duration_seconds", (("rule_group", g.name),), ev.seconds)
            failing = sum(1 for s in self._states(g) if s.health == "err")
            sample.add("gpumon_rule_evaluation_failures", (("rule_group", g.name),), failing)
        for alert in self.engine.alerts():
            if alert.state is State.INACTIVE:
                continue
            sample.add("gpumon_alerts", tuple(sorted((*alert.labels, ("alertstate", alert.state.value)))), 1.0)
            sample.add("gpumon_alerts_active_since_timestamp_seconds", alert.labels, alert.active_at / 1000)
        return sample

    def api_alerts(self) -> dict[str, Any]:
        return {"status": "success", "data": {"alerts": [
            _alert_json(a) for a in self.engine.alerts() if a.state is not State.INACTIVE]}}

    def api_rules(self) -> dict[str, Any]:
        groups = []
        for g in self.groups:
            ev = self.evaluations.get((g.file, g.name), Evaluation())
            rules = []
            for state in self._states(g):
                rule = state.rule
                base: dict[str, Any] = {"name": rule.name, "query": rule.expr_text, "health": state.health,
                                        "lastError": state.last_error, "labels": _label_texts(rule),
                                        "evaluationTime": 0, "lastEvaluation": _rfc3339(state.last_eval_ms / 1000)}
                if isinstance(rule, AlertRule):
                    alerts = [_alert_json(a) for a in state.active.values() if a.state is not State.INACTIVE]
                    states = {a["state"] for a in alerts}
                    base.update(type="alerting", duration=rule.for_ms / 1000,
                                keepFiringFor=rule.keep_firing_for_ms / 1000,
                                annotations=rule.annotation_texts, alerts=alerts,
                                state="firing" if "firing" in states else "pending" if states else "inactive")
                else:
                    base["type"] = "recording"
                rules.append(base)
            groups.append({"name": g.name, "file": g.file, "interval": self.interval_of(g), "limit": g.limit or 0,
                           "rules": rules, "evaluationTime": ev.seconds, "lastEvaluation": _rfc3339(ev.at)})
        return {"status": "success", "data": {"groups": groups}}


def load_groups(patterns: list[str], base: Path | None = None) -> list[RuleGroup]:
    """The groups of the configured rule files, or the bundled rules when none are configured."""
    from gpumon.rules.rulefile import expand_globs

    paths = expand_globs(patterns, base) if patterns else sorted(BUNDLED_RULES.glob("*.rules.yml"))
    return load_rule_files(paths)


def _label_texts(rule: Any) -> dict[str, str]:
    return dict(rule.label_texts) if isinstance(rule, AlertRule) else dict(rule.labels)


def _alert_json(a: Any) -> dict[str, Any]:
    return {"labels": dict(a.labels), "annotations": a.annotations, "state": a.state.value,
            "activeAt": _rfc3339(a.active_at / 1000), "value": _go_float(a.value)}


def _rfc3339(seconds: float) -> str:
    if not seconds:
        return "0001-01-01T00:00:00Z"
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _go_float(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return format(v, ".16g") if v != int(v) or abs(v) >= 1e21 else str(int(v))
