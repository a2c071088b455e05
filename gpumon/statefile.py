"""SQLite files in the state directory: created private, moved aside when corrupt, kept in memory
when the disk refuses them.

Monitoring must come back by itself. A state file that is not a database, or a damaged one, is
renamed to `NAME.corrupt-<UTC time>` (kept for a person to look at), logged, counted in
`gpumon_state_files_quarantined_total{file}`, and a fresh file is started. A file that cannot be
created because the disk is full or failing is replaced by an in-memory database for this run (the
component is reported degraded); only a state directory gpumon may not use at all (permissions, a
file where the directory should be) stops the start, with a sentence naming it.

Files are created 0600 in a 0700 directory: they hold alert labels and notification bodies.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from gpumon.health import Health

log = structlog.get_logger("gpumon.state")

# SQLite result codes (the low byte of the extended code).
_CORRUPT, _FULL, _NOTADB, _IOERR = 11, 13, 26, 10


class StateError(Exception):
    """The state directory cannot be used at all; the message names the path and the reason."""


def is_transient(exc: sqlite3.Error) -> bool:
    """A write that may succeed later: the disk is full or failing (not a bug, not corruption)."""
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in (_FULL, _IOERR)


def open_db(path: Path, schema: str, health: Health | None = None,
            check: Callable[[sqlite3.Connection], None] | None = None) -> sqlite3.Connection:
    """Open (or create) a state file with `schema`, in WAL mode. `check` may read the file to prove
    it usable; a sqlite3.DatabaseError from it, or a corrupt file, quarantines the file."""
    component = f"state:{path.name}"
    if health is not None:
        health.register(component)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))  # SQLite copies the mode to -wal/-shm
    except OSError as exc:
        if exc.errno in (28, 5):  # ENOSPC, EIO
            return _in_memory(path, schema, health, str(exc.strerror))
        raise StateError(f"cannot keep state in {path}: {exc.strerror or exc}") from None
    for attempt in (1, 2):
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("database disk image is malformed")
            db.executescript(schema)
            if check is not None:
                check(db)
            return db
        except sqlite3.DatabaseError as exc:
            db.close()
            code = getattr(exc, "sqlite_errorcode", _CORRUPT) & 0xFF
            if code in (_FULL, _IOERR):
                return _in_memory(path, schema, health, str(exc))
            if code not in (_CORRUPT, _NOTADB) and isinstance(exc, sqlite3.OperationalError):
                raise StateError(f"cannot keep state in {path}: {exc}") from None
            if attempt == 2:
                raise StateError(f"cannot start a fresh {path} after moving a corrupt one aside: {exc}") from None
            quarantine(path, str(exc), health)
    raise AssertionError("unreachable")


def quarantine(path: Path, reason: str, health: Health | None) -> Path:
    """Move a corrupt state file (and its WAL) aside; the next open starts a fresh one."""
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    path.rename(aside)
    for suffix in ("-wal", "-shm"):
        extra = path.with_name(path.name + suffix)
        if extra.exists():
            extra.rename(aside.with_name(aside.name + suffix))
    log.error("state file is corrupt; moved it aside and started a fresh one", file=str(path),
              moved_to=str(aside), reason=reason)
    if health is not None:
        health.quarantined[path.name] += 1
    return aside


def _in_memory(path: Path, schema: str, health: Health | None, reason: str) -> sqlite3.Connection:
    log.error("cannot write the state file; keeping this state in memory until the next start",
              file=str(path), reason=reason)
    if health is not None:
        health.degraded(f"state:{path.name}", f"kept in memory only: {reason}")
    db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    db.executescript(schema)
    return db
