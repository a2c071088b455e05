"""Notifications in the daemon: alerts from the rule engine -> route tree and groups -> outbox ->
receivers. Runs as two asyncio tasks; delivery never blocks polling or rule evaluation (a slow or
dead receiver only grows the outbox)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import structlog

from gpumon.model import Sample
from gpumon.notify import slack
from gpumon.notify.outbox import Entry, Outbox, backoff
from gpumon.notify.payload import AlertEvent, webhook_payload
from gpumon.notify.routing import Group, InhibitRule, Route
from gpumon.notify.silences import Silences
from gpumon.notify.slack import TokenBucket
from gpumon.notify.webhook import Outcome, WebhookTarget, deliver
from gpumon.rules.alerting import Alert, State

log = structlog.get_logger("gpumon.notify")

OUTBOX_FILE = "outbox.sqlite"
TICK_S = 0.25  # how often groups are checked and the outbox is polled


@dataclass
class Receiver:
    """A webhook (Alertmanager's JSON) or, with `slack` set, a Slack incoming webhook."""

    target: WebhookTarget
    send_resolved: bool = True
    slack: SlackStyle | None = None


@dataclass
class SlackStyle:
    channel: str | None = None
    username: str | None = None
    bucket: TokenBucket = field(default_factory=TokenBucket)


@dataclass
class NotifySetup:
    """What the `notify` configuration builds: the route tree, receivers and delivery policies."""

    route: Route
    receivers: dict[str, Receiver]
    max_age_s: float
    external_url: str
    inhibit_rules: list[InhibitRule]


class NotifyService:
    def __init__(self, route: Route, receivers: dict[str, Receiver], state_dir: Path, *,
                 max_age_s: float = 86400.0, external_url: str = "",
                 inhibit_rules: list[InhibitRule] | None = None, silences: Silences | None = None) -> None:
        self.route = route
        self.inhibit_rules = inhibit_rules or []
        self.silences = silences
        self.receivers = receivers
        self.max_age_s = max_age_s
        self.external_url = external_url
        self.outbox = Outbox(state_dir / OUTBOX_FILE)
        self.groups: dict[tuple[str, str], Group] = {}
        self.disabled: set[str] = set()
        self.counts: Counter[tuple[str, str]] = Counter()  # (receiver, outcome) -> n
        self.latency: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None

    def reconfigure(self, setup: NotifySetup) -> None:
        """Take a reloaded configuration without losing what is in flight: the outbox (queued
        notifications, also for receivers that are gone: those fail as removed when due) and the
        groups whose route is still there with the same grouping, which keep their timers and what
        they last sent, so a reload re-notifies nothing. Groups of a removed or regrouped route are
        dropped; their alerts form the new groups at the next evaluation. Receivers disabled by a
        410 are enabled again."""
        routes = {r.id: r for r in _walk(setup.route)}
        kept: dict[tuple[str, str], Group] = {}
        for key, group in self.groups.items():
            route = routes.get(group.route.id)
            if route is not None and route.group_by == group.route.group_by:
                group.route = route
                kept[key] = group
        self.groups = kept
        self.route, self.receivers, self.inhibit_rules = setup.route, setup.receivers, setup.inhibit_rules
        self.max_age_s, self.external_url = setup.max_age_s, setup.external_url
        self.disabled.clear()
        self._wake.set()

    # --- alerts in -----------------------------------------------------------------------------

    def update(self, alerts: list[Alert], now: float | None = None) -> None:
        """Take the rule engine's alerts after an evaluation (firing and recently resolved ones)."""
        now = time.time() if now is None else now
        firing = [dict(a.labels) for a in alerts if a.state is State.FIRING]
        for alert in alerts:
            if alert.state is State.PENDING:
                continue
            labels = dict(alert.labels)
            resolved = alert.state is State.INACTIVE
            if not resolved and any(rule.inhibited(labels, firing) for rule in self.inhibit_rules):
                continue
            if not resolved and self.silences is not None and self.silences.silenced(labels, now):
                continue
            event = AlertEvent(labels, {k: v for k, v in alert.annotations.items() if not k.startswith("gpumon_")},
                               alert.active_at / 1000, alert.resolved_at / 1000 if resolved else None)
            for route in self.route.match(labels):
                if resolved and not self.receivers[route.receiver].send_resolved:
                    continue
                group_labels = route.group_labels(labels)
                key = (route.id, json.dumps(group_labels, sort_keys=True))
                group = self.groups.get(key)
                if group is None:
                    if resolved:
                        continue  # nothing was ever said about it
                    group = self.groups[key] = Group(route, group_labels, now, next_flush=now + route.group_wait)
                group.add(event)
        self._wake.set()

    def flush(self, now: float) -> int:
        """Queue a notification for every group that is due; returns how many were queued."""
        queued = 0
        for key, group in list(self.groups.items()):
            events = group.due(now)
            if events:
                body = webhook_payload(group.route.receiver, group.key, group.labels, events, self.external_url)
                self.outbox.put(group.route.receiver, json.dumps(body).encode(), now)
                queued += 1
            if not group.alerts and now - group.last_sent_at > group.route.repeat_interval:
                del self.groups[key]
        return queued

    # --- delivery ------------------------------------------------------------------------------

    def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._tasks = [asyncio.create_task(self._run(), name="gpumon-notify")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        self.outbox.close()

    async def _run(self) -> None:
        while True:
            now = time.time()
            self.flush(now)
            await self.deliver_due(now)
            self._wake.clear()
            # Sleep until the next group or retry is due (at most TICK_S): a new alert's notification
            # goes out when its group_wait ends, not at the next tick.
            due = [g.next_flush for g in self.groups.values() if g.alerts]
            if (retry := self.outbox.next_due()) is not None:
                due.append(retry)
            wait = min(TICK_S, max(0.005, min(due, default=now + TICK_S) - time.time()))
            with contextlib.suppress(asyncio.TimeoutError):  # not the builtin on Python 3.10
                await asyncio.wait_for(self._wake.wait(), wait)

    async def deliver_due(self, now: float) -> None:
        """Try every due entry; receivers in parallel, each receiver's entries in order."""
        by_receiver: dict[str, list[Entry]] = {}
        for entry in self.outbox.due(now):
            by_receiver.setdefault(entry.receiver, []).append(entry)
        await asyncio.gather(*(self._deliver_all(name, entries) for name, entries in by_receiver.items()))

    async def _deliver_all(self, name: str, entries: list[Entry]) -> None:
        receiver = self.receivers.get(name)
        for entry in entries:
            if receiver is None or name in self.disabled:
                self.outbox.fail(entry, "failed", "receiver removed or disabled")
                continue
            if time.time() - entry.created > self.max_age_s:
                self.outbox.fail(entry, "dead", "undelivered past max_age")
                self.counts[(name, "dead_lettered")] += 1
                log.error("notification dead-lettered", receiver=name, id=entry.id, attempts=entry.attempts)
                continue
            assert self._session is not None
            body = entry.body
            if receiver.slack is not None:
                await receiver.slack.bucket.take()
                body = slack.render(json.loads(body), receiver.slack.channel, receiver.slack.username)
            result = await deliver(self._session, receiver.target, entry.id, body)
            if result.outcome is Outcome.DELIVERED:
                self.outbox.delivered(entry.id)
                self.counts[(name, "sent")] += 1
                self.latency[name] = time.time() - entry.created
            elif result.outcome is Outcome.RETRY:
                wait = result.retry_after if result.retry_after is not None else backoff(entry.attempts)
                self.outbox.retry(entry, time.time() + wait, result.detail)
                self.counts[(name, "retried")] += 1
                log.warning("notification delivery failed; will retry", receiver=name, id=entry.id,
                            error=result.detail, retry_in_s=round(wait, 1))
                break  # keep this receiver's order: later entries wait for this one
            else:
                self.outbox.fail(entry, "failed", result.detail)
                self.counts[(name, "failed")] += 1
                log.error("notification rejected by the receiver; kept in the outbox, not retried",
                          receiver=name, id=entry.id, error=result.detail)
                if result.outcome is Outcome.GONE:
                    self.disabled.add(name)
                    log.error("receiver answered 410 Gone: disabled until the next reload", receiver=name)

    # --- metrics -------------------------------------------------------------------------------

    def sample(self, now: float | None = None) -> Sample:
        now = time.time() if now is None else now
        s = Sample("notify", "notify", now)
        stats = self.outbox.stats(now)
        for name in self.receivers:
            r = (("receiver", name),)
            for outcome, metric in (("sent", "gpumon_notifications_sent_total"),
                                    ("failed", "gpumon_notifications_failed_total"),
                                    ("retried", "gpumon_notifications_retried_total"),
                                    ("dead_lettered", "gpumon_notifications_dead_lettered_total")):
                s.add(metric, r, self.counts[(name, outcome)])
            queued, oldest = stats.get(name, (0, 0.0))
            s.add("gpumon_notification_queue_length", r, queued)
            s.add("gpumon_notification_oldest_queued_age_seconds", r, oldest)
            if name in self.latency:
                s.add("gpumon_notification_delivery_latency_seconds", r, self.latency[name])
            s.add("gpumon_notification_receiver_enabled", r, 0.0 if name in self.disabled else 1.0)
        return s


def _walk(route: Route) -> list[Route]:
    """A route and all routes below it."""
    return [route, *(r for child in route.routes for r in _walk(child))]
