"""The accounting state file (accounting.sqlite in the state directory): totals since accounting began,
which the exported counters continue from after a restart, and per-bucket amounts, which
`gpumon report` sums over a period. Written after every fast round (a kill -9 loses at most that
round), as increments, so a row is never rewritten from a partial memory of it."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gpumon.accounting.ledger import OWNER_LABELS, Amounts, Key, Owner
from gpumon.health import Health
from gpumon.statefile import open_db

FILE = "accounting.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS totals (
    uuid TEXT NOT NULL, gpu INTEGER NOT NULL, owner TEXT NOT NULL, state TEXT NOT NULL, signal TEXT NOT NULL,
    seconds REAL NOT NULL, sm_seconds REAL NOT NULL, joules REAL NOT NULL, seen REAL NOT NULL,
    PRIMARY KEY (uuid, owner, state, signal));
CREATE TABLE IF NOT EXISTS usage (
    bucket INTEGER NOT NULL, uuid TEXT NOT NULL, gpu INTEGER NOT NULL, owner TEXT NOT NULL, state TEXT NOT NULL,
    signal TEXT NOT NULL, seconds REAL NOT NULL, sm_seconds REAL NOT NULL, joules REAL NOT NULL,
    PRIMARY KEY (bucket, uuid, owner, state, signal));
CREATE INDEX IF NOT EXISTS usage_by_bucket ON usage (bucket);
"""
GPU = ""  # the owner column of a GPU's own rows
_ADD = ("ON CONFLICT DO UPDATE SET seconds = seconds + excluded.seconds, "
        "sm_seconds = sm_seconds + excluded.sm_seconds, joules = joules + excluded.joules")


def owner_text(owner: Owner | None) -> str:
    return GPU if owner is None else json.dumps(dict(owner.labels()), sort_keys=True, separators=(",", ":"))


def owner_of(text: str) -> Owner | None:
    if text == GPU:
        return None
    labels = json.loads(text)
    return Owner(*(str(labels.get(name, "")) for name in OWNER_LABELS))


@dataclass(frozen=True)
class Row:
    """One row of usage summed over a period."""

    uuid: str
    gpu: int
    owner: Owner | None
    state: str
    signal: str
    seconds: float
    sm_seconds: float
    joules: float


class AccountingDB:
    def __init__(self, path: Path, health: Health | None = None) -> None:
        self.path = path
        self.db = open_db(path, SCHEMA, health)

    def write(self, buckets: dict[tuple[int, Key], Amounts], seen: dict[Key, float]) -> None:
        """Add the increments, by bucket and to the totals, in one transaction."""
        totals: dict[Key, Amounts] = {}
        for (_, key), a in buckets.items():
            t = totals.get(key) or totals.setdefault(key, Amounts())
            t.seconds += a.seconds
            t.sm_seconds += a.sm_seconds
            t.joules += a.joules
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO totals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) " + _ADD + ", seen = max(seen, excluded.seen)",
                [(uuid, gpu, owner_text(owner), state, signal, a.seconds, a.sm_seconds, a.joules,
                  seen.get((uuid, gpu, owner, state, signal), 0.0))
                 for (uuid, gpu, owner, state, signal), a in totals.items()])
            self.db.executemany(
                "INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) " + _ADD,
                [(bucket, uuid, gpu, owner_text(owner), state, signal, a.seconds, a.sm_seconds, a.joules)
                 for (bucket, (uuid, gpu, owner, state, signal)), a in buckets.items()])

    def totals(self, seen_after: float) -> Iterator[tuple[Key, Amounts, float]]:
        for uuid, gpu, owner, state, signal, seconds, sm, joules, seen in self.db.execute(
                "SELECT uuid, gpu, owner, state, signal, seconds, sm_seconds, joules, seen FROM totals "
                "WHERE owner = ? OR seen >= ?", (GPU, seen_after)):
            yield (uuid, gpu, owner_of(owner), state, signal), Amounts(seconds, sm, joules), seen

    def prune(self, before: float) -> None:
        """Buckets older than `before`, and owners not seen since, go; a GPU's own totals stay."""
        with self.db:
            self.db.execute("DELETE FROM usage WHERE bucket < ?", (int(before),))
            self.db.execute("DELETE FROM totals WHERE owner != ? AND seen < ?", (GPU, before))

    def usage(self, start: float, end: float) -> list[Row]:
        """Every (GPU, owner, state, signal)'s amounts in the buckets that begin in [start, end)."""
        rows = self.db.execute(
            "SELECT uuid, gpu, owner, state, signal, sum(seconds), sum(sm_seconds), sum(joules) FROM usage "
            "WHERE bucket >= ? AND bucket < ? GROUP BY uuid, gpu, owner, state, signal", (start, end))
        return [Row(uuid, gpu, owner_of(owner), state, signal, s, sm, j) for uuid, gpu, owner, state, signal, s, sm, j
                in rows]

    def close(self) -> None:
        self.db.close()


def open_readonly(state_dir: Path) -> AccountingDB | None:
    """The accounting file of a state directory for a report, or None when there is none; the daemon
    may be writing it meanwhile (WAL: readers see the last committed round)."""
    path = state_dir / FILE
    if not path.is_file():
        return None
    db = AccountingDB.__new__(AccountingDB)
    db.path = path
    db.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    return db
