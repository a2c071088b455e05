"""The durable outbox: every notification is written here before it is sent and removed only after a
receiver accepted it, so a crash, a restart or a receiver outage loses nothing (at-least-once; the
entry id is the idempotency key receivers de-duplicate on). Beside it, the notification log: what
each group last notified, so a restart neither re-pages nor forgets a resolution.

States: `queued` (waiting or retrying), `failed` (a permanent 4xx: kept for inspection) and `dead`
(still undelivered after `max_age`). SQLite in WAL mode; all access from the event loop's thread.

When the file refuses writes (a full disk, an I/O error) the outbox carries on in memory: new
notifications queue there after the file's, deliveries and retries are remembered, and every change
is written to the file, in order, as soon as it takes writes again. Alerts keep going out while the
disk is full; only what a process killed during the outage had not written is lost.
"""

from __future__ import annotations

import random
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from gpumon.health import Health
from gpumon.statefile import open_db

log = structlog.get_logger("gpumon.notify")

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
CREATE TABLE IF NOT EXISTS notification_log (
    group_id TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
"""
# A receiver's notifications go in insertion order (the rowid: unique, unlike `created`): nothing
# queued after an entry that waits for a retry may go first. Every query below walks the
# (receiver, state) index, which holds the rowid, up to such an entry, so neither a retry (one row
# updated) nor finding what is due costs in proportion to a dead receiver's backlog.
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 300.0
COMPONENT = "state:outbox.sqlite"


@dataclass
class Entry:
    id: str
    receiver: str
    body: bytes
    created: float
    attempts: int
    next_attempt: float = 0.0


def backoff(attempts: int, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: uniform in [c/2, c], c = min(max, base * 2^attempts)."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** min(attempts, 20))
    return (rng or random).uniform(ceiling / 2, ceiling)


class Outbox:
    def __init__(self, path: Path, health: Health | None = None) -> None:
        self._health = health
        self._db = open_db(path, SCHEMA, health)
        # While the file refuses writes: the statements it still has to take, in order; the entries
        # queued meanwhile (per receiver, after the file's); and what became of the file's rows.
        self._backlog: list[tuple[str, tuple[Any, ...]]] = []
        self._unsaved: dict[str, list[Entry]] = {}
        self._done: dict[str, str] = {}  # id -> receiver: delivered or given up, row not yet updated
        self._retries: dict[str, tuple[int, float]] = {}  # id -> (attempts, next_attempt) not yet written

    # --- writing ------------------------------------------------------------------------------------

    def put(self, receiver: str, body: bytes, now: float | None = None,
            log_entry: tuple[str, str] | None = None) -> str:
        """Queue a notification; returns its id (the `webhook-id` receivers de-duplicate on).
        `log_entry` (group id, state) is written in the same transaction: the notification log never
        says a group was notified without the notification being queued."""
        now = time.time() if now is None else now
        entry = Entry(f"msg_{uuid.uuid4().hex}", receiver, body, now, 0, now)
        statements: list[tuple[str, tuple[Any, ...]]] = [(
            "INSERT INTO outbox (id, receiver, body, created, next_attempt) VALUES (?,?,?,?,?)",
            (entry.id, receiver, body, now, now))]
        if log_entry is not None:
            statements.append(("INSERT OR REPLACE INTO notification_log VALUES (?,?)", log_entry))
        if not self._write(statements):
            self._unsaved.setdefault(receiver, []).append(entry)
        return entry.id

    def delivered(self, entry: Entry) -> None:
        self._finish(entry, ("DELETE FROM outbox WHERE id=?", (entry.id,)))

    def fail(self, entry: Entry, state: str, error: str) -> None:
        """Stop trying: `failed` (permanent error) or `dead` (too old). Kept for inspection."""
        self._finish(entry, ("UPDATE outbox SET attempts=attempts+1, state=?, last_error=? WHERE id=?",
                             (state, error, entry.id)))

    def retry(self, entry: Entry, at: float, error: str) -> None:
        """Try this entry again at `at`; the receiver's later entries wait for it (see `due`)."""
        entry.attempts += 1
        entry.next_attempt = at
        if not self._write([("UPDATE outbox SET attempts=?, next_attempt=?, last_error=? WHERE id=?",
                             (entry.attempts, at, error, entry.id))]) and not self._is_unsaved(entry):
            self._retries[entry.id] = (entry.attempts, at)

    def save_log(self, group_id: str, state: str | None) -> None:
        """Record (or with None forget) what a group last notified."""
        if state is None:
            self._write([("DELETE FROM notification_log WHERE group_id=?", (group_id,))])
        else:
            self._write([("INSERT OR REPLACE INTO notification_log VALUES (?,?)", (group_id, state))])

    def _finish(self, entry: Entry, statement: tuple[str, tuple[Any, ...]]) -> None:
        was_unsaved = self._is_unsaved(entry)
        if was_unsaved:
            self._unsaved[entry.receiver] = [e for e in self._unsaved[entry.receiver] if e.id != entry.id]
        if not self._write([statement]) and not was_unsaved:
            self._done[entry.id] = entry.receiver
        self._retries.pop(entry.id, None)

    def _is_unsaved(self, entry: Entry) -> bool:
        return any(e.id == entry.id for e in self._unsaved.get(entry.receiver, []))

    def _write(self, statements: list[tuple[str, tuple[Any, ...]]]) -> bool:
        """Run the statements in one transaction, or keep them for later; True when written."""
        if not self._backlog:
            try:
                self._transaction(statements)
                return True
            except sqlite3.Error as exc:
                if self._health is not None:
                    self._health.degraded(COMPONENT, f"cannot write; keeping notifications in memory: {exc}")
                else:
                    log.error("cannot write the outbox; keeping notifications in memory", error=str(exc))
        self._backlog.extend(statements)
        return False

    def _transaction(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        with self._db:
            self._db.execute("BEGIN")
            for sql, params in statements:
                self._db.execute(sql, params)

    def sync(self) -> bool:
        """Write what the file refused before; True when nothing is left in memory only."""
        if not self._backlog:
            return True
        try:
            self._transaction(self._backlog)
        except sqlite3.Error:
            return False
        self._backlog.clear()
        self._unsaved.clear()
        self._done.clear()
        self._retries.clear()
        if self._health is not None:
            self._health.recovered(COMPONENT)
        log.info("outbox written to disk again")
        return True

    # --- reading ------------------------------------------------------------------------------------

    def receivers(self) -> list[str]:
        """Receivers with something queued."""
        return sorted({r for r, _ in self._heads()} | {r for r, e in self._unsaved.items() if e})

    def due(self, receiver: str, now: float, limit: int = 100) -> list[Entry]:
        """Up to `limit` of the receiver's queued entries, in order, up to the first that is not due
        yet: each receiver gets its notifications in order."""
        found = []
        for entry in self._queued(receiver, limit):
            if entry.next_attempt > now:
                break
            found.append(entry)
        return found

    def next_due(self, receiver: str) -> float | None:
        """When the receiver's first queued entry can be tried (the others wait for it)."""
        first = self._queued(receiver, 1)
        return first[0].next_attempt if first else None

    def _queued(self, receiver: str, limit: int) -> list[Entry]:
        out: list[Entry] = []
        head = self._head(receiver)
        if head is not None:
            rows = self._db.execute(
                "SELECT id, next_attempt, created, attempts, body FROM outbox "
                "WHERE receiver=? AND state='queued' AND rowid>=? ORDER BY rowid LIMIT ?",
                (receiver, head, limit + len(self._done)))
            for entry_id, next_attempt, created, attempts, body in rows:
                if entry_id in self._done:
                    continue
                attempts, next_attempt = self._retries.get(entry_id, (attempts, next_attempt))
                out.append(Entry(entry_id, receiver, body, created, attempts, next_attempt))
        out.extend(self._unsaved.get(receiver, []))
        return out[:limit]

    def _head(self, receiver: str) -> int | None:
        row = self._db.execute("SELECT rowid FROM outbox WHERE receiver=? AND state='queued' ORDER BY rowid LIMIT 1",
                               (receiver,)).fetchone()
        return None if row is None else int(row[0])

    def _heads(self) -> list[tuple[str, int]]:
        """(receiver, rowid of its first queued entry) for every receiver with something queued: a
        few index seeks per receiver (a GROUP BY would read the whole backlog)."""
        heads: list[tuple[str, int]] = []
        receiver = ""
        while (row := self._db.execute("SELECT receiver FROM outbox WHERE receiver>? ORDER BY receiver LIMIT 1",
                                       (receiver,)).fetchone()) is not None:
            receiver = row[0]
            if (head := self._head(receiver)) is not None:
                heads.append((receiver, head))
        return heads

    def stats(self, now: float) -> dict[str, tuple[int, float]]:
        """Per receiver: queued count and the age of the oldest queued entry."""
        stats = {}
        for receiver, head in self._heads():
            (n,) = self._db.execute("SELECT COUNT(*) FROM outbox WHERE receiver=? AND state='queued'",
                                    (receiver,)).fetchone()
            (oldest,) = self._db.execute("SELECT created FROM outbox WHERE rowid=?", (head,)).fetchone()
            stats[receiver] = (n - sum(1 for r in self._done.values() if r == receiver), now - oldest)
        for receiver, entries in self._unsaved.items():
            n, age = stats.get(receiver, (0, 0.0))
            if entries:
                stats[receiver] = (n + len(entries), max(age, now - entries[0].created))
        return stats

    def notification_log(self) -> dict[str, str]:
        """Every group's last notified state, as saved."""
        return dict(self._db.execute("SELECT group_id, state FROM notification_log").fetchall())

    def close(self) -> None:
        self.sync()
        self._db.close()
