"""MQTT: alerts as retained state, telemetry per GPU, and an online/offline status (aiomqtt 2.x).

Topics, under `topic_prefix` (default `gpumon/<hostname>`):

- `<prefix>/status`: retained `online`; the broker publishes the retained last will `offline` when
  gpumon disappears without saying goodbye.
- `<prefix>/alerts/<fingerprint>`: retained JSON of a firing alert (Alertmanager's alert shape); on
  resolution the resolved alert is published once (not retained) and the retained message cleared.
- `<prefix>/gpu/<index>/telemetry`: JSON of the GPU's latest values every `telemetry_interval`.

Alert topics carry state, not events: after every (re)connect gpumon publishes the full current
state, so an alert raised while the broker was down is there when it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time
from typing import Any

import aiomqtt
import structlog

from gpumon.attribution.report import SECTIONS, attribution
from gpumon.health import Health, start
from gpumon.lifecycle import Service
from gpumon.notify.payload import AlertEvent
from gpumon.rules.alerting import Alert, State
from gpumon.store import Store

log = structlog.get_logger("gpumon.mqtt")

BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)


def default_prefix() -> str:
    return f"gpumon/{socket.gethostname()}"


class MqttPublisher(Service):
    def __init__(self, host: str, port: int, *, prefix: str, store: Store, telemetry_interval: float = 10.0,
                 username: str | None = None, password: str | None = None, tls: bool = False,
                 client_id: str | None = None, qos: int = 1, health: Health | None = None) -> None:
        self.health = health or Health()
        self.host, self.port = host, port
        self.prefix = prefix.rstrip("/")
        self.store = store
        self.telemetry_interval = telemetry_interval
        self.username, self.password = username, password
        self.tls = tls
        self.client_id = client_id
        self.qos = qos
        self.connected = False
        self.published = 0
        self._alerts: dict[str, AlertEvent] = {}  # fingerprint -> firing alert (the retained state)
        # Not yet published: each alert's latest change only (firing, or resolved), oldest change
        # first. A resolution overtaken by the alert firing again is never sent.
        self._changes: dict[str, AlertEvent] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def update(self, alerts: list[Alert]) -> None:
        """The rule engine's alerts after an evaluation."""
        firing = {}
        for a in alerts:
            if a.state is State.FIRING:
                event = AlertEvent(dict(a.labels), {k: v for k, v in a.annotations.items()
                                                    if not k.startswith("gpumon_")}, a.active_at / 1000, None)
                firing[event.fingerprint] = event
        for fp, event in firing.items():
            if fp not in self._alerts:
                self._change(event)
        for fp, old in self._alerts.items():
            if fp not in firing:
                self._change(AlertEvent(old.labels, old.annotations, old.starts_at, time.time()))
        self._alerts = firing

    def _change(self, event: AlertEvent) -> None:
        self._changes.pop(event.fingerprint, None)  # re-inserted last: changes stay in order
        self._changes[event.fingerprint] = event
        self._changed.set()

    def start(self) -> None:
        self._task = start("mqtt", self._run, self.health)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        attempt = 0
        status = f"{self.prefix}/status"
        while True:
            try:
                async with aiomqtt.Client(
                        self.host, self.port, identifier=self.client_id, username=self.username,
                        password=self.password, tls_context=ssl.create_default_context() if self.tls else None,
                        will=aiomqtt.Will(status, b"offline", qos=1, retain=True), keepalive=10) as client:
                    attempt = 0
                    self.connected = True
                    log.info("connected to the MQTT broker", broker=f"{self.host}:{self.port}")
                    await client.publish(status, b"online", qos=1, retain=True)
                    await self._publish_state(client, full=True)
                    await self._loop(client)
            except aiomqtt.MqttError as exc:
                self.connected = False
                wait = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
                attempt += 1
                log.warning("MQTT broker unavailable; reconnecting", broker=f"{self.host}:{self.port}",
                            error=str(exc), retry_in_s=wait)
                await asyncio.sleep(wait)
            finally:
                self.connected = False

    async def _loop(self, client: aiomqtt.Client) -> None:
        next_telemetry = time.monotonic()
        while True:
            timeout = max(0.0, next_telemetry - time.monotonic())
            with contextlib.suppress(asyncio.TimeoutError):  # not the builtin TimeoutError on 3.10
                await asyncio.wait_for(self._changed.wait(), timeout)
            if self._changed.is_set():
                self._changed.clear()
                await self._publish_state(client, full=False)
            if time.monotonic() >= next_telemetry:
                await self._publish_telemetry(client)
                next_telemetry = time.monotonic() + self.telemetry_interval

    async def _publish_state(self, client: aiomqtt.Client, full: bool) -> None:
        """Each alert's latest change, in order: a firing alert as its retained topic, a resolution
        once and then the retained topic cleared. After a (re)connect, every firing alert again."""
        if full:
            for event in list(self._alerts.values()):
                self._change(event)
        while self._changes:
            fp, event = next(iter(self._changes.items()))
            if event.status == "firing":
                await client.publish(self._topic(event), json.dumps(event.to_json()), qos=self.qos, retain=True)
                self.published += 1
            else:
                await client.publish(self._topic(event), json.dumps(event.to_json()), qos=self.qos)
                await client.publish(self._topic(event), b"", qos=self.qos, retain=True)  # clears the retained state
                self.published += 2
            if self._changes.get(fp) is event:  # not changed again while publishing
                del self._changes[fp]

    def _topic(self, event: AlertEvent) -> str:
        return f"{self.prefix}/alerts/{event.fingerprint}"

    async def _publish_telemetry(self, client: aiomqtt.Client) -> None:
        for index, doc in telemetry(self.store).items():
            await client.publish(f"{self.prefix}/gpu/{index}/telemetry", json.dumps(doc), qos=0)
            self.published += 1


def telemetry(store: Store) -> dict[str, dict[str, Any]]:
    """Per GPU index: uuid, timestamp, the latest value of every metric (labelled ones nested), and
    who is on it (owners, jobs, processes)."""
    out: dict[str, dict[str, Any]] = {}
    for gpu, samples in sorted(store.latest_by_gpu().items()):
        doc: dict[str, Any] = {"gpu": str(gpu), "timestamp": max(s.timestamp for s in samples), "metrics": {},
                               **attribution(samples)}
        for sample in samples:
            for name, labels, value in sample.values:
                if name in SECTIONS:  # who is on the GPU: in owners, jobs, processes above
                    doc.setdefault("uuid", dict(labels).get("uuid", ""))
                    continue
                extra = {k: v for k, v in labels if k not in ("gpu", "uuid")}
                doc.setdefault("uuid", dict(labels).get("uuid", ""))
                if extra:
                    key = ",".join(f"{k}={v}" for k, v in extra.items())
                    doc["metrics"].setdefault(name, {})[key] = value
                else:
                    doc["metrics"][name] = value
        out[str(gpu)] = doc
    return out
