"""`gpumon report`: where the GPU-hours went over a period, by owner or by GPU, with energy and cost.

The numbers come as usage rows (a GPU's own time by state, and each owner's share of it), from this
host's accounting file or from a Prometheus server's counters; this module groups and prints them.
Sorted by waste (GPU-hours held idle), with a first line of totals and the waste share: the share of
held GPU time spent idle, the figure a scheduler change ("32 % less idle waste") is measured in.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from gpumon.accounting.db import Row
from gpumon.accounting.ledger import ACTIVE, IDLE_FREE, IDLE_HELD, Owner

HOUR = 3600.0
GROUPINGS = ("namespace", "pod", "job", "user", "owner", "gpu", "host")


@dataclass
class Line:
    """One group's GPU-hours and what they cost."""

    group: dict[str, str]
    active_h: float = 0.0
    idle_held_h: float = 0.0
    idle_free_h: float = 0.0
    sm_held_hours: float = 0.0  # SM-activity-weighted hours while held
    kwh: float = 0.0
    cost: float | None = None
    idle_cost: float | None = None

    @property
    def held_h(self) -> float:
        return self.active_h + self.idle_held_h

    @property
    def mean_sm_held(self) -> float | None:
        return self.sm_held_hours / self.held_h if self.held_h > 0 else None

    def add(self, row: Row) -> None:
        hours = row.seconds / HOUR
        if row.state == ACTIVE:
            self.active_h += hours
        elif row.state == IDLE_HELD:
            self.idle_held_h += hours
        elif row.state == IDLE_FREE:
            self.idle_free_h += hours
        if row.state != IDLE_FREE:
            self.sm_held_hours += row.sm_seconds / HOUR
        self.kwh += row.joules / 3.6e6


@dataclass
class Report:
    start: float
    end: float
    by: str
    lines: list[Line]
    total: Line
    source: str  # "this host's accounting (PATH)" or the Prometheus URL

    @property
    def waste_share(self) -> float | None:
        """Idle share of held GPU time."""
        t = self.total
        return t.idle_held_h / t.held_h if t.held_h > 0 else None

    @property
    def idle_share(self) -> float | None:
        """Idle share of all GPU time (held idle and free)."""
        t = self.total
        all_h = t.held_h + t.idle_free_h
        return (t.idle_held_h + t.idle_free_h) / all_h if all_h > 0 else None


def group_key(by: str, row: Row, host: str) -> dict[str, str] | None:
    """The group a row counts in, or None when it does not count in this grouping (owners' rows count
    in owner groupings, a GPU's own rows in GPU and host groupings)."""
    if by in ("gpu", "host"):
        if row.owner is not None:
            return None
        return {"host": host} if by == "host" else {"host": host, "gpu": str(row.gpu), "uuid": row.uuid}
    if row.owner is None:
        return None
    o: Owner = row.owner
    if by == "namespace":
        return {"namespace": o.namespace or "-"}
    if by == "pod":
        return {"namespace": o.namespace or "-", "pod": o.pod or "-"}
    if by == "job":
        return {"job": o.job or "-", "user": o.user or "-"}
    if by == "user":
        return {"user": o.user or "-"}
    return {k: v for k, v in o.labels() if v} or {"owner": "(nobody known)"}


def build(rows: Iterable[tuple[Row, str]], *, by: str, start: float, end: float, source: str,
          price_per_gpu_hour: float | None = None, price_per_kwh: float | None = None) -> Report:
    """Group (row, host) pairs. Totals come from the GPUs' own rows, whatever the grouping."""
    lines: dict[tuple[tuple[str, str], ...], Line] = {}
    total = Line({"total": ""})
    for row, host in rows:
        if row.owner is None:
            total.add(row)
        group = group_key(by, row, host)
        if group is None:
            continue
        key = tuple(sorted(group.items()))
        (lines.get(key) or lines.setdefault(key, Line(group))).add(row)
    for line in [*lines.values(), total]:
        if price_per_gpu_hour is not None or price_per_kwh is not None:
            line.cost = line.held_h * (price_per_gpu_hour or 0.0) + line.kwh * (price_per_kwh or 0.0)
            line.idle_cost = line.idle_held_h * (price_per_gpu_hour or 0.0)
    ordered = sorted(lines.values(), key=lambda x: (-x.idle_held_h, -x.held_h, sorted(x.group.items())))
    return Report(start, end, by, ordered, total, source)


