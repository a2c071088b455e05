"""Alertmanager's route tree and aggregation groups, on one host.

A route matches alerts by label matchers; the first matching child wins unless it says `continue`.
Settings (receiver, group_by, group_wait, group_interval, repeat_interval) are inherited from the
parent. Alerts of one route with equal `group_by` labels form a group: its first notification waits
`group_wait` (so eight GPUs crossing a threshold together make one message), changes are sent at
most every `group_interval`, and an unchanged group is repeated every `repeat_interval`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gpumon.notify.payload import AlertEvent, label_set
from gpumon.regex import RegexError, anchored
from gpumon.rules.promql import Matcher

# Alertmanager 0.25's classic matcher syntax (pkg/labels/parse.go), which its configuration, amtool
# and silences read. Go's \s is ASCII whitespace; the value's trailing whitespace is cut beforehand
# (Go's lazy `(?s).*?\s*$` does that), which keeps this pattern free of backtracking.
_WS = "\t\n\f\r "
_MATCHER = re.compile(f"[{_WS}]*([a-zA-Z_:][a-zA-Z0-9_:]*)[{_WS}]*(=~|=|!=|!~)[{_WS}]*(.*)", re.DOTALL)
_OP_ORDER = {"=": 0, "!=": 1, "=~": 2, "!~": 3}  # Alertmanager's MatchType values, for sorting


def parse_matchers(text: str) -> list[Matcher]:
    """Alertmanager's ParseMatchers: `a="b"`, `a=b, c!~"d.*"` or `{a="b", c=~"d"}`, split on commas
    outside double quotes. Raises ValueError with Alertmanager's message."""
    text = text.removeprefix("{").removesuffix("}")
    tokens: list[str] = []
    token: list[str] = []
    inside_quotes = escaped = False
    for c in text:
        if c == ",":
            if not inside_quotes:
                tokens.append("".join(token))
                token = []
                continue
        elif c == '"':
            if not escaped:
                inside_quotes = not inside_quotes
            else:
                escaped = False
        elif c == "\\":
            escaped = not escaped
        else:
            escaped = False
        token.append(c)
    if last := "".join(token).strip():
        tokens.append(last)
    return [parse_matcher(t) for t in tokens]


def parse_matcher(text: str) -> Matcher:
    """One matcher: a label name, one of = != =~ !~, and a value that may be double-quoted, with
    OpenMetrics escapes (\\" \\n \\\\; any other backslash is literal)."""
    m = _MATCHER.fullmatch(text.rstrip(_WS))
    if not m:
        raise ValueError(f"bad matcher format: {text}")
    name, op, raw = m.groups()
    body, quoted = (raw[1:], True) if raw.startswith('"') else (raw, False)
    value: list[str] = []
    escaped = False
    for i, c in enumerate(body):
        if escaped:
            escaped = False
            value.append("\n" if c == "n" else c if c in '"\\' else "\\" + c)
        elif c == "\\" and i < len(body) - 1:
            escaped = True
        elif c == '"':
            if not quoted or i < len(body) - 1:
                raise ValueError(f"matcher value contains unescaped double quote: {raw}")
            quoted = False
        else:
            value.append(c)
    if quoted:
        raise ValueError(f"matcher value contains unescaped double quote: {raw}")
    return new_matcher(name, op, "".join(value))


def new_matcher(name: str, op: str, value: str) -> Matcher:
    """A matcher; a regex is anchored at both ends and run by RE2, as Alertmanager's (Go) is."""
    if any("\ud800" <= c <= "\udfff" for c in value):
        raise ValueError(f"matcher value not valid UTF-8: {value!r}")
    regex = None
    if op in ("=~", "!~"):
        try:
            regex = anchored(value)
        except RegexError as exc:
            raise ValueError(str(exc)) from None
    return Matcher(name, op, value, regex)


def matchers_of(texts: Iterable[str]) -> tuple[Matcher, ...]:
    """A configuration's `matchers:` list: each entry may hold several comma-separated matchers."""
    return tuple(m for text in texts for m in parse_matchers(text))


def matchers_key(matchers: Iterable[Matcher]) -> str:
    """Alertmanager's Matchers.String() of a route's sorted matchers: `{a="b",c=~"d"}`. (Values are
    quoted as JSON; Go's %q differs only for control characters other than \\n \\t \\r.)"""
    ordered = sorted(matchers, key=lambda m: (m.name, m.value, _OP_ORDER[m.op]))
    return "{" + ",".join(f"{m.name}{m.op}{json.dumps(m.value, ensure_ascii=False)}" for m in ordered) + "}"


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
    key: str = "{}"  # Alertmanager's route key, the prefix of group keys (siblings may share it)
    id: str = "{}"  # Alertmanager's route ID: the key with each route's position, unique in the tree

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


