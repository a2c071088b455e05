"""The durable outbox: every notification is written here before it is sent and removed only after a
receiver accepted it, so a crash, a restart or a receiver outage loses nothing (at-least-once; the
entry id is the idempotency key receivers de-duplicate on).

States: `queued` (waiting or retrying), `failed` (a permanent 4xx: kept for inspection) and `dead`
(still undelivered after `max_age`). SQLite in WAL mode; all access from the event loop's thread.
"""

from __future__ import annotations

import random
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    receiver TEXT NOT NULL,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt);
"""
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 300.0


@dataclass(frozen=True)
class Entry:
    id: str
    receiver: str
    body: bytes
    created: float
    attempts: int


def backoff(attempts: int, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: uniform in [c/2, c], c = min(max, base * 2^attempts)."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** min(attempts, 20))
    return (rng or random).uniform(ceiling / 2, ceiling)


class Outbox:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def put(self, receiver: str, body: bytes, now: float | None = None) -> str:
        """Queue a notification; returns its id (the `webhook-id` receivers de-duplicate on)."""
        now = time.time() if now is None else now
        entry_id = f"msg_{uuid.uuid4().hex}"
        self._db.execute("INSERT INTO outbox (id, receiver, body, created, next_attempt) VALUES (?,?,?,?,?)",
                         (entry_id, receiver, body, now, now))
        return entry_id

    def due(self, now: float, limit: int = 100) -> list[Entry]:
        rows = self._db.execute(
            "SELECT id, receiver, body, created, attempts FROM outbox WHERE state='queued' AND next_attempt<=? "
            "ORDER BY created LIMIT ?", (now, limit))
        return [Entry(*row) for row in rows]

    def next_due(self) -> float | None:
        row = self._db.execute("SELECT MIN(next_attempt) FROM outbox WHERE state='queued'").fetchone()
        return row[0] if row and row[0] is not None else None

    def delivered(self, entry_id: str) -> None:
        self._db.execute("DELETE FROM outbox WHERE id=?", (entry_id,))

    def retry(self, entry: Entry, at: float, error: str) -> None:
        """Try this entry again at `at`; the receiver's later entries wait too, so order is kept."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("UPDATE outbox SET attempts=attempts+1, next_attempt=?, last_error=? WHERE id=?",
                             (at, error, entry.id))
            self._db.execute("UPDATE outbox SET next_attempt=MAX(next_attempt, ?) WHERE receiver=? AND "
                             "state='queued' AND created>=? AND id!=?", (at, entry.receiver, entry.created, entry.id))

    def fail(self, entry: Entry, state: str, error: str) -> None:
        """Stop trying: `failed` (permanent error) or `dead` (too old). Kept for inspection."""
        self._db.execute("UPDATE outbox SET attempts=attempts+1, state=?, last_error=? WHERE id=?",
                         (state, error, entry.id))

    def stats(self, now: float) -> dict[str, tuple[int, float]]:
        """Per receiver: queued count and the age of the oldest queued entry."""
        rows = self._db.execute(
            "SELECT receiver, COUNT(*), MIN(created) FROM outbox WHERE state='queued' GROUP BY receiver")
        return {r: (n, now - oldest) for r, n, oldest in rows}

    def close(self) -> None:
        self._db.close()
