"""A fleet's usage rows from a Prometheus server that scrapes gpumon: the accounting counters'
increase over the period, at its end, per GPU and per owner (instant queries of `increase(...[R])`,
which Prometheus extrapolates to the period's edges, as a dashboard would read them).

The server is reached through gpumon/promclient.py (promtool's `--http.config.file`).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from gpumon.accounting.db import Row
from gpumon.accounting.ledger import OWNER_LABELS, Owner
from gpumon.promclient import HttpSettings, query

OWNER_BY = "instance, gpu, uuid, owner_namespace, owner_pod, owner_container, job_id, user, process"
QUERIES = {
    "gpu_seconds": "sum by (instance, gpu, uuid, state, signal) (increase(gpumon_gpu_seconds_total[{r}]))",
    "gpu_sm": "sum by (instance, gpu, uuid, state, signal) (increase(gpumon_gpu_sm_active_seconds_total[{r}]))",
    "gpu_joules": "sum by (instance, gpu, uuid) (increase(gpumon_energy_joules_total[{r}]))",
    "owner_seconds": f"sum by ({OWNER_BY}, state) (increase(gpumon_owner_gpu_seconds_total[{{r}}]))",
    "owner_sm": f"sum by ({OWNER_BY}) (increase(gpumon_owner_sm_active_seconds_total[{{r}}]))",
    "owner_joules": f"sum by ({OWNER_BY}) (increase(gpumon_owner_energy_joules_total[{{r}}]))",
}


def rows(url: str, start: float, end: float, http: HttpSettings, *, progress: bool = True) -> list[tuple[Row, str]]:
    """(row, instance) pairs for the period, from the counters' increase over it."""
    r = f"{max(1, round(end - start))}s"
    results: dict[str, list[dict[str, Any]]] = {}
    began = time.monotonic()
    for i, (name, template) in enumerate(QUERIES.items(), 1):
        if progress and time.monotonic() - began > 1.0:
            print(f"gpumon report: querying Prometheus ({i}/{len(QUERIES)})...", file=sys.stderr)
        results[name] = query(url, template.format(r=r), end, http)

    def value(s: dict[str, Any]) -> float:
        return float(s["value"][1])

    out: list[tuple[Row, str]] = []
    sm = {(*_gpu_key(s["metric"]), s["metric"].get("state", "")): value(s) for s in results["gpu_sm"]}
    # The GPU's energy is its counter's increase: carried by its first row, as it is not per state.
    joules = {(s["metric"].get("instance", ""), s["metric"].get("uuid", "")): value(s) for s in results["gpu_joules"]}
    for s in sorted(results["gpu_seconds"], key=lambda s: s["metric"].get("state", "")):
        m = s["metric"]
        energy = joules.pop((m.get("instance", ""), m.get("uuid", "")), 0.0)
        out.append((Row(m.get("uuid", ""), int(m.get("gpu", "0") or 0), None, m.get("state", ""),
                        m.get("signal", ""), value(s), sm.get((*_gpu_key(m), m.get("state", "")), 0.0), energy),
                    m.get("instance", "")))
    owner_sm = {_owner_key(s["metric"]): value(s) for s in results["owner_sm"]}
    owner_joules = {_owner_key(s["metric"]): value(s) for s in results["owner_joules"]}
    # An owner's SM seconds and joules are per owner, not per state: the first state's row carries them.
    carried: set[tuple[str, ...]] = set()
    for s in sorted(results["owner_seconds"], key=lambda s: s["metric"].get("state", "")):
        m = s["metric"]
        key = _owner_key(m)
        first = key not in carried
        carried.add(key)
        owner = Owner(*(m.get(label, "") for label in OWNER_LABELS))
        out.append((Row(m.get("uuid", ""), int(m.get("gpu", "0") or 0), owner, m.get("state", ""), "", value(s),
                        owner_sm.get(key, 0.0) if first else 0.0, owner_joules.get(key, 0.0) if first else 0.0),
                    m.get("instance", "")))
    return out


def _gpu_key(m: dict[str, str]) -> tuple[str, ...]:
    return (m.get("instance", ""), m.get("uuid", ""), m.get("signal", ""))


def _owner_key(m: dict[str, str]) -> tuple[str, ...]:
    return (m.get("instance", ""), m.get("uuid", ""), *(m.get(label, "") for label in OWNER_LABELS))
