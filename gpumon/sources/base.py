"""What a source is to the sampler: the units it polls, how they want to be run, and one poll call.

A source knows one outside thing (NVML, sysfs, a RAS port); the sampler knows none of them by name.
Adding a source is one module implementing `Source` (or `AsyncSource`) and one line in
`gpumon/backend.py` (docs/architecture.md, "Adding a source").
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from gpumon.model import Sample, Tier


class Schedule(enum.Enum):
    """How a source's units are polled."""

    # One worker thread per unit, every unit of a round in parallel under the tier's deadline: a call
    # that hangs stalls only its own unit (a GPU in an NVML call), which is skipped until it returns.
    THREAD_PER_UNIT = "thread_per_unit"
    # One thread for the whole source, polled beside the other sources in each round under the same
    # deadline (sysfs: a wedged driver stalls only this source).
    SHARED_THREAD = "shared_thread"
    # Polled on the event loop by its own task every `interval` (network I/O with its own timeout,
    # which must never delay a round).
    ASYNC = "async"


@dataclass(frozen=True)
class Unit:
    """One thing a source polls. `key` identifies its samples in the store; `gpu` is the GPU it
    belongs to, when it belongs to one."""

    key: str
    gpu: int | None = None


class UnitLost(Exception):
    """A unit stopped answering (a GPU lost from the bus); the sampler withdraws its series and
    re-opens it with backoff."""

    def __init__(self, unit: Unit, reason: str) -> None:
        super().__init__(f"{unit.key} lost: {reason}")
        self.unit = unit
        self.reason = reason


@dataclass
class UnitHealth:
    """The sampler's bookkeeping of one unit, which the source turns into its self-metrics."""

    up: bool = True
    reopens: int = 0
    durations: dict[str, float] = field(default_factory=dict)  # tier -> seconds of the last poll
    deadline_misses: Counter[str] = field(default_factory=Counter)  # tier -> polls late or skipped


@runtime_checkable
class Source(Protocol):
    """A source polled from threads (schedules THREAD_PER_UNIT and SHARED_THREAD)."""

    @property
    def name(self) -> str: ...
    @property
    def schedule(self) -> Schedule: ...
    @property
    def essential(self) -> bool:
        """Its units' answers make a round complete: readiness and the last-success time wait for
        them (the GPUs do; a fabric without ports must not keep gpumon unready)."""

    def open(self) -> list[Unit]:
        """Connect and discover the units (blocking; runs in a thread). Raises BackendUnavailable."""

    def poll(self, unit: Unit, tier: Tier) -> list[Sample]:
        """Read one tier of one unit (blocking; runs in the unit's or the source's thread). Raises
        UnitLost when the unit is gone."""

    def reopen(self, unit: Unit) -> None:
        """Re-acquire a lost unit. Raises UnitLost while it is still gone."""

    def health(self, units: dict[Unit, UnitHealth]) -> Sample | None:
        """The source's own series (identity, errors, up, poll times) from the sampler's bookkeeping."""

    def start(self, changed: Callable[[], None]) -> None:
        """Begin background work (event threads); `changed()`, callable from any thread, asks for
        the source's health to be published now rather than at the next round."""

    def close(self) -> None:
        """Stop background work and release everything (blocking)."""


@runtime_checkable
class AsyncSource(Protocol):
    """A source polled on the event loop (schedule ASYNC): its units, every `interval` seconds."""

    @property
    def name(self) -> str: ...
    @property
    def schedule(self) -> Schedule: ...
    @property
    def interval(self) -> float: ...

    async def open(self) -> list[Unit]:
        """Discover the units (never raises: an endpoint that is not there is a state)."""

    async def poll(self, unit: Unit, tier: Tier) -> list[Sample]:
        """Read the unit; its timeouts are its own."""

    async def close(self) -> None:
        """Release connections."""
