"""Slack incoming-webhook messages from Alertmanager's payload, and the per-URL rate limit.

Slack allows about one message per second per incoming webhook and answers 429 with Retry-After
beyond that; the token bucket keeps gpumon under the limit and the outbox honours Retry-After when
it is hit anyway. Nothing is dropped.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

COLOURS = {"firing": "#d93f0b", "resolved": "#2eb886"}
MAX_LISTED = 10  # alerts listed in one message; the rest are counted


def render(payload: dict[str, Any], channel: str | None = None, username: str | None = None) -> bytes:
    """One Slack message for one Alertmanager group notification."""
    alerts = payload["alerts"]
    status = payload["status"]
    firing = [a for a in alerts if a["status"] == "firing"]
    name = payload["groupLabels"].get("alertname") or payload["commonLabels"].get("alertname", "alerts")
    title = f"[{status.upper()}{':' + str(len(firing)) if status == 'firing' else ''}] {name}"
    lines = []
    for a in alerts[:MAX_LISTED]:
        summary = a["annotations"].get("summary") or ", ".join(f"{k}={v}" for k, v in sorted(a["labels"].items())
                                                               if k != "alertname")
        lines.append(f"{'•' if a['status'] == 'firing' else '✓'} {summary}")
    if len(alerts) > MAX_LISTED:
        lines.append(f"… and {len(alerts) - MAX_LISTED} more")
    description = payload["commonAnnotations"].get("description")
    if description:
        lines.append(description)
    message: dict[str, Any] = {"attachments": [{
        "color": COLOURS.get(status, "#cccccc"), "title": title, "text": "\n".join(lines),
        "fallback": title, "footer": "gpumon"}]}
    if payload.get("externalURL"):
        message["attachments"][0]["title_link"] = payload["externalURL"]
    if channel:
        message["channel"] = channel
    if username:
        message["username"] = username
    return json.dumps(message).encode()


class TokenBucket:
    """At most `rate` messages per second on average, bursts of `burst`."""

    def __init__(self, rate: float = 1.0, burst: float = 1.0) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.updated = time.monotonic()

    async def take(self) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.rate)
