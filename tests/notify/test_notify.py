"""Notifications: Alertmanager's payload, grouping, and at-least-once delivery through the outbox to
webhook receivers that fail in every way we could think of, counted per idempotency key."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gpumon.config import RouteConfig
from gpumon.notify.payload import fingerprint
from gpumon.notify.routing import build_route, parse_matcher
from gpumon.notify.service import NotifyService, Receiver
from gpumon.notify.webhook import WebhookTarget
from gpumon.rules.alerting import Alert, State
from gpumon.yamlfile import validate
from tests.support.net import free_port

SECRET = b"0123456789abcdef0123456789abcdef"


class FaultyReceiver:
    """A webhook receiver whose first answers are scripted faults; it records what arrives."""

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.bodies: list[dict[str, Any]] = []
        self.ids: Counter[str] = Counter()
        self.bad_signatures = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        msg_id = request.headers["webhook-id"]
        ts = request.headers.get("webhook-timestamp", "")
        expected = base64.b64encode(hmac.new(SECRET, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest())
        if request.headers.get("webhook-signature") != "v1," + expected.decode():
            self.bad_signatures += 1
        fault = self.script.pop(0) if self.script else "ok"
        if fault == "500":
            return web.Response(status=500)
        if fault == "429":
            return web.Response(status=429, headers={"Retry-After": "0"})
        if fault == "slow":
            await asyncio.sleep(1.0)  # longer than the client's timeout
        if fault == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=200)
        if fault in ("400", "410"):
            return web.Response(status=int(fault))
        self.ids[msg_id] += 1
        if self.ids[msg_id] == 1:  # what a receiver de-duplicating on webhook-id keeps
            self.bodies.append(json.loads(body))
        return web.Response(status=200)


async def serve(handler: FaultyReceiver, port: int) -> web.AppRunner:
    app = web.Application()
    app.router.add_post("/hook", handler.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def service(tmp: Path, port: int, **route: Any) -> NotifyService:
    settings = {"receiver": "ops", "group_by": ["alertname"], "group_wait": 0.01, "group_interval": 0.1,
                "repeat_interval": 3600.0, **route}
    target = WebhookTarget("ops", f"http://127.0.0.1:{port}/hook", SECRET, timeout_s=0.3)
    return NotifyService(build_route(RouteConfig(**settings)), {"ops": Receiver(target)}, tmp)


def alert(name: str, gpu: str, state: State = State.FIRING, resolved_at: int = 0) -> Alert:
    labels = tuple(sorted({"alertname": name, "gpu": gpu, "severity": "warning"}.items()))
    return Alert(labels, (("gpu", gpu),), {"summary": f"GPU {gpu}", "gpumon_no_data": "keep_state"}, state,
                 active_at=1_700_000_000_000, value=0.3, resolved_at=resolved_at)


async def run_until(svc: NotifyService, done: Any, timeout: float = 10.0) -> None:
    """Let the service's own loop work until `done()`."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "not delivered in time"
        await asyncio.sleep(0.05)


@pytest.fixture
async def receiver_port() -> AsyncIterator[int]:
    yield free_port()