# --- output ------------------------------------------------------------------------------------------

COLUMNS = (("held_h", "GPU-h held"), ("active_h", "active"), ("idle_held_h", "idle held"),
           ("idle_free_h", "idle free"), ("mean_sm_held", "SM while held"), ("kwh", "energy kWh"),
           ("cost", "cost"), ("idle_cost", "idle cost"))


def _cells(line: Line, report: Report) -> list[str]:
    out = []
    for attr, _ in COLUMNS:
        if attr == "idle_free_h" and report.by not in ("gpu", "host"):
            continue
        if attr in ("cost", "idle_cost") and report.total.cost is None:
            continue
        value = getattr(line, attr)
        if value is None:
            out.append("-")
        elif attr == "mean_sm_held":
            out.append(f"{value * 100:.1f} %")
        elif attr in ("cost", "idle_cost"):
            out.append(f"{value:,.2f}")
        else:
            out.append(f"{value:,.3f}")
    return out


def _headers(report: Report) -> list[str]:
    return [title for attr, title in COLUMNS
            if not (attr == "idle_free_h" and report.by not in ("gpu", "host"))
            and not (attr in ("cost", "idle_cost") and report.total.cost is None)]


def summary(report: Report) -> str:
    t = report.total
    waste = report.waste_share
    idle = report.idle_share
    parts = [f"{t.held_h + t.idle_free_h:,.3f} GPU-hours", f"{t.held_h:,.3f} held",
             f"{t.active_h:,.3f} active", f"{t.idle_held_h:,.3f} held idle", f"{t.idle_free_h:,.3f} free",
             f"waste (idle share of held) {waste * 100:.1f} %" if waste is not None else "waste -",
             f"idle share of all {idle * 100:.1f} %" if idle is not None else "",
             f"{t.kwh:,.3f} kWh"]
    if t.cost is not None:
        parts.append(f"cost {t.cost:,.2f} (idle {t.idle_cost or 0:,.2f})")
    return "Total: " + ", ".join(p for p in parts if p)


def as_table(report: Report) -> str:
    from datetime import UTC, datetime

    def stamp(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    keys = sorted({k for line in report.lines for k in line.group}, key=lambda k: list(GROUP_ORDER).index(k)
                  if k in GROUP_ORDER else 99)
    header = [*keys, *_headers(report)]
    rows = [[line.group.get(k, "") for k in keys] + _cells(line, report) for line in report.lines]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    numeric = len(keys)
    out = [f"GPU usage {stamp(report.start)} to {stamp(report.end)}, by {report.by}, from {report.source}",
           summary(report), ""]
    for r in [header, *rows]:
        out.append("  ".join(c.ljust(w) if i < numeric else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip())
    if not rows:
        out.append("(no GPU time accounted in this period)")
    return "\n".join(out)


GROUP_ORDER = ("host", "gpu", "uuid", "namespace", "pod", "owner_namespace", "owner_pod", "owner_container", "job",
               "job_id", "user", "process", "owner")


def _record(line: Line) -> dict[str, object]:
    d = asdict(line)
    d.pop("sm_held_hours")
    group = d.pop("group")
    return {**group, "held_h": line.held_h, **d, "mean_sm_held": line.mean_sm_held}


def as_json(report: Report) -> str:
    return json.dumps({"start": report.start, "end": report.end, "by": report.by, "source": report.source,
                       "total": _record(report.total), "waste_share": report.waste_share,
                       "idle_share": report.idle_share, "groups": [_record(line) for line in report.lines]},
                      indent=2)


def as_csv(report: Report) -> str:
    records = [_record(line) for line in report.lines]
    fields = list(dict.fromkeys(k for r in records for k in r)) or ["held_h"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()
