"""`gpumon doctor --fleet URL`: the checks every gpumon ran after its last slow poll, read back from a
Prometheus server that scrapes them (`gpumon_health_check_status`, `gpumon_host_check_status`), as
one table of hosts × checks, worst host first. The evidence stays on each host: `gpumon doctor` there."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from gpumon.doctor.checks import STRAGGLER_SPREAD, Verdict, selected
from gpumon.notify.urls import redacted
from gpumon.promclient import HttpSettings, query

BY_STATUS = {0.0: Verdict.OK, 1.0: Verdict.WARN, 2.0: Verdict.FAIL}
STRAGGLER_CHECK = "workload.straggler_across_hosts"
# Each GPU's SM activity over five minutes (one instant would flap between steps), with the Slurm job
# on it: a multi-node job's ranks have the same job_id on every host (a pod's name differs per node).
# The jobs are the "many" side: a GPU may carry several (one per MIG instance, Slurm GPU sharing), and
# with them on the right Prometheus refuses the whole query as many-to-many. SM activity is averaged
# per GPU first so that its side is one series per GPU whatever other labels a scrape adds.
JOB_SM = ("max by (instance, gpu, job_id) (gpumon_gpu_job_info) * on (instance, gpu) group_left () "
          "avg by (instance, gpu) (avg_over_time(gpumon_sm_active_ratio[5m]))")


@dataclass(frozen=True)
class Straggler:
    job_id: str
    instance: str
    gpu: str
    sm_active: float
    fastest: float  # the job's busiest GPU elsewhere
    hosts: int


@dataclass(frozen=True)
class Stragglers:
    found: list[Straggler]
    compared: frozenset[str]  # instances with a GPU of a job on two or more hosts: where the check applies


@dataclass
class Host:
    instance: str
    checks: dict[str, Verdict] = field(default_factory=dict)  # check -> its worst verdict on this host
    gpus: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # check -> GPUs not ok
    exported: bool = False  # it exported checks, though perhaps none that `--only` selects

    @property
    def worst_word(self) -> str:
        """The table's "worst" cell: "no checks" only for a gpumon that exports none (an older one)."""
        return self.worst.word if self.checks or self.exported else "no checks"

    @property
    def worst(self) -> Verdict:
        return max(self.checks.values(), default=Verdict.NOT_APPLICABLE)


def read(url: str, http: HttpSettings, only: frozenset[str] = frozenset()) -> list[Host]:
    """Every gpumon the server scrapes, with the checks it exported (those `only` selects); worst host
    first."""
    now = time.time()
    hosts = {s["metric"].get("instance", ""): Host(s["metric"].get("instance", ""))
             for s in query(url, "gpumon_build_info", now, http)}
    for expr in ("gpumon_health_check_status", "gpumon_host_check_status"):
        for s in query(url, expr, now, http):
            labels = s["metric"]
            host = hosts.setdefault(labels.get("instance", ""), Host(labels.get("instance", "")))
            host.exported = True
            if not selected(labels.get("check", ""), only):
                continue
            verdict = BY_STATUS.get(float(s["value"][1]), Verdict.FAIL)
            check = labels.get("check", "?")
            host.checks[check] = max(host.checks.get(check, Verdict.NOT_APPLICABLE), verdict)
            if verdict >= Verdict.WARN and "gpu" in labels:
                host.gpus[check].append(labels["gpu"])
    return sorted(hosts.values(), key=lambda h: (-h.worst, h.instance))


def stragglers(url: str, http: HttpSettings) -> Stragglers:
    """Per job running on two or more hosts: its slowest GPU when it trails the busiest by STRAGGLER_SPREAD
    or more of SM activity (within a host, `workload.straggler` already says so). Raises ConfigError
    when the query fails."""
    return find_stragglers(query(url, JOB_SM, time.time(), http))