async def test_every_notification_arrives_once_per_id_through_faults(tmp_path: Path, receiver_port: int,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from gpumon.notify import outbox
    monkeypatch.setattr(outbox, "BACKOFF_BASE_S", 0.01)
    hook = FaultyReceiver(["500", "429", "slow", "drop", "500"])
    runner = await serve(hook, receiver_port)
    svc = service(tmp_path, receiver_port)
    svc.start()
    try:
        svc.update([alert("GpuSmActivityLow", str(i)) for i in range(8)])
        await run_until(svc, lambda: len(hook.bodies) == 1)
        svc.update([alert("GpuSmActivityLow", str(i), State.INACTIVE, 1_700_000_600_000) for i in range(8)])
        await run_until(svc, lambda: len(hook.bodies) == 2)
        await asyncio.sleep(0.3)  # nothing more may come: a resolution is told once
    finally:
        await svc.stop()
        await runner.cleanup()
    firing, resolved = hook.bodies
    assert len(firing["alerts"]) == 8  # eight GPUs, one evaluation: one notification
    assert firing["status"] == "firing" and resolved["status"] == "resolved"
    assert len(hook.bodies) == 2 and hook.bad_signatures == 0
    counts = svc.counts
    assert counts[("ops", "sent")] == 2 and counts[("ops", "retried")] == 5
    # The slow answer arrived after the client gave up: delivered twice, de-duplicated by webhook-id.
    assert sorted(hook.ids.values()) == [1, 2]
    assert "gpumon_no_data" not in firing["alerts"][0]["annotations"]


def test_payload_is_alertmanagers_schema(tmp_path: Path) -> None:
    svc = service(tmp_path, 1)
    svc.update([alert("GpuMemoryHigh", "0"), alert("GpuMemoryHigh", "1")], now=100.0)
    assert svc.flush(101.0) == 1
    (entry,) = svc.outbox.due("ops", 200.0)
    body = json.loads(entry.body)
    assert set(body) == {"version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels",
                         "commonLabels", "commonAnnotations", "externalURL", "alerts"}
    assert body["version"] == "4" and body["receiver"] == "ops"
    assert body["groupKey"] == '{}:{alertname="GpuMemoryHigh"}'
    assert body["groupLabels"] == {"alertname": "GpuMemoryHigh"}
    assert body["commonLabels"] == {"alertname": "GpuMemoryHigh", "severity": "warning"}
    a = body["alerts"][0]
    assert set(a) == {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}
    assert a["endsAt"] == "0001-01-01T00:00:00Z" and a["startsAt"] == "2023-11-14T22:13:20Z"
    assert a["fingerprint"] == fingerprint(a["labels"])
    svc.outbox.close()


def test_group_wait_interval_and_repeat(tmp_path: Path) -> None:
    svc = service(tmp_path, 1, group_wait=30.0, group_interval=60.0, repeat_interval=600.0)
    svc.update([alert("A", "0")], now=0.0)
    assert svc.flush(10.0) == 0  # group_wait
    assert svc.flush(30.0) == 1
    svc.update([alert("A", "0"), alert("A", "1")], now=40.0)
    assert svc.flush(50.0) == 0  # group_interval
    assert svc.flush(90.0) == 1  # the change goes out at the next interval
    assert svc.flush(150.0) == 0  # unchanged: wait for repeat_interval
    assert svc.flush(700.0) == 1
    svc.outbox.close()


def test_routes_matchers_and_continue(tmp_path: Path) -> None:
    route = build_route(validate(RouteConfig, {
        "receiver": "default", "routes": [
            {"matchers": ['severity="critical"'], "receiver": "pager", "continue": True},
            {"matchers": ["alertname=~\"Gpu.*\""], "receiver": "gpu-team"}]}, "(test)"))
    names = [r.receiver for r in route.match({"alertname": "GpuLost", "severity": "critical"})]
    assert names == ["pager", "gpu-team"]
    assert [r.receiver for r in route.match({"alertname": "Other"})] == ["default"]
    assert route.routes[0].key == '{}/{severity="critical"}'
    with pytest.raises(ValueError):
        parse_matcher('alertname=~"("')


async def test_outbox_survives_a_restart_during_an_outage(tmp_path: Path, receiver_port: int) -> None:
    first = service(tmp_path, receiver_port)
    first.update([alert("A", "0")], now=time.time() - 1)
    assert first.flush(time.time()) == 1
    first.outbox.close()  # the process dies with the notification queued, never delivered
    hook = FaultyReceiver([])
    runner = await serve(hook, receiver_port)
    second = service(tmp_path, receiver_port)
    second.start()
    try:
        await run_until(second, lambda: len(hook.bodies) == 1)
    finally:
        await second.stop()
        await runner.cleanup()
    assert hook.bodies[0]["alerts"][0]["labels"]["alertname"] == "A"


@pytest.mark.parametrize("status, state, enabled", [("400", "failed", 1.0), ("410", "failed", 0.0)])
async def test_permanent_errors_are_kept_and_410_disables(tmp_path: Path, receiver_port: int, status: str,
                                                           state: str, enabled: float) -> None:
    hook = FaultyReceiver([status])
    runner = await serve(hook, receiver_port)
    svc = service(tmp_path, receiver_port)
    svc.start()
    try:
        svc.update([alert("A", "0")])
        await run_until(svc, lambda: svc.counts[("ops", "failed")] == 1)
        sample = {name: v for name, _, v in svc.sample().values}
    finally:
        await svc.stop()
        await runner.cleanup()
    assert sample["gpumon_notifications_failed_total"] == 1
    assert sample["gpumon_notification_receiver_enabled"] == enabled
    assert sample["gpumon_notification_queue_length"] == 0


def test_a_lost_gpu_inhibits_its_other_alerts(tmp_path: Path) -> None:
    from gpumon.config import NotifyConfig
    from gpumon.notify.routing import build_inhibit_rules
    svc = service(tmp_path, 1)
    svc.inhibit_rules = build_inhibit_rules(NotifyConfig().inhibit_rules)  # the default rule
    lost = Alert((("alertname", "GpuLost"), ("gpu", "0"), ("uuid", "GPU-a")), (), {}, State.FIRING, 0, 0.0)
    low0 = Alert((("alertname", "GpuSmActivityLow"), ("gpu", "0"), ("uuid", "GPU-a")), (), {}, State.FIRING, 0, 0.0)
    low1 = Alert((("alertname", "GpuSmActivityLow"), ("gpu", "1"), ("uuid", "GPU-b")), (), {}, State.FIRING, 0, 0.0)
    svc.update([lost, low0, low1], now=0.0)
    assert svc.flush(1.0) == 2
    bodies = [json.loads(e.body) for e in svc.outbox.due("ops", 2.0)]
    sent = sorted((b["groupLabels"]["alertname"], a["labels"]["uuid"]) for b in bodies for a in b["alerts"])
    assert sent == [("GpuLost", "GPU-a"), ("GpuSmActivityLow", "GPU-b")]
    svc.outbox.close()


async def test_slack_one_message_per_group_and_429_honoured(tmp_path: Path, receiver_port: int) -> None:
    from gpumon.notify.service import SlackStyle
    hook = FaultyReceiver(["429"])
    runner = await serve(hook, receiver_port)
    svc = service(tmp_path, receiver_port)
    svc.receivers["ops"].slack = SlackStyle(channel="#gpu")
    svc.start()
    try:
        svc.update([alert("GpuMemoryHigh", str(i)) for i in range(8)])
        await run_until(svc, lambda: len(hook.bodies) == 1)
        await asyncio.sleep(0.3)
    finally:
        await svc.stop()
        await runner.cleanup()
    (message,) = hook.bodies  # eight GPUs crossing a threshold: one Slack message, retried after 429
    assert message["channel"] == "#gpu"
    (attachment,) = message["attachments"]
    assert attachment["title"] == "[FIRING:8] GpuMemoryHigh" and attachment["color"] == "#d93f0b"
    assert attachment["text"].count("• GPU ") == 8
    assert svc.counts[("ops", "retried")] == 1 and svc.counts[("ops", "sent")] == 1


async def test_slack_token_bucket_spaces_messages() -> None:
    from gpumon.notify.slack import TokenBucket
    bucket = TokenBucket(rate=10.0)  # 10 per second: 5 takes need about 0.4 s after the first
    start = time.monotonic()
    for _ in range(5):
        await bucket.take()
    assert time.monotonic() - start >= 0.35


def test_silences_mute_matching_alerts_and_persist(tmp_path: Path) -> None:
    from gpumon.notify.silences import Silences, parse_request
    silences = Silences(tmp_path / "silences.sqlite")
    now = time.time()
    matchers, starts, ends, comment, by = parse_request(
        {"matchers": ['alertname="A"', 'gpu=~"0|1"'], "duration": "1h", "comment": "maintenance"}, now)
    s = silences.add(matchers, starts, ends, comment, by)
    svc = service(tmp_path, 1)
    svc.silences = silences
    svc.update([alert("A", "0"), alert("A", "2"), alert("B", "0")], now=now)
    assert svc.flush(now + 1) == 2
    bodies = [json.loads(e.body) for e in svc.outbox.due("ops", now + 2)]
    sent = sorted((b["groupLabels"]["alertname"], a["labels"]["gpu"]) for b in bodies for a in b["alerts"])
    assert sent == [("A", "2"), ("B", "0")]
    assert s.to_json(now)["status"]["state"] == "active"
    reopened = Silences(tmp_path / "silences.sqlite")  # survives a restart
    assert [x.id for x in reopened.all()] == [s.id]
    assert reopened.expire(s.id, now=now + 10) and not reopened.silenced({"alertname": "A", "gpu": "0"}, now + 11)
    for bad in ({"matchers": []}, {"matchers": ["a=1"], "duration": "1h"}, {"matchers": ["a=~("], "duration": "1h",
                "comment": "x"}, {"matchers": ["a=1"], "comment": "x"}, [1]):
        with pytest.raises(ValueError):
            parse_request(bad, now)
    svc.outbox.close()


def test_a_retry_holds_back_its_receivers_later_entries_and_touches_one_row(tmp_path: Path) -> None:
    from gpumon.notify.outbox import Outbox

    box = Outbox(tmp_path / "outbox.sqlite")
    ids = [box.put("dead", f"{i}".encode(), now=100.0) for i in range(1000)]  # same created: order by insertion
    other = box.put("alive", b"x", now=100.0)
    first = box.due("dead", 200.0, limit=1)[0]
    assert first.id == ids[0]
    before = box._db.total_changes
    box.retry(first, at=300.0, error="HTTP 503")
    assert box._db.total_changes - before == 1  # not 1000 rewritten rows
    assert box.due("dead", 200.0) == []  # "dead" waits behind its first entry
    (alive,) = box.due("alive", 200.0)
    assert alive.id == other
    box.delivered(alive)
    assert box.next_due("dead") == 300.0  # not the later entries' own (past) times
    assert [e.id for e in box.due("dead", 300.0, limit=3)] == ids[:3]
    box.retry(box.due("dead", 300.0, limit=2)[1], at=400.0, error="HTTP 503")  # the second one fails now
    assert [e.id for e in box.due("dead", 300.0)] == ids[:1]
    box.delivered(box.due("dead", 300.0)[0])
    assert box.due("dead", 300.0) == [] and box.next_due("dead") == 400.0
    assert [e.id for e in box.due("dead", 400.0, limit=2)] == ids[1:3]


def test_reconfigure_keeps_groups_of_unchanged_routes_and_drops_regrouped_ones(tmp_path: Path) -> None:
    from gpumon.notify.service import NotifySetup

    svc = service(tmp_path, free_port())
    svc.update([alert("Hot", "0"), alert("Up", "1")], now=100.0)
    assert svc.flush(100.5) == 2
    svc.disabled.add("ops")  # as after a 410
    same = service(tmp_path, free_port())
    svc.reconfigure(NotifySetup(same.route, same.receivers, 3600.0, "", []))
    assert len(svc.groups) == 2 and not svc.disabled and svc.max_age_s == 3600.0
    svc.update([alert("Hot", "0"), alert("Up", "1")], now=101.0)
    assert svc.flush(102.0) == 0  # nothing new for kept groups: no second notification
    by_gpu = service(tmp_path, free_port(), group_by=["gpu"])
    svc.reconfigure(NotifySetup(by_gpu.route, by_gpu.receivers, 3600.0, "", []))
    assert svc.groups == {}  # regrouped: the next evaluation's alerts form the new groups
    svc.update([alert("Hot", "0"), alert("Up", "1")], now=103.0)
    assert svc.flush(104.0) == 2
    for s in (svc, same, by_gpu):
        s.outbox.close()
