"""Push alerts to Alertmanagers' /api/v2/alerts as Prometheus does, so sites with an Alertmanager keep
its routing, silences and inhibition.

Like Prometheus: firing alerts are re-sent at least every `resend_s` (1 minute) with `endsAt` four
resend intervals ahead, so an Alertmanager that stops hearing from gpumon resolves them by itself;
resolved alerts are sent with their resolution time for as long as the rule engine keeps them
(15 minutes). Every push goes to every configured Alertmanager; a failed push is counted and simply
repeated at the next send (the state is re-sent in full each time, so nothing queues up).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections import Counter
from typing import Any

import aiohttp
import structlog

from gpumon.health import Health, start
from gpumon.lifecycle import Service
from gpumon.model import Sample
from gpumon.notify.payload import rfc3339
from gpumon.notify.urls import redacted
from gpumon.rules.alerting import Alert, State

log = structlog.get_logger("gpumon.alertmanager")

RESEND_S = 60.0
TIMEOUT_S = 10.0


class AlertmanagerPusher(Service):
    def __init__(self, urls: list[str], *, resend_s: float = RESEND_S, generator_url: str = "",
                 health: Health | None = None) -> None:
        self.health = health or Health()
        self.urls = [u.rstrip("/") for u in urls]
        # How each URL is shown in logs and labels: user:password@ and query strings are secrets.
        self.shown = {u: redacted(u, keep_path=True) for u in self.urls}
        self.resend_s = resend_s
        self.generator_url = generator_url
        self.counts: Counter[tuple[str, str]] = Counter()
        self._sent: dict[tuple[tuple[str, str], ...], tuple[str, float]] = {}  # labels -> (state, at)
        self._session: aiohttp.ClientSession | None = None
        self._outgoing: dict[str, list[dict[str, Any]]] = {u: [] for u in self.urls}
        self._wakes = {u: asyncio.Event() for u in self.urls}
        self._tasks: list[asyncio.Task[None]] = []

    def body(self, alerts: list[Alert], now: float) -> list[dict[str, Any]]:
        """The alerts to send now: new or changed ones, and all of them once per resend interval."""
        out = []
        for a in alerts:
            if a.state is State.PENDING:
                continue
            state = a.state.value
            previous = self._sent.get(a.labels)
            if previous is not None and previous[0] == state and now - previous[1] < self.resend_s:
                continue
            ends = a.resolved_at / 1000 if a.state is State.INACTIVE else now + 4 * self.resend_s
            out.append({"labels": dict(a.labels),
                        "annotations": {k: v for k, v in a.annotations.items() if not k.startswith("gpumon_")},
                        "startsAt": rfc3339(a.active_at / 1000), "endsAt": rfc3339(ends),
                        "generatorURL": self.generator_url})
            self._sent[a.labels] = (state, now)
        current = {a.labels for a in alerts}
        for labels in [k for k in self._sent if k not in current]:
            del self._sent[labels]
        return out

    def update(self, alerts: list[Alert]) -> None:
        """Called after each rule evaluation; the pushes run in the background, never blocking it."""
        body = self.body(alerts, time.time())
        if not body:
            return
        for url in self.urls:
            self._outgoing[url].extend(body)
            self._wakes[url].set()

    def start(self) -> None:
        """One supervised task per Alertmanager: a slow one delays nobody else, and what piles up
        while it is slow goes out in one push."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        self._tasks = [start(f"alertmanager-push:{self.shown[url]}", functools.partial(self._push_loop, url),
                             self.health) for url in self.urls]

    async def _push_loop(self, url: str) -> None:
        while True:
            await self._wakes[url].wait()
            self._wakes[url].clear()
            alerts, self._outgoing[url] = self._outgoing[url], []
            if alerts:
                await self._post(url, json.dumps(alerts).encode())

    async def _post(self, url: str, data: bytes) -> None:
        assert self._session is not None
        try:
            async with self._session.post(f"{url}/api/v2/alerts", data=data, allow_redirects=False,
                                          headers={"Content-Type": "application/json"}) as r:
                await r.read()
                ok = 200 <= r.status < 300
                detail = f"HTTP {r.status}"
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            ok, detail = False, type(exc).__name__  # not str(exc): it may quote the URL
        self.counts[(url, "sent" if ok else "failed")] += 1
        if not ok:
            # Forget what was "sent" so the next evaluation sends everything again.
            self._sent.clear()
            log.warning("push to Alertmanager failed; will resend with the next evaluation",
                        alertmanager=self.shown[url], error=detail)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def sample(self, now: float | None = None) -> Sample:
        s = Sample("alertmanager", "notify", time.time() if now is None else now)
        for url in self.urls:
            labels = (("alertmanager", self.shown[url]),)
            s.add("gpumon_alertmanager_pushes_total", labels, self.counts[(url, "sent")])
            s.add("gpumon_alertmanager_push_failures_total", labels, self.counts[(url, "failed")])
        return s
