"""Notifications in the daemon: alerts from the rule engine -> route tree and groups -> outbox ->
receivers.

One dispatcher task turns due groups into queued notifications; each receiver has its own delivery
task, so a slow or dead receiver delays nobody else (one request in flight per receiver keeps its
notifications in order). Every task is supervised. Delivery never blocks polling or rule evaluation:
a receiver that cannot keep up only grows the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import structlog

from gpumon.health import Health, start
from gpumon.lifecycle import Service
from gpumon.model import Sample
from gpumon.notify import slack
from gpumon.notify.outbox import Entry, Outbox, backoff
from gpumon.notify.payload import AlertEvent, fingerprint, webhook_payload
from gpumon.notify.routing import Group, InhibitRule, Route, group_id
from gpumon.notify.silences import Silences
from gpumon.notify.slack import TokenBucket
from gpumon.notify.webhook import Outcome, WebhookTarget, deliver
from gpumon.rules.alerting import Alert, State

log = structlog.get_logger("gpumon.notify")

OUTBOX_FILE = "outbox.sqlite"
MAX_WAIT_S = 5.0  # a task sleeps at most this long without being woken (a safety net, not a tick)


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


class NotifyService(Service):
    def __init__(self, route: Route, receivers: dict[str, Receiver], state_dir: Path, *,
                 max_age_s: float = 86400.0, external_url: str = "",
                 inhibit_rules: list[InhibitRule] | None = None, silences: Silences | None = None,
                 health: Health | None = None) -> None:
        self.route = route
        self.inhibit_rules = inhibit_rules or []
        self.silences = silences
        self.receivers = receivers
        self.max_age_s = max_age_s
        self.external_url = external_url
        self.health = health or Health()
        self.outbox = Outbox(state_dir / OUTBOX_FILE, self.health)
        self.groups: dict[str, Group] = {}
        self.disabled: set[str] = set()
        self.counts: Counter[tuple[str, str]] = Counter()  # (receiver, outcome) -> n
        self.latency: dict[str, float] = {}
        self._firing: list[dict[str, str]] = []  # label sets of all firing alerts, for inhibition
        self._dispatch = asyncio.Event()
        self._wakes: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._stopped = False
        self._restore(time.time())

    def _restore(self, now: float) -> None:
        """Groups as the notification log left them: a restart re-pages nobody before their
        repeat_interval, and sends the resolutions of alerts that resolved while gpumon was down."""
        routes = {r.id: r for r in _walk(self.route)}
        for key, state in self.outbox.notification_log().items():
            try:
                route = routes.get(json.loads(state)["route"])
                group = Group.from_log(route, state, now) if route is not None else None
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                log.error("unreadable notification log entry; its group starts afresh", group=key,
                          error=f"{type(exc).__name__}: {exc}")
                group = None
            if group is None or group.id != key:  # its route is gone, or groups differently now
                self.outbox.save_log(key, None)
                continue
            self.groups[key] = group
        if self.groups:
            log.info("notification groups restored", groups=len(self.groups))

    def reconfigure(self, setup: NotifySetup) -> None:
        """Take a reloaded configuration without losing what is in flight: the outbox (queued
        notifications, also for receivers that are gone: those fail as removed when due) and the
        groups whose route is still there with the same grouping, which keep their timers and what
        they last sent, so a reload re-notifies nothing. Groups of a removed or regrouped route are
        dropped; their alerts form the new groups at the next evaluation. Receivers disabled by a
        410 are enabled again."""
        routes = {r.id: r for r in _walk(setup.route)}
        kept: dict[str, Group] = {}
        for key, group in self.groups.items():
            route = routes.get(group.route.id)
            if route is not None and route.group_by == group.route.group_by:
                group.route = route
                kept[key] = group
            else:
                self.outbox.save_log(key, None)
        self.groups = kept
        self.route, self.receivers, self.inhibit_rules = setup.route, setup.receivers, setup.inhibit_rules
        self.max_age_s, self.external_url = setup.max_age_s, setup.external_url
        self.disabled.clear()
        if self._session is not None:
            self._start_workers()
        self._dispatch.set()

    # --- alerts in -----------------------------------------------------------------------------

    def update(self, alerts: list[Alert], now: float | None = None) -> None:
        """Take the rule engine's alerts after an evaluation (firing and recently resolved ones: the
        whole current state, so an alert that is no longer there at all resolves)."""
        now = time.time() if now is None else now
        self._firing = [dict(a.labels) for a in alerts if a.state is State.FIRING]
        present: dict[str, set[str]] = {key: set() for key in self.groups}
        reported = {fingerprint(dict(a.labels)) for a in alerts}
        for alert in alerts:
            if alert.state is State.PENDING:
                continue
            labels = dict(alert.labels)
            resolved = alert.state is State.INACTIVE
            event = AlertEvent(labels, {k: v for k, v in alert.annotations.items() if not k.startswith("gpumon_")},
                               alert.active_at / 1000, alert.resolved_at / 1000 if resolved else None)
            for route in self.route.match(labels):
                if resolved and not self.receivers[route.receiver].send_resolved:
                    continue
                group_labels = route.group_labels(labels)
                key = group_id(route, group_labels)
                group = self.groups.get(key)
                if group is None:
                    if resolved:
                        continue  # nothing was ever said about it
                    group = self.groups[key] = Group(route, group_labels, now, next_flush=now + route.group_wait)
                group.add(event)
                present.setdefault(key, set()).add(event.fingerprint)
        for key, group in self.groups.items():
            group.forget_missing(present.get(key, set()), reported, now)
        self._dispatch.set()

    def _muted(self, event: AlertEvent, now: float) -> bool:
        if any(rule.inhibited(event.labels, self._firing) for rule in self.inhibit_rules):
            return True
        return self.silences is not None and self.silences.silenced(event.labels, now)

    def flush(self, now: float) -> int:
        """Queue a notification for every group that is due; returns how many were queued."""
        queued = 0
        for key, group in list(self.groups.items()):
            events = group.due(now, lambda e: self._muted(e, now))
            if events:
                receiver = group.route.receiver
                body = webhook_payload(receiver, group.key, group.labels, events, self.external_url)
                self.outbox.put(receiver, json.dumps(body).encode(), now, (key, group.log_state()))
                queued += 1
                if receiver in self._wakes:
                    self._wakes[receiver].set()
            if not group.alerts and now - group.last_sent_at > group.route.repeat_interval:
                del self.groups[key]
                self.outbox.save_log(key, None)
        return queued

    # --- tasks ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._tasks["notify-dispatch"] = start("notify-dispatch", self._dispatch_loop, self.health)
        self._start_workers()

    def _start_workers(self) -> None:
        """One delivery task per receiver, and for receivers that are gone but still have entries."""
        for name in set(self.receivers) | set(self.outbox.receivers()):
            task = f"notify-deliver:{name}"
            if task not in self._tasks:
                self._wakes[name] = asyncio.Event()
                self._tasks[task] = start(task, functools.partial(self._deliver_loop, name), self.health)

    async def stop(self) -> None:
        """Stop delivering and close the outbox (once: a second call does nothing)."""
        if self._stopped:
            return
        self._stopped = True
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
        self.outbox.close()

    async def _dispatch_loop(self) -> None:
        while True:
            self._dispatch.clear()
            now = time.time()
            self.flush(now)
            self.outbox.sync()  # what a full disk refused, written once it takes writes again
            # Sleep until the next group is due: a new alert's notification goes out when its
            # group_wait ends, not at the next tick.
            due = min((g.next_flush for g in self.groups.values() if g.alerts), default=now + MAX_WAIT_S)
            with contextlib.suppress(asyncio.TimeoutError):  # not the builtin on Python 3.10
                await asyncio.wait_for(self._dispatch.wait(), min(MAX_WAIT_S, max(0.005, due - time.time())))

    async def _deliver_loop(self, name: str) -> None:
        wake = self._wakes[name]
        while True:
            wake.clear()
            await self.deliver_due(name, time.time())
            retry = self.outbox.next_due(name)
            wait = MAX_WAIT_S if retry is None else min(MAX_WAIT_S, max(0.005, retry - time.time()))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), wait)

    async def deliver_due(self, name: str, now: float) -> None:
        """Try the receiver's due entries in order; stop at one that must be retried later."""
        for entry in self.outbox.due(name, now):
            try:
                if not await self._deliver(name, entry):
                    return
            except Exception as exc:  # a bug or an unforeseen input fails this notification, not delivery
                detail = f"internal error: {type(exc).__name__}: {exc}"
                self.outbox.fail(entry, "failed", detail)
                self.counts[(name, "failed")] += 1
                log.error("notification failed; kept in the outbox, not retried", receiver=name, id=entry.id,
                          error=detail)

    async def _deliver(self, name: str, entry: Entry) -> bool:
        """Deliver one entry; False when it waits for a retry (and the receiver's later ones with it)."""
        receiver = self.receivers.get(name)
        if receiver is None or name in self.disabled:
            self.outbox.fail(entry, "failed", "receiver removed or disabled")
            return True
        if time.time() - entry.created > self.max_age_s:
            self.outbox.fail(entry, "dead", "undelivered past max_age")
            self.counts[(name, "dead_lettered")] += 1
            log.error("notification dead-lettered", receiver=name, id=entry.id, attempts=entry.attempts)
            return True
        assert self._session is not None
        body = entry.body
        if receiver.slack is not None:
            await receiver.slack.bucket.take()
            body = slack.render(json.loads(body), receiver.slack.channel, receiver.slack.username)
        result = await deliver(self._session, receiver.target, entry.id, body)
        if result.outcome is Outcome.DELIVERED:
            self.outbox.delivered(entry)
            self.counts[(name, "sent")] += 1
            self.latency[name] = time.time() - entry.created
            return True
        if result.outcome is Outcome.RETRY:
            wait = result.retry_after if result.retry_after is not None else backoff(entry.attempts)
            self.outbox.retry(entry, time.time() + wait, result.detail)
            self.counts[(name, "retried")] += 1
            log.warning("notification delivery failed; will retry", receiver=name, id=entry.id,
                        error=result.detail, retry_in_s=round(wait, 1))
            return False
        self.outbox.fail(entry, "failed", result.detail)
        self.counts[(name, "failed")] += 1
        log.error("notification rejected by the receiver; kept in the outbox, not retried",
                  receiver=name, id=entry.id, error=result.detail)
        if result.outcome is Outcome.GONE:
            self.disabled.add(name)
            log.error("receiver answered 410 Gone: disabled until the next reload", receiver=name)
        return True

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
