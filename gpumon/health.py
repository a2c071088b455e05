"""What is degraded right now, and the supervisor that keeps background tasks alive.

Faults are states: a full disk, a receiver that cannot be reached, a task that crashed. Each part of
the daemon reports its state here under a component name; `/-/ready` answers 503 naming every
degraded component, `gpumon_component_healthy{component}` exports it, and each change is logged once.
A background task runs under `supervise`: an exception is logged in one line, counted in
`gpumon_task_restarts_total{task}`, marks the task degraded, and the task is started again after a
backoff, so no task dies unobserved and none stays dead.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import structlog

from gpumon import logs
from gpumon.model import Labels, Sample

log = structlog.get_logger("gpumon.health")

RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_AFTER_S = 60.0  # a restarted task that runs this long without failing is healthy again


class Health:
    def __init__(self) -> None:
        self._problems: dict[str, str] = {}
        self._components: set[str] = set()
        self.restarts: Counter[str] = Counter()
        self.quarantined: Counter[str] = Counter()  # state file name -> times moved aside as corrupt
        # Other parts' own numbers for the same sample (the web listener's connections, ...).
        self.reporters: list[Callable[[], list[tuple[str, Labels, float]]]] = []

    def register(self, component: str) -> None:
        """A component that reports its state: exported as healthy until it says otherwise."""
        self._components.add(component)

    def degraded(self, component: str, problem: str) -> None:
        self._components.add(component)
        if self._problems.get(component) != problem:
            log.warning("degraded", component=component, problem=problem)
        self._problems[component] = problem

    def recovered(self, component: str) -> None:
        if self._problems.pop(component, None) is not None:
            log.info("recovered", component=component)

    @property
    def problems(self) -> dict[str, str]:
        return dict(self._problems)

    def sample(self, now: float | None = None) -> Sample:
        s = Sample("health", "health", time.time() if now is None else now)
        for component in sorted(self._components):
            s.add("gpumon_component_healthy", (("component", component),), 0.0 if component in self._problems else 1.0)
        # Counters for every supervised task and state file, 0 until something happens: a series that
        # appears only with the first failure makes increase() miss that failure.
        tasks = {c.removeprefix("task:") for c in self._components if c.startswith("task:")} | set(self.restarts)
        for task in sorted(tasks):
            s.add("gpumon_task_restarts_total", (("task", task),), float(self.restarts[task]))
        files = {c.removeprefix("state:") for c in self._components if c.startswith("state:")} | set(self.quarantined)
        for name in sorted(files):
            s.add("gpumon_state_files_quarantined_total", (("file", name),), float(self.quarantined[name]))
        s.add("gpumon_log_messages_suppressed_total", (), float(logs.RATE_LIMIT.suppressed))
        for report in self.reporters:
            for metric, labels, value in report():
                s.add(metric, labels, value)
        return s


async def supervise(name: str, run: Callable[[], Awaitable[None]], health: Health) -> None:
    """Run `run()` for ever: when it raises, log, count, back off and run it again. Cancelling this
    task (shutdown) cancels the current run."""
    component = f"task:{name}"
    health.register(component)
    failures = 0
    while True:
        started = time.monotonic()
        try:
            await run()
            log.error("background task returned; starting it again", task=name)
            problem = "returned unexpectedly"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the point of a supervisor: any failure of the task
            problem = f"{type(exc).__name__}: {exc}"
            log.error("background task failed; starting it again", task=name, error=problem)
        if time.monotonic() - started >= STABLE_AFTER_S:
            failures = 0
        health.restarts[name] += 1
        health.degraded(component, problem)
        wait = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
        failures += 1
        await asyncio.sleep(wait)
        asyncio.get_running_loop().call_later(STABLE_AFTER_S, _recover_if_stable, health, component, name,
                                              health.restarts[name])


def _recover_if_stable(health: Health, component: str, name: str, restarts: int) -> None:
    if health.restarts[name] == restarts:  # no failure since the restart
        health.recovered(component)


def start(name: str, run: Callable[[], Awaitable[None]], health: Health) -> asyncio.Task[None]:
    """A supervised background task."""
    return asyncio.create_task(supervise(name, run, health), name=f"gpumon-{name}")
