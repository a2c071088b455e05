"""Faults that used to stop notifications quietly, each reproduced: a slow receiver beside a fast one,
a delivery that raises, sibling routes with equal matchers, a restart with firing or resolved alerts,
a disk that refuses writes, corrupt state files, a task that crashes, stale MQTT resolutions."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gpumon.config import RouteConfig
from gpumon.health import Health, supervise
from gpumon.notify.outbox import Outbox
from gpumon.notify.routing import build_route
from gpumon.notify.service import NotifyService, Receiver
from gpumon.notify.webhook import WebhookTarget
from gpumon.rules.alerting import Alert, State
from gpumon.yamlfile import validate
from tests.support.net import free_port


def alert(name: str, gpu: str = "0", state: State = State.FIRING, resolved_at: int = 0) -> Alert:
    labels = tuple(sorted({"alertname": name, "gpu": gpu}.items()))
    return Alert(labels, (), {"summary": f"GPU {gpu}"}, state, active_at=1_700_000_000_000, value=1.0,
                 resolved_at=resolved_at)


class Hook:
    """A webhook receiver that takes `delay` seconds per request and records the bodies."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.bodies: list[dict[str, Any]] = []
        self.arrived: list[float] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        await asyncio.sleep(self.delay)
        self.bodies.append(body)
        self.arrived.append(time.monotonic())
        return web.Response()


