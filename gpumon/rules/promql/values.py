"""What PromQL evaluates to and reads from: samples, series, label matchers, durations as
Prometheus writes them, and the errors a load or an evaluation raises."""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from gpumon.model import STALE_NAN
from gpumon.regex import Regex

LOOKBACK_MS = 5 * 60 * 1000
MAX_DEPTH = 128  # nesting levels of an expression: the evaluator recurses (Python's stack is ~1,000 frames)
MAX_DURATION_MS = (2**63 - 1) // 1_000_000  # Go's time.Duration, as Prometheus's ParseDuration checks
_STALE_BITS = struct.pack("<d", STALE_NAN)
NAME = "__name__"

Labels = tuple[tuple[str, str], ...]  # sorted by name; includes __name__ when the series has one


_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000,
            "y": 31_536_000_000}


def parse_prom_duration(text: str) -> int:
    """Prometheus duration (`1h30m`, `0s`, `5m`) in milliseconds; ValueError when malformed."""
    text = str(text).strip()
    if text == "0":
        return 0
    if not text or _DURATION.sub("", text) != "":
        raise ValueError(f"not a valid duration string: {text!r}")
    ms = sum(int(n) * _UNIT_MS[u] for n, u in _DURATION.findall(text))
    if ms > MAX_DURATION_MS:
        raise ValueError("duration out of range")
    return ms


def duration_ms(d: timedelta | None) -> int:
    """A parsed duration (promql-parser gives timedelta) in milliseconds; None is 0."""
    return 0 if d is None else round(d.total_seconds() * 1000)


def format_duration(ms: int) -> str:
    """Milliseconds as Prometheus prints a duration (`1h30m`, `0s`)."""
    if ms == 0:
        return "0s"
    parts = []
    for unit in ("y", "w", "d", "h", "m", "s", "ms"):
        n, ms = divmod(ms, _UNIT_MS[unit])
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


def is_stale(v: float) -> bool:
    return v != v and struct.pack("<d", v) == _STALE_BITS


class PromQLError(Exception):
    """An expression outside the supported subset, or malformed; raised when the rule loads."""


class EvalError(Exception):
    """An evaluation that Prometheus would also fail (e.g. many-to-many matching)."""


@dataclass(slots=True)
class Sample:
    labels: Labels
    value: float
    t: int = 0  # sample timestamp (ms); what timestamp() returns for a plain selector


@dataclass(slots=True)
class Series:
    """A series in a range: times (ms) and values side by side, as storages slice them cheaply."""

    labels: Labels
    times: Sequence[float] = field(default_factory=list)
    values: Sequence[float] = field(default_factory=list)
    # The storage knows there is no NaN (so no staleness marker) among the values: the evaluator
    # need not look for one, and max/min_over_time are the builtins.
    nan_free: bool = False


Vector = list[Sample]
Matrix = list[Series]
Value = Vector | Matrix | float | str


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str  # "=", "!=", "=~", "!~"
    value: str
    regex: Regex | None = None  # anchored, for =~ and !~

    def matches(self, labels: dict[str, str]) -> bool:
        v = labels.get(self.name, "")
        if self.op == "=":
            return v == self.value
        if self.op == "!=":
            return v != self.value
        assert self.regex is not None
        return self.regex.matches(v) == (self.op == "=~")


class Storage(Protocol):
    """Where selectors read from: series whose labels satisfy all matchers, points in [start, end]."""

    def select(self, matchers: Sequence[Matcher], start: int, end: int) -> Iterable[Series]: ...