def find_stragglers(result: list[dict[str, Any]]) -> Stragglers:
    """`stragglers` over JOB_SM's answer."""
    jobs_on: dict[tuple[str, str], set[str]] = defaultdict(set)
    rows = []
    for s in result:
        labels = s["metric"]
        instance, gpu, job_id = labels.get("instance", ""), labels.get("gpu", ""), labels.get("job_id", "")
        jobs_on[(instance, gpu)].add(job_id)
        rows.append((job_id, instance, gpu, float(s["value"][1])))
    by_job: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
    for job_id, instance, gpu, sm in rows:
        # A GPU shared by two jobs: its SM activity is theirs together and cannot be credited to either.
        if len(jobs_on[(instance, gpu)]) == 1 and sm == sm:  # NaN: no SM activity to compare
            by_job[job_id].append((instance, gpu, sm))
    found, compared = [], set()
    for job_id, gpus in sorted(by_job.items()):
        hosts = {instance for instance, _, _ in gpus}
        if len(hosts) < 2:
            continue
        compared |= hosts
        instance, gpu, slowest = min(gpus, key=lambda g: g[2])
        fastest = max(sm for _, _, sm in gpus)
        if fastest - slowest >= STRAGGLER_SPREAD:
            found.append(Straggler(job_id, instance, gpu, slowest, fastest, len(hosts)))
    return Stragglers(found, frozenset(compared))


def add_stragglers(hosts: list[Host], scan: Stragglers) -> list[Host]:
    """The straggler check as a column: warn on the host of each job's slowest GPU, ok on the other hosts
    of jobs compared across hosts; no cell on a host that runs no such job (nothing was compared)."""
    by_instance = {h.instance: h for h in hosts}
    for instance in scan.compared:
        by_instance.setdefault(instance, Host(instance)).checks.setdefault(STRAGGLER_CHECK, Verdict.OK)
    for s in scan.found:
        host = by_instance.setdefault(s.instance, Host(s.instance))
        host.checks[STRAGGLER_CHECK] = Verdict.WARN
        host.gpus[STRAGGLER_CHECK].append(s.gpu)
    return sorted(by_instance.values(), key=lambda h: (-h.worst, h.instance))


def exit_status(hosts: list[Host], unavailable: dict[str, str] | None = None) -> int:
    """0, 1 or 2 as the worst host's verdict; 3 when nothing was checked: the server scrapes no gpumon,
    or the only checks asked for could not be run (`unavailable`: check -> why)."""
    if not hosts or (unavailable and not any(h.checks for h in hosts)):
        return 3
    return max(h.worst for h in hosts).exit_status


def as_text(url: str, hosts: list[Host], found: list[Straggler], unavailable: dict[str, str] | None = None) -> str:
    checks = sorted({c for h in hosts for c in h.checks})
    lines = [f"gpumon doctor --fleet {redacted(url.rstrip('/'))}: {len(hosts)} hosts, "
             f"{sum(1 for h in hosts if h.worst is Verdict.FAIL)} failing, "
             f"{sum(1 for h in hosts if h.worst is Verdict.WARN)} warning"]
    rows = [["host", "worst", *checks]]
    for h in hosts:
        rows.append([h.instance, h.worst_word, *(_cell(h, c) for c in checks)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    for s in found:
        lines.append(f"job {s.job_id} on {s.hosts} hosts: {s.instance} GPU {s.gpu} at {s.sm_active:.0%} SM activity "
                     f"(5 min), the job's busiest GPU {s.fastest:.0%}: look at that rank's data loader, host and "
                     "links; the others wait for it at every collective.")
    for check, why in sorted((unavailable or {}).items()):
        lines.append(f"{check}: not checked: {why}")
    lines.append("Evidence and next steps: `gpumon doctor --only CHECK` on the host.")
    return "\n".join(lines)


def _cell(host: Host, check: str) -> str:
    verdict = host.checks.get(check)
    if verdict is None:
        return "-"
    gpus = host.gpus.get(check)
    return verdict.word + (f" (GPU {','.join(sorted(gpus, key=int))})" if gpus else "")


def as_json(url: str, hosts: list[Host], found: list[Straggler], unavailable: dict[str, str] | None = None) -> str:
    doc: dict[str, Any] = {
        "schema_version": 1, "generated_at": round(time.time(), 3), "prometheus": redacted(url.rstrip("/")),
        "exit_status": exit_status(hosts, unavailable),
        "hosts": [{"instance": h.instance, "worst": h.worst.json_word if h.checks or h.exported else None,
                   "checks": {c: {"verdict": v.json_word, "gpus": sorted(h.gpus.get(c, []), key=int)}
                              for c, v in sorted(h.checks.items())}} for h in hosts],
        "stragglers": [{"job_id": s.job_id, "instance": s.instance, "gpu": s.gpu, "sm_active": round(s.sm_active, 3),
                        "job_busiest_sm_active": round(s.fastest, 3), "hosts": s.hosts} for s in found],
        "unavailable": dict(sorted((unavailable or {}).items())),
    }
    return json.dumps(doc, indent=2)