async def serve(*hooks: Hook) -> tuple[web.AppRunner, list[str]]:
    app = web.Application()
    for i, hook in enumerate(hooks):
        app.router.add_post(f"/{i}", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, [f"http://127.0.0.1:{port}/{i}" for i in range(len(hooks))]


def two_receivers(tmp: Path, urls: list[str]) -> NotifyService:
    """Every alert to receiver `slow` (a child route that continues) and to `fast`."""
    cfg = validate(RouteConfig, {"receiver": "slow", "group_by": ["alertname"], "group_wait": 0, "group_interval": 0.05,
                                 "repeat_interval": 3600, "routes": [{"receiver": "slow", "continue": True},
                                                                     {"receiver": "fast"}]}, "(test)")
    receivers = {"slow": Receiver(WebhookTarget("slow", urls[0], timeout_s=30)),
                 "fast": Receiver(WebhookTarget("fast", urls[1]))}
    return NotifyService(build_route(cfg), receivers, tmp)


async def until(done: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_slow_receiver_does_not_delay_a_fast_one(tmp_path: Path) -> None:
    slow, fast = Hook(delay=5.0), Hook()
    runner, urls = await serve(slow, fast)
    svc = two_receivers(tmp_path, urls)
    svc.start()
    try:
        started = time.monotonic()
        for i in range(5):  # a backlog for the slow receiver
            svc.update([alert(f"A{j}") for j in range(i + 1)])
            await until(lambda i=i: len(fast.bodies) == i + 1)
        fast_took = time.monotonic() - started
    finally:
        await svc.stop()
        await runner.cleanup()
    assert len(fast.bodies) == 5 and fast_took < 3.0  # the slow one needs 5 s for each of its five


async def test_an_exception_while_delivering_fails_that_notification_only(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    hook = Hook()
    runner, urls = await serve(hook, Hook())
    svc = two_receivers(tmp_path, urls)
    real = svc._deliver
    calls = 0

    async def first_raises(name: str, entry: Any) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("Newline or carriage return character detected in HTTP header")
        return await real(name, entry)

    monkeypatch.setattr(svc, "_deliver", first_raises)
    svc.receivers.pop("fast")
    svc.route.routes.pop()
    svc.start()
    try:
        svc.update([alert("A")])
        await until(lambda: svc.counts[("slow", "failed")] == 1)
        svc.update([alert("A"), alert("B")])
        await until(lambda: len(hook.bodies) == 1)
    finally:
        await svc.stop()
        await runner.cleanup()
    assert hook.bodies[0]["groupLabels"] == {"alertname": "B"}


def test_sibling_routes_with_identical_matchers_each_get_their_own_groups(tmp_path: Path) -> None:
    cfg = validate(RouteConfig, {"receiver": "a", "group_by": ["alertname"], "group_wait": 0, "routes": [
        {"receiver": "a", "matchers": ['alertname="X"'], "continue": True},
        {"receiver": "b", "matchers": ['alertname="X"'], "continue": True}]}, "(test)")
    receivers = {n: Receiver(WebhookTarget(n, "http://127.0.0.1:1/")) for n in ("a", "b")}
    svc = NotifyService(build_route(cfg), receivers, tmp_path)
    svc.update([alert("X")], now=0.0)
    assert svc.flush(1.0) == 2
    assert [len(svc.outbox.due(n, 2.0)) for n in ("a", "b")] == [1, 1]
    (body,) = [json.loads(e.body) for e in svc.outbox.due("b", 2.0)]
    assert body["groupKey"] == '{}/{alertname="X"}:{alertname="X"}'  # Alertmanager's key: shared by both
    svc.outbox.close()


def one_receiver(tmp: Path) -> NotifyService:
    cfg = validate(RouteConfig, {"receiver": "ops", "group_by": ["alertname"], "group_wait": 0, "group_interval": 10,
                                 "repeat_interval": 3600}, "(test)")
    return NotifyService(build_route(cfg), {"ops": Receiver(WebhookTarget("ops", "http://127.0.0.1:1/"))}, tmp)


def test_a_restart_neither_re_pages_nor_loses_a_resolution(tmp_path: Path) -> None:
    t0 = time.time() - 100
    first = one_receiver(tmp_path)
    first.update([alert("Hot"), alert("Cold")], now=t0)
    assert first.flush(t0) == 2
    first.outbox.close()  # the process ends; both alerts were notified as firing
    second = one_receiver(tmp_path)
    assert len(second.groups) == 2  # from the notification log
    now = time.time()
    second.update([alert("Hot"), alert("Cold", state=State.INACTIVE, resolved_at=round(t0 * 1000) + 50_000)],
                  now=now)
    second.flush(now)
    bodies = [json.loads(e.body) for e in second.outbox.due("ops", now + 1)]
    sent = [(b["groupLabels"]["alertname"], b["status"]) for b in bodies]
    assert ("Cold", "resolved") in sent  # resolved while gpumon was down: told after the restart
    assert sent.count(("Hot", "firing")) == 1  # the notification from before the restart, no second one
    second.flush(now + 3000)  # before repeat_interval: still no page for Hot
    assert len(second.outbox.due("ops", now + 4000)) == len(bodies)
    second.outbox.close()


def test_an_alert_whose_rule_is_gone_resolves(tmp_path: Path) -> None:
    svc = one_receiver(tmp_path)
    svc.update([alert("Gone")], now=0.0)
    svc.flush(0.0)
    svc.update([], now=20.0)  # the engine no longer reports it at all (rule removed, state lost)
    svc.flush(20.0)
    last = json.loads(svc.outbox.due("ops", 30.0)[-1].body)
    assert last["status"] == "resolved"
    svc.outbox.close()


def test_the_outbox_carries_on_in_memory_while_the_disk_refuses_writes(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    health = Health()
    box = Outbox(tmp_path / "outbox.sqlite", health)
    kept = box.put("ops", b"before")
    real = box._transaction
    full = True

    def transaction(statements: Any) -> None:
        if full:
            raise sqlite3.OperationalError("database or disk is full")
        real(statements)

    monkeypatch.setattr(box, "_transaction", transaction)
    later = [box.put("ops", f"during {i}".encode(), now=time.time()) for i in range(3)]
    assert "state:outbox.sqlite" in health.problems
    due = box.due("ops", time.time() + 1)
    assert [e.id for e in due] == [kept, *later]  # in order: the file's, then memory's
    box.delivered(due[0])
    box.retry(due[1], at=time.time() + 100, error="HTTP 503")
    assert [e.id for e in box.due("ops", time.time() + 1)] == []  # waits behind its retrying head
    assert box.stats(time.time())["ops"][0] == 3
    assert not box.sync()  # still full
    full = False
    assert box.sync() and not health.problems
    box.close()
    reopened = Outbox(tmp_path / "outbox.sqlite")  # everything reached the file, in order
    entries = reopened.due("ops", time.time() + 1000)
    assert [e.id for e in entries] == later and entries[0].attempts == 1


def test_state_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        Outbox(tmp_path / "state" / "outbox.sqlite").close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    for f in (tmp_path / "state").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_a_corrupt_state_file_is_moved_aside_and_counted(tmp_path: Path) -> None:
    (tmp_path / "outbox.sqlite").write_bytes(b"this is not a database" * 100)
    health = Health()
    box = Outbox(tmp_path / "outbox.sqlite", health)
    box.put("ops", b"x")
    aside = [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].startswith("outbox.sqlite.corrupt-")
    assert health.quarantined["outbox.sqlite"] == 1
    sample = {(n, dict(lb).get("file")): v for n, lb, v in health.sample().values}
    assert sample[("gpumon_state_files_quarantined_total", "outbox.sqlite")] == 1
    box.close()


def test_a_bad_alert_state_row_starts_that_alert_afresh(tmp_path: Path) -> None:
    from gpumon.rules.rulefile import load_rule_files
    from gpumon.rules.service import RuleService
    from gpumon.store import Store

    rules = tmp_path / "r.yml"
    rules.write_text("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: vector(1)\n")
    service = RuleService(load_rule_files([rules]), Store(10), default_interval_s=10.0, state_dir=tmp_path)
    service.evaluate(service.groups[0], now=1000.0)
    assert service.db is not None
    service.db._db.execute("UPDATE alerts SET labels='{not json'")
    again = RuleService(load_rule_files([rules]), Store(10), default_interval_s=10.0, state_dir=tmp_path)
    assert again.engine.alerts() == []  # the row is skipped, not "internal error"


async def test_a_crashing_task_is_restarted_counted_and_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    from gpumon import health as health_module
    monkeypatch.setattr(health_module, "RESTART_BACKOFF_S", (0.01,))
    health = Health()
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise sqlite3.OperationalError("database or disk is full")
        await asyncio.sleep(3600)

    task = asyncio.create_task(supervise("flaky", flaky, health))
    await until(lambda: runs == 3)
    task.cancel()
    assert health.restarts["flaky"] == 2
    assert "database or disk is full" in health.problems["task:flaky"]


async def test_mqtt_after_a_reconnect_publishes_each_alerts_latest_state_only() -> None:
    from gpumon.notify.mqtt import MqttPublisher
    from gpumon.store import Store

    published: list[tuple[str, bytes, bool]] = []

    class Client:
        async def publish(self, topic: str, payload: Any, qos: int = 0, retain: bool = False) -> None:
            published.append((topic, payload if isinstance(payload, bytes) else payload.encode(), retain))

    pub = MqttPublisher("localhost", 1, prefix="p", store=Store(10))
    pub.update([alert("A")])  # fires while the broker is down ...
    pub.update([])  # ... resolves ...
    pub.update([alert("A")])  # ... and fires again
    await pub._publish_state(Client(), full=True)  # type: ignore[arg-type]
    retained = {}
    for topic, payload, retain in published:
        if retain:
            retained[topic] = payload
    (state,) = retained.values()
    assert json.loads(state)["status"] == "firing"  # not cleared by the stale resolution
