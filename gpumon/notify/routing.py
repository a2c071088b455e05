"""Alertmanager's route tree and aggregation groups, on one host.

A route matches alerts by label matchers; the first matching child wins unless it says `continue`.
Settings (receiver, group_by, group_wait, group_interval, repeat_interval) are inherited from the
parent. Alerts of one route with equal `group_by` labels form a group: its first notification waits
`group_wait` (so eight GPUs crossing a threshold together make one message), changes are sent at
most every `group_interval`, and an unchanged group is repeated every `repeat_interval`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from gpumon.notify.payload import AlertEvent, label_set
from gpumon.rules.promql import Matcher

_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*(?:"((?:[^"\\]|\\.)*)"|(\S*))\s*')


def parse_matcher(text: str) -> Matcher:
    """Alertmanager matcher syntax: name="value", name!=value, name=~"re", name!~"re"."""
    m = _MATCHER.fullmatch(text)
    if not m:
        raise ValueError(f"{text!r} is not a matcher like severity=\"critical\"")
    value = m.group(3) if m.group(3) is not None else (m.group(4) or "")
    value = value.replace('\\"', '"').replace("\\\\", "\\")
    regex = None
    if m.group(2) in ("=~", "!~"):
        try:
            regex = re.compile(f"(?:{value})", re.DOTALL)  # anchored by fullmatch, as Alertmanager anchors
        except re.error as exc:
            raise ValueError(f"{text!r}: invalid regular expression: {exc}") from None
    return Matcher(m.group(1), m.group(2), value, regex)


@dataclass
class Route:
    receiver: str
    group_by: tuple[str, ...]
    group_wait: float
    group_interval: float
    repeat_interval: float
    matchers: tuple[Matcher, ...] = ()
    continue_: bool = False
    routes: list[Route] = field(default_factory=list)
    key: str = "{}"  # Alertmanager's route key, the prefix of group keys

    def match(self, labels: dict[str, str]) -> list[Route]:
        """The routes an alert ends at: deepest matching children, or this route itself."""
        if not all(m.matches(labels) for m in self.matchers):
            return []
        found: list[Route] = []
        for child in self.routes:
            hit = child.match(labels)
            found.extend(hit)
            if hit and not child.continue_:
                break
        return found or [self]

    def group_labels(self, labels: dict[str, str]) -> dict[str, str]:
        if "..." in self.group_by:
            return dict(labels)
        return {k: labels[k] for k in self.group_by if k in labels}


def build_route(cfg: Any, parent: Route | None = None) -> Route:
    """A Route tree from the config model (fields may be None: inherited from the parent)."""
    def pick(name: str, default: Any) -> Any:
        value = getattr(cfg, name)
        return value if value is not None else (getattr(parent, name) if parent is not None else default)
    matchers = tuple(parse_matcher(m) for m in cfg.matchers)
    key = "{}" if parent is None else parent.key + "/" + "{" + ",".join(
        f'{m.name}{m.op}"{m.value}"' for m in matchers) + "}"
    route = Route(receiver=pick("receiver", ""), group_by=tuple(pick("group_by", ("alertname",))),
                  group_wait=pick("group_wait", 30.0), group_interval=pick("group_interval", 300.0),
                  repeat_interval=pick("repeat_interval", 4 * 3600.0), matchers=matchers,
                  continue_=bool(cfg.continue_), key=key)
    route.routes = [build_route(child, route) for child in cfg.routes]
    return route


@dataclass
class Group:
    route: Route
    labels: dict[str, str]
    created: float
    alerts: dict[str, AlertEvent] = field(default_factory=dict)
    next_flush: float = 0.0
    last_sent: frozenset[tuple[str, str]] = frozenset()
    last_sent_at: float = 0.0
    resolved_sent: dict[str, float] = field(default_factory=dict)  # fingerprint -> startsAt, told once

    def add(self, event: AlertEvent) -> None:
        """Take an alert's current state; a resolution already notified is not taken again."""
        if event.status == "resolved" and self.resolved_sent.get(event.fingerprint) == event.starts_at:
            return
        self.alerts[event.fingerprint] = event

    @property
    def key(self) -> str:
        return f"{self.route.key}:{label_set(self.labels)}"

    def due(self, now: float) -> list[AlertEvent] | None:
        """The alerts to notify now, or None when nothing is due (not yet, or nothing new)."""
        if now < self.next_flush or not self.alerts:
            return None
        self.next_flush = now + self.route.group_interval
        current = frozenset((a.fingerprint, a.status) for a in self.alerts.values())
        firing = any(a.status == "firing" for a in self.alerts.values())
        changed = current != self.last_sent
        repeat = firing and now - self.last_sent_at >= self.route.repeat_interval
        if not changed and not repeat:
            return None
        events = sorted(self.alerts.values(), key=lambda a: a.fingerprint)
        self.last_sent, self.last_sent_at = current, now
        for fp in [fp for fp, a in self.alerts.items() if a.status == "resolved"]:
            self.resolved_sent[fp] = self.alerts.pop(fp).starts_at  # told once; not repeated
        return events


@dataclass(frozen=True)
class InhibitRule:
    """Alertmanager's inhibition: while a source alert fires, target alerts with the same `equal`
    labels are not notified."""

    source: tuple[Matcher, ...]
    target: tuple[Matcher, ...]
    equal: tuple[str, ...]

    def inhibited(self, labels: dict[str, str], firing: list[dict[str, str]]) -> bool:
        if not all(m.matches(labels) for m in self.target):
            return False
        return any(all(m.matches(src) for m in self.source) and src is not labels
                   and all(src.get(k, "") == labels.get(k, "") for k in self.equal) for src in firing)


def build_inhibit_rules(cfgs: list[Any]) -> list[InhibitRule]:
    return [InhibitRule(tuple(parse_matcher(m) for m in c.source_matchers),
                        tuple(parse_matcher(m) for m in c.target_matchers), tuple(c.equal)) for c in cfgs]
