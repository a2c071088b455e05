"""Silences: matchers plus a time window during which matching alerts are not notified. Kept in SQLite
beside the outbox so they survive restarts. Created and expired through /api/v1/silences."""

from __future__ import annotations

import functools
import json
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpumon.notify.payload import rfc3339
from gpumon.notify.routing import matchers_of
from gpumon.rules.promql import Matcher

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


def parse_request(body: Any, now: float) -> tuple[tuple[str, ...], float, float, str, str]:
    """Validate a POST body: {"matchers": [...], "startsAt"?, "endsAt" | "duration", "comment", "createdBy"?}.
    Raises ValueError with a message for the client."""
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object")
    matchers = body.get("matchers")
    if not isinstance(matchers, list) or not matchers or not all(isinstance(m, str) for m in matchers):
        raise ValueError('"matchers" must be a non-empty list of strings like "alertname=\\"GpuLost\\""')
    matchers_of(matchers)
    starts = _time(body.get("startsAt"), now)
    if "duration" in body:
        from gpumon.config import parse_duration

        ends = starts + parse_duration(body["duration"])
    else:
        ends = _time(body.get("endsAt"), None)
    if ends <= starts:
        raise ValueError('"endsAt" must be after "startsAt"')
    comment = body.get("comment")
    if not isinstance(comment, str) or not comment.strip():
        raise ValueError('"comment" is required: say why the alerts are silenced')
    return tuple(matchers), starts, ends, comment, str(body.get("createdBy", ""))


def _time(value: Any, default: float | None) -> float:
    if value is None:
        if default is None:
            raise ValueError('"endsAt" or "duration" is required')
        return default
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        from datetime import datetime

        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    raise ValueError(f"{value!r} is not an RFC 3339 time or Unix seconds")


class Silences:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(SCHEMA)
        self._cache: list[Silence] = self._load()

    def _load(self) -> list[Silence]:
        rows = self._db.execute("SELECT id, matchers, starts_at, ends_at, comment, created_by FROM silences")
        return [Silence(r[0], tuple(json.loads(r[1])), r[2], r[3], r[4], r[5]) for r in rows]

    def add(self, matchers: tuple[str, ...], starts: float, ends: float, comment: str, created_by: str) -> Silence:
        s = Silence(str(uuid.uuid4()), matchers, starts, ends, comment, created_by)
        self._db.execute("INSERT INTO silences VALUES (?,?,?,?,?,?)",
                         (s.id, json.dumps(list(matchers)), starts, ends, comment, created_by))
        self._cache.append(s)
        return s

    def expire(self, silence_id: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        found = next((s for s in self._cache if s.id == silence_id), None)
        if found is None:
            return False
        self._db.execute("UPDATE silences SET ends_at=? WHERE id=?", (min(found.ends_at, now), silence_id))
        self._cache = self._load()
        return True

    def all(self) -> list[Silence]:
        return list(self._cache)

    def silenced(self, labels: dict[str, str], now: float) -> bool:
        return any(s.active(now) and all(m.matches(labels) for m in s.parsed) for s in self._cache)

    def close(self) -> None:
        self._db.close()
