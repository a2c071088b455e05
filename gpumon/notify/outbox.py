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
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (receiver, state);
"""
# A receiver's notifications go in insertion order (the rowid: unique, unlike `created`): nothing
# queued after an entry that waits for a retry may go first. Every query below walks the
# (receiver, state) index, which holds the rowid, up to such an entry, so neither a retry (one row
# updated) nor finding what is due costs in proportion to a dead receiver's backlog.
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
        """Up to `limit` entries to send now, oldest first: per receiver, its queued entries in order
        up to the first that is not due yet (so each receiver gets its notifications in order)."""
        found: list[tuple[int, Entry]] = []
        for receiver, head in self._heads():
            rows = self._db.execute(
                "SELECT rowid, id, next_attempt, created, attempts, body FROM outbox "
                "WHERE receiver=? AND state='queued' AND rowid>=? ORDER BY rowid LIMIT ?", (receiver, head, limit))
            for rowid, entry_id, next_attempt, created, attempts, body in rows:
                if next_attempt > now:
                    break
                found.append((rowid, Entry(entry_id, receiver, body, created, attempts)))
        return [entry for _, entry in sorted(found, key=lambda f: f[0])[:limit]]

    def next_due(self) -> float | None:
        """When something can next be sent: the earliest retry time of any receiver's first queued
        entry (the entries after it wait for it, whatever their own times)."""
        times = [self._db.execute("SELECT next_attempt FROM outbox WHERE rowid=?", (head,)).fetchone()[0]
                 for _, head in self._heads()]
        return min(times, default=None)

    def _heads(self) -> list[tuple[str, int]]:
        """(receiver, rowid of its first queued entry) for every receiver with something queued: a
        few index seeks per receiver (a GROUP BY would read the whole backlog)."""
        heads: list[tuple[str, int]] = []
        receiver = ""
        while (row := self._db.execute("SELECT receiver FROM outbox WHERE receiver>? ORDER BY receiver LIMIT 1",
                                       (receiver,)).fetchone()) is not None:
            receiver = row[0]
            head = self._db.execute("SELECT rowid FROM outbox WHERE receiver=? AND state='queued' "
                                    "ORDER BY rowid LIMIT 1", (receiver,)).fetchone()
            if head is not None:
                heads.append((receiver, head[0]))
        return heads

    def delivered(self, entry_id: str) -> None:
        self._db.execute("DELETE FROM outbox WHERE id=?", (entry_id,))

    def retry(self, entry: Entry, at: float, error: str) -> None:
        """Try this entry again at `at`; the receiver's later entries wait for it (see `due`)."""
        self._db.execute("UPDATE outbox SET attempts=attempts+1, next_attempt=?, last_error=? WHERE id=?",
                         (at, error, entry.id))

    def fail(self, entry: Entry, state: str, error: str) -> None:
        """Stop trying: `failed` (permanent error) or `dead` (too old). Kept for inspection."""
        self._db.execute("UPDATE outbox SET attempts=attempts+1, state=?, last_error=? WHERE id=?",
                         (state, error, entry.id))

    def stats(self, now: float) -> dict[str, tuple[int, float]]:
        """Per receiver: queued count and the age of the oldest queued entry."""
        stats = {}
        for receiver, head in self._heads():
            (n,) = self._db.execute("SELECT COUNT(*) FROM outbox WHERE receiver=? AND state='queued'",
                                    (receiver,)).fetchone()
            (oldest,) = self._db.execute("SELECT created FROM outbox WHERE rowid=?", (head,)).fetchone()
            stats[receiver] = (n, now - oldest)
        return stats

    def close(self) -> None:
        self._db.close()
