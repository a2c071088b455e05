"""Silences: matchers plus a time window during which matching alerts are not notified. Kept in SQLite
beside the outbox so they survive restarts. Created and expired through /api/v1/silences.

A silence mutes pages, so what may be stored is bounded: times must be real instants, a silence may
last at most `max_duration` (default 7 days), hold at most `max_size_bytes` of matchers and comment,
and at most `max_silences` may be active or pending at once. Expired silences are purged after
`retention` (5 days, as in Alertmanager). A row on disk that breaks these rules (written by an older
gpumon, or by hand) is skipped with a log line naming it, never served or applied.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import sqlite3
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from gpumon.config import SilencesConfig, parse_duration
from gpumon.health import Health
from gpumon.notify.payload import rfc3339
from gpumon.notify.routing import matchers_of
from gpumon.rules.promql import Matcher
from gpumon.statefile import open_db

log = structlog.get_logger("gpumon.notify")

SCHEMA = """
CREATE TABLE IF NOT EXISTS silences (
    id TEXT PRIMARY KEY,
    matchers TEXT NOT NULL,
    starts_at REAL NOT NULL,
    ends_at REAL NOT NULL,
    comment TEXT NOT NULL,
    created_by TEXT NOT NULL
)
"""
LATEST = 253402300799.0  # 9999-12-31T23:59:59Z: the last instant RFC 3339 can write


class SilenceError(ValueError):
    """A request the API refuses; the message is for the client."""


class SilenceStoreError(Exception):
    """The silence could not be written (a full disk): nothing was silenced."""


@dataclass(frozen=True)
class Silence:
    id: str
    matchers: tuple[str, ...]
    starts_at: float
    ends_at: float
    comment: str
    created_by: str

    @functools.cached_property
    def parsed(self) -> tuple[Matcher, ...]:
        return matchers_of(self.matchers)

    def active(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at

    def to_json(self, now: float) -> dict[str, Any]:
        state = "active" if self.active(now) else ("pending" if now < self.starts_at else "expired")
        return {"id": self.id, "matchers": list(self.matchers), "startsAt": rfc3339(self.starts_at),
                "endsAt": rfc3339(self.ends_at), "comment": self.comment, "createdBy": self.created_by,
                "status": {"state": state}}


DEFAULT_LIMITS = SilencesConfig()


def parse_request(body: Any, now: float, limits: SilencesConfig = DEFAULT_LIMITS
                  ) -> tuple[tuple[str, ...], float, float, str, str]:
    """Validate a POST body: {"matchers": [...], "startsAt"?, "endsAt" | "duration", "comment", "createdBy"?}.
    Raises SilenceError with a message for the client."""
    if not isinstance(body, dict):
        raise SilenceError("expected a JSON object")
    matchers = body.get("matchers")
    if not isinstance(matchers, list) or not matchers or not all(isinstance(m, str) for m in matchers):
        raise SilenceError('"matchers" must be a non-empty list of strings like "alertname=\\"GpuLost\\""')
    comment, created_by = body.get("comment"), body.get("createdBy", "")
    if not isinstance(comment, str) or not comment.strip():
        raise SilenceError('"comment" is required: say why the alerts are silenced')
    if not isinstance(created_by, str):
        raise SilenceError('"createdBy" must be a string')
    size = sum(len(m.encode("utf-8", "surrogatepass")) for m in matchers) + len(comment.encode(
        "utf-8", "surrogatepass")) + len(created_by.encode("utf-8", "surrogatepass"))
    if size > limits.max_size_bytes:
        raise SilenceError(f"the silence is {size} bytes of matchers and comment; at most "
                           f"{limits.max_size_bytes} are allowed (notify.silences.max_size_bytes)")
    try:
        parsed = matchers_of(matchers)
    except ValueError as exc:
        raise SilenceError(str(exc)) from None
    if all(m.matches({}) for m in parsed):  # as Alertmanager: such a silence would mute everything
        raise SilenceError("at least one matcher must not match the empty string")
    starts = max(_time(body.get("startsAt"), "startsAt", now), now)  # a start in the past is now
    if "duration" in body:
        try:
            ends = starts + parse_duration(body["duration"])
        except ValueError as exc:
            raise SilenceError(f'"duration": {exc}') from None
    elif body.get("endsAt") is None:
        raise SilenceError('"endsAt" or "duration" is required')
    else:
        ends = _time(body["endsAt"], "endsAt", None)
    if ends <= starts:
        raise SilenceError('"endsAt" must be after "startsAt" (and after now)')
    if ends - starts > limits.max_duration:
        raise SilenceError(f"a silence may last at most {_days(limits.max_duration)} "
                           "(notify.silences.max_duration)")
    if starts > now + limits.max_duration:
        raise SilenceError(f"a silence may start at most {_days(limits.max_duration)} from now")
    return tuple(matchers), starts, ends, comment, created_by


def _days(seconds: float) -> str:
    return f"{seconds / 86400:g} days" if seconds >= 86400 else f"{seconds:g} seconds"


def _time(value: Any, key: str, default: float | None) -> float:
    if value is None and default is not None:
        return default
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value) if abs(value) < 1e300 else math.inf
    elif isinstance(value, str):
        with contextlib.suppress(ValueError, OverflowError):
            seconds = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    if seconds is None:
        raise SilenceError(f'"{key}": {value!r} is not an RFC 3339 time or Unix seconds')
    if not 0 <= seconds <= LATEST:
        raise SilenceError(f'"{key}": {value!r} is not a time between 1970 and 9999')
    return seconds


class Silences:
    def __init__(self, path: Path, limits: SilencesConfig = DEFAULT_LIMITS, health: Health | None = None) -> None:
        self.path = path
        self.limits = limits
        self._db = open_db(path, SCHEMA, health)
        self._cache: list[Silence] = self._load()
        self.purge()

    def _load(self) -> list[Silence]:
        out = []
        for row in self._db.execute("SELECT id, matchers, starts_at, ends_at, comment, created_by FROM silences"):
            try:
                silence = Silence(str(row[0]), tuple(str(m) for m in json.loads(row[1])), float(row[2]),
                                  float(row[3]), str(row[4]), str(row[5]))
                if not (0 <= silence.starts_at < silence.ends_at <= LATEST):
                    raise ValueError(f"times {row[2]!r}..{row[3]!r} are not a window between 1970 and 9999")
                silence.parsed  # noqa: B018 -- parse now: a bad matcher is a bad row
            except (ValueError, TypeError) as exc:
                log.error("skipping an invalid silence in the state file", file=str(self.path), id=row[0],
                          error=str(exc))
                continue
            out.append(silence)
        return out

    def add(self, matchers: tuple[str, ...], starts: float, ends: float, comment: str, created_by: str,
            now: float | None = None) -> Silence:
        """Store a validated silence. Raises SilenceError at the count limit, SilenceStoreError when
        the file refuses the write."""
        now = time.time() if now is None else now
        self.purge(now)
        if sum(1 for s in self._cache if s.ends_at > now) >= self.limits.max_silences:
            raise SilenceError(f"{self.limits.max_silences} silences are active or pending already "
                               "(notify.silences.max_silences); expire some first")
        s = Silence(str(uuid.uuid4()), matchers, starts, ends, comment, created_by)
        try:
            self._db.execute("INSERT INTO silences VALUES (?,?,?,?,?,?)",
                             (s.id, json.dumps(list(matchers)), starts, ends, comment, created_by))
        except sqlite3.Error as exc:
            raise SilenceStoreError(f"cannot store the silence: {exc}") from None
        self._cache.append(s)
        return s

    def expire(self, silence_id: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        found = next((s for s in self._cache if s.id == silence_id), None)
        if found is None:
            return False
        ended = Silence(found.id, found.matchers, min(found.starts_at, now), min(found.ends_at, now),
                        found.comment, found.created_by)
        try:
            self._db.execute("UPDATE silences SET starts_at=?, ends_at=? WHERE id=?",
                             (ended.starts_at, ended.ends_at, silence_id))
        except sqlite3.Error as exc:
            raise SilenceStoreError(f"cannot expire the silence: {exc}") from None
        self._cache = [ended if s.id == silence_id else s for s in self._cache]
        return True

    def purge(self, now: float | None = None) -> None:
        """Forget silences that ended more than `retention` ago."""
        cutoff = (time.time() if now is None else now) - self.limits.retention
        if not any(s.ends_at < cutoff for s in self._cache):
            return
        try:
            self._db.execute("DELETE FROM silences WHERE ends_at < ?", (cutoff,))
        except sqlite3.Error:
            return  # the disk is full: try again next time
        self._cache = [s for s in self._cache if s.ends_at >= cutoff]

    def all(self) -> list[Silence]:
        return list(self._cache)

    def silenced(self, labels: dict[str, str], now: float) -> bool:
        return any(s.active(now) and all(m.matches(labels) for m in s.parsed) for s in self._cache)

    def close(self) -> None:
        self._db.close()
