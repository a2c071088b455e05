"""The sampler's one signal: a round (or an event) is in the store.

Subscribers run in the order they subscribed, each on its own: one that raises is logged, counted and
reported degraded, and the others still run. The daemon subscribes the rules first and the exposition
last, so the alert series, recording rules and notification metrics a round leads to are in the same
exposition as the round itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from gpumon.health import Health

log = structlog.get_logger("gpumon.rounds")


@dataclass(frozen=True)
class Round:
    """What was published: a tier's round ("fast", "slow", "static"), an asynchronous source's poll
    (its name), or an "event" (an XID). `complete` is true when every essential unit answered."""

    tier: str
    at: float
    complete: bool


class Rounds:
    def __init__(self, health: Health | None = None) -> None:
        self.health = health or Health()
        self._subscribers: list[tuple[str, Callable[[Round], None]]] = []
        self._waiters: list[asyncio.Future[Round]] = []

    def subscribe(self, name: str, callback: Callable[[Round], None]) -> None:
        self._subscribers.append((name, callback))
        self.health.register(f"subscriber:{name}")

    def publish(self, round_: Round) -> None:
        for name, callback in self._subscribers:
            try:
                callback(round_)
            except Exception as exc:  # one consumer's bug must not keep the round from the others
                self.health.degraded(f"subscriber:{name}", f"{type(exc).__name__}: {exc}")
            else:
                self.health.recovered(f"subscriber:{name}")
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(round_)

    async def next(self) -> Round:
        """The next round published."""
        waiter: asyncio.Future[Round] = asyncio.get_running_loop().create_future()
        # waiters given up on (timed out) go now, so a sampler that stops publishing keeps no pile
        self._waiters = [w for w in self._waiters if not w.done()] + [waiter]
        return await waiter
