"""Alert state in SQLite, so a restart neither re-pages nor forgets a pending `for`.

One row per active alert (pending, firing, or resolved and still reported), keyed by the rule and the
alert's label set. The engine's state is written after each evaluation in one transaction; at start
the rows of rules that still exist are loaded back. WAL mode keeps a writer from blocking readers.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import structlog

from gpumon.health import Health
from gpumon.rules.alerting import Alert, RuleState, State
from gpumon.statefile import open_db

log = structlog.get_logger("gpumon.rules")

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    rule TEXT NOT NULL,
    labels TEXT NOT NULL,
    source TEXT NOT NULL,
    annotations TEXT NOT NULL,
    state TEXT NOT NULL,
    active_at INTEGER NOT NULL,
    fired_at INTEGER NOT NULL,
    resolved_at INTEGER NOT NULL,
    keep_firing_since INTEGER NOT NULL,
    value REAL,
    PRIMARY KEY (rule, labels)
)
"""


def rule_key(state: RuleState) -> str:
    """Identity of a rule across restarts: its name and expression (an edited rule starts afresh)."""
    return f"{state.rule.name}\0{state.rule.expr_text}"


class AlertStateDB:
    def __init__(self, path: Path, health: Health | None = None) -> None:
        self.path = path
        self._health = health
        self._db = open_db(path, SCHEMA, health)
        self._saved: frozenset[tuple[object, ...]] | None = None  # what the file holds, once known

    def save(self, states: list[RuleState]) -> None:
        """Write the state; when the disk refuses, report it and try again after the next evaluation
        (alerts are still evaluated and notified meanwhile, only a restart would forget them)."""
        try:
            self._save(states)
        except sqlite3.Error as exc:
            if self._health is not None:
                self._health.degraded(f"state:{self.path.name}", f"alert state not saved: {exc}")
            return
        if self._health is not None:
            self._health.recovered(f"state:{self.path.name}")

    def _save(self, states: list[RuleState]) -> None:
        # What a restart needs: which alerts exist, their state and its times. Values and annotations
        # change at every evaluation and are recomputed by the first one after a restart, so an
        # evaluation that changed nothing else writes nothing (this runs on the event loop).
        needed = frozenset((rule_key(s), key, a.state, a.active_at, a.fired_at, a.resolved_at, a.keep_firing_since)
                           for s in states for key, a in s.active.items())
        if needed == self._saved:
            return
        rows = [(rule_key(s), json.dumps(a.labels), json.dumps(a.source), json.dumps(a.annotations), a.state.value,
                 a.active_at, a.fired_at, a.resolved_at, a.keep_firing_since, a.value)
                for s in states for a in s.active.values()]
        with self._db:  # one transaction: the file never holds half an evaluation
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM alerts")
            self._db.executemany("INSERT INTO alerts VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        self._saved = needed

    def restore(self, states: list[RuleState]) -> int:
        """Put saved alerts back into the rule states that still exist; returns how many."""
        by_key = {rule_key(s): s for s in states}
        n = 0
        for row in self._db.execute("SELECT * FROM alerts"):
            state = by_key.get(row[0])
            if state is None:
                continue
            try:
                labels = tuple((str(k), str(v)) for k, v in json.loads(row[1]))
                source = tuple((str(k), str(v)) for k, v in json.loads(row[2]))
                annotations = {str(k): str(v) for k, v in json.loads(row[3]).items()}
                value = float(row[9]) if row[9] is not None else math.nan  # SQLite stores NaN as NULL
                alert = Alert(labels, source, annotations, State(row[4]), int(row[5]), value,
                              fired_at=int(row[6]), resolved_at=int(row[7]), keep_firing_since=int(row[8]))
            except (ValueError, TypeError, AttributeError) as exc:  # a damaged row: that alert starts afresh
                log.error("unreadable alert state row; that alert starts afresh", file=str(self.path),
                          rule=row[0].split("\0")[0], error=f"{type(exc).__name__}: {exc}")
                continue
            state.active[labels] = alert
            n += 1
        return n

    def close(self) -> None:
        self._db.close()