def build_route(cfg: Any, parent: Route | None = None, position: int = 0) -> Route:
    """A Route tree from the config model (fields may be None: inherited from the parent)."""
    def pick(name: str, default: Any) -> Any:
        value = getattr(cfg, name)
        return value if value is not None else (getattr(parent, name) if parent is not None else default)
    matchers = matchers_of(cfg.matchers)
    own = matchers_key(matchers)
    key = own if parent is None else f"{parent.key}/{own}"
    ident = own if parent is None else f"{parent.id}/{own}/{position}"
    # No group_by anywhere up the tree: Alertmanager puts all of the route's alerts in one group.
    route = Route(receiver=pick("receiver", ""), group_by=tuple(pick("group_by", ())),
                  group_wait=pick("group_wait", 30.0), group_interval=pick("group_interval", 300.0),
                  repeat_interval=pick("repeat_interval", 4 * 3600.0), matchers=matchers,
                  continue_=bool(cfg.continue_), key=key, id=ident)
    route.routes = [build_route(child, route, i) for i, child in enumerate(cfg.routes)]
    return route


def group_id(route: Route, labels: dict[str, str]) -> str:
    """A group's identity: unique among all groups, unlike its key, which sibling routes with equal
    matchers share."""
    return f"{route.id}:{label_set(labels)}"


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

    def forget_missing(self, present: set[str], reported: set[str], now: float) -> None:
        """Alerts no longer in this group: one the rule engine still reports now routes elsewhere
        (a reload changed the routes) and leaves quietly; one it no longer reports at all (its rule
        was removed, or a restart lost its state) resolves now, as Alertmanager resolves an alert
        nobody refreshes."""
        for fp, event in list(self.alerts.items()):
            if fp in present:
                continue
            if fp in reported:
                del self.alerts[fp]
            elif event.status == "firing":
                self.alerts[fp] = AlertEvent(event.labels, event.annotations, event.starts_at, now,
                                             event.generator_url)

    @property
    def key(self) -> str:
        return f"{self.route.key}:{label_set(self.labels)}"

    @property
    def id(self) -> str:
        return group_id(self.route, self.labels)

    def due(self, now: float, muted: Callable[[AlertEvent], bool] = lambda _: False) -> list[AlertEvent] | None:
        """The alerts to notify now, or None when nothing is due (not yet, or nothing new). Firing
        alerts that are `muted` (silenced, inhibited) are left out, as Alertmanager's mute stage does;
        they stay in the group and show up again when the silence ends."""
        if now < self.next_flush or not self.alerts:
            return None
        self.next_flush = now + self.route.group_interval
        visible = [a for a in self.alerts.values() if a.status == "resolved" or not muted(a)]
        current = frozenset((a.fingerprint, a.status) for a in visible)
        firing = any(a.status == "firing" for a in visible)
        changed = current != self.last_sent
        repeat = firing and now - self.last_sent_at >= self.route.repeat_interval
        if not visible or (not changed and not repeat):
            return None
        events = sorted(visible, key=lambda a: a.fingerprint)
        self.last_sent, self.last_sent_at = current, now
        for fp in [a.fingerprint for a in visible if a.status == "resolved"]:
            self.resolved_sent[fp] = self.alerts.pop(fp).starts_at  # told once; not repeated
        return events

    def log_state(self) -> str:
        """What a restart needs to carry on where this group left off (the notification log)."""
        return json.dumps({"route": self.route.id, "labels": self.labels, "created": self.created,
                           "last_sent": sorted(self.last_sent), "last_sent_at": self.last_sent_at,
                           "resolved_sent": self.resolved_sent,
                           "alerts": [[a.labels, a.annotations, a.starts_at, a.ends_at, a.generator_url]
                                      for a in self.alerts.values()]})

    @classmethod
    def from_log(cls, route: Route, state: str, now: float) -> Group:
        """A group as `log_state` saved it. Raises ValueError (and KeyError, TypeError) on a bad row."""
        doc = json.loads(state)
        group = cls(route, dict(doc["labels"]), float(doc["created"]), next_flush=now,
                    last_sent=frozenset((str(fp), str(st)) for fp, st in doc["last_sent"]),
                    last_sent_at=float(doc["last_sent_at"]),
                    resolved_sent={str(k): float(v) for k, v in doc["resolved_sent"].items()})
        for labels, notes, starts, ends, url in doc["alerts"]:
            group.add(AlertEvent(dict(labels), dict(notes), float(starts),
                                 None if ends is None else float(ends), str(url)))
        return group


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
    return [InhibitRule(matchers_of(c.source_matchers), matchers_of(c.target_matchers), tuple(c.equal))
            for c in cfgs]
