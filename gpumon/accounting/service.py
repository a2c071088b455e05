"""Accounting in the daemon: after each fast round, what every GPU did since the previous one goes to
the ledger (gpumon/accounting/ledger.py), its counters into the store (so they are in that round's
exposition, and the rules see them), and the increments to the state file on a thread of their own."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from gpumon.accounting.db import FILE, AccountingDB
from gpumon.accounting.ledger import GPU_UTILIZATION, SM_ACTIVE, Amounts, Key, Ledger, Owner, Reading
from gpumon.config import AccountingConfig
from gpumon.health import Health
from gpumon.lifecycle import Service
from gpumon.model import Labels, Sample
from gpumon.rounds import Round
from gpumon.store import Store

log = structlog.get_logger("gpumon.accounting")

PRUNE_EVERY_S = 3600.0
# Metrics a GPU's accounting reads from the latest samples, whichever source made them.
_READ = frozenset({"gpumon_sm_active_ratio", "gpumon_gpu_utilization_ratio", "gpumon_power_draw_watts",
                   "gpumon_energy_joules_total", "gpumon_compute_processes", "gpumon_process_info",
                   "gpumon_gpu_owner_info", "gpumon_gpu_job_info"})


@dataclass
class _Said:
    """What one sample says for accounting (kept while the same sample is the latest of its unit)."""

    sample: Sample
    at: float | None = None  # the fast sample's timestamp, where util.gpu was read
    uuid: str = ""
    util: float | None = None
    sm: float | None = None
    power: float | None = None
    energy: float | None = None
    held: bool = False
    pods: tuple[Owner, ...] = ()
    jobs: tuple[Owner, ...] = ()
    processes: tuple[Owner, ...] = ()


def _said(sample: Sample) -> _Said:
    out = _Said(sample)
    pods, jobs, processes = [], [], []
    for name, labels, value in sample.values:
        if name not in _READ:
            continue
        if name == "gpumon_gpu_utilization_ratio":
            out.util, out.at = value, sample.timestamp
            out.uuid = dict(labels).get("uuid", "")
        elif name == "gpumon_sm_active_ratio":
            out.sm = value
        elif name == "gpumon_power_draw_watts":
            out.power = value
            if out.util is not None and out.sm is not None:
                break  # the GPU's fast sample: nothing else in it is read
        elif name == "gpumon_energy_joules_total":
            out.energy = value
        elif name == "gpumon_compute_processes":
            out.held = out.held or value > 0
        elif name == "gpumon_process_info":
            out.held = True
            processes.append(_process_owner(labels))
        else:
            d = dict(labels)
            out.held = True
            if name == "gpumon_gpu_owner_info":
                pods.append(Owner(d["owner_namespace"], d["owner_pod"], d["owner_container"]))
            else:
                jobs.append(Owner(job=d["job_id"], user=d["user"]))
    out.pods, out.jobs, out.processes = tuple(pods), tuple(jobs), tuple(processes)
    return out


def reading(gpu: int, samples: Iterable[Sample], cache: dict[int, _Said] | None = None) -> Reading | None:
    """What the latest samples of one GPU say, or None before its first fast poll. `cache` keeps what
    each sample said while it stays the latest of its unit: the slow tier's, the static tier's and the
    kubelet's are read once, not every second."""
    at = None
    uuid = ""
    sm = util = power = energy = None
    held = False
    pods: list[Owner] = []
    jobs: list[Owner] = []
    processes: list[Owner] = []
    for sample in samples:
        if sample.unit.startswith("accounting:"):
            continue
        said = cache.get(id(sample)) if cache is not None else None
        if said is None or said.sample is not sample:
            said = _said(sample)
            if cache is not None and sample.tier != "fast":
                cache[id(sample)] = said
        if said.at is not None:
            at, uuid, util = said.at, said.uuid, said.util
        sm = said.sm if said.sm is not None else sm
        power = said.power if said.power is not None else power
        energy = said.energy if said.energy is not None else energy
        held = held or said.held
        pods.extend(said.pods)
        jobs.extend(said.jobs)
        processes.extend(said.processes)
    if at is None:
        return None
    activity, signal = (sm, SM_ACTIVE) if sm is not None else (util, GPU_UTILIZATION)
    owners = tuple(sorted(set(pods or jobs or processes)))
    return Reading(gpu, uuid, at, activity, signal, held, owners, power, energy)


_OWNERS: dict[int, tuple[Labels, Owner]] = {}  # id of a process's labels -> (labels, its owner)


def _process_owner(labels: Labels) -> Owner:
    """A process's owner: its pod, else its job, else its user, else its name. The process source
    sends the same label tuple for a process every round: its owner is worked out once."""
    cached = _OWNERS.get(id(labels))
    if cached is not None and cached[0] is labels:
        return cached[1]
    if len(_OWNERS) > 65536:
        _OWNERS.clear()
    owner = _owner_of(dict(labels))
    _OWNERS[id(labels)] = (labels, owner)
    return owner


def _owner_of(d: dict[str, str]) -> Owner:
    if d.get("owner_pod"):
        return Owner(d["owner_namespace"], d["owner_pod"], d["owner_container"])
    if d.get("job_id"):
        return Owner(job=d["job_id"], user=d.get("user", ""))
    if d.get("user"):
        return Owner(user=d["user"])
    return Owner(process=d.get("name", ""))


class AccountingService(Service):
    def __init__(self, store: Store, settings: AccountingConfig, state_dir: Path | None, *, fast_interval_s: float,
                 slow_interval_s: float, health: Health | None = None) -> None:
        self.store = store
        self.settings = settings
        self.state_dir = state_dir
        self.health = health or Health()
        self.ledger = Ledger(settings.active_threshold, settings.bucket, max_gap_s=3 * fast_interval_s + 1.0,
                             max_pending_s=3 * slow_interval_s)
        self.db: AccountingDB | None = None
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gpumon-accounting")
        self.last_write: concurrent.futures.Future[None] | None = None
        self._pruned = 0.0
        self._labels: dict[Key, Labels] = {}  # each counter's labels, made once
        self._said: dict[int, _Said] = {}  # what each slow, static or kubelet sample said

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        if self.state_dir is not None:
            self.db = AccountingDB(self.state_dir / FILE, self.health)
            self.health.register("accounting")
            restored = 0
            for key, amounts, seen in self.db.totals(time.time() - self.settings.retention):
                self.ledger.restore(key, amounts, seen)
                restored += 1
            if restored:
                log.info("accounting restored", series=restored)

    async def stop(self) -> None:
        self.ledger.book_pending()
        if self.db is not None:
            await asyncio.get_running_loop().run_in_executor(self._writer, self._write, self.ledger.take_unwritten())
            self.db.close()
        self._writer.shutdown(wait=True)

    # --- each round ----------------------------------------------------------------------------

    def on_round(self, round_: Round) -> None:
        if round_.tier != "fast":
            return
        now = time.time()
        if len(self._said) > 64 * max(1, len(self.ledger.keys_by_uuid)):  # samples replaced since
            self._said.clear()
        for gpu, samples in self.store.latest_by_gpu().items():
            r = reading(gpu, samples, self._said)
            if r is None:
                continue
            self.ledger.add(r)
            self.store.put(self._sample(r.gpu, r.uuid, now))
        self.store.put(self._settings_sample(now))
        if self.db is not None:  # one writer thread: writes happen in order, off the event loop
            self.last_write = self._writer.submit(self._write, self.ledger.take_unwritten())
            if now - self._pruned > PRUNE_EVERY_S:
                self._pruned = now
                self._writer.submit(self._prune, now - self.settings.retention)

    def _write(self, buckets: dict[tuple[int, Key], Amounts]) -> None:
        assert self.db is not None
        try:
            self.db.write(buckets, dict(self.ledger.seen))
        except Exception as exc:  # a full disk: keep the increments for the next round's write
            self.health.degraded("accounting", f"state file not written: {exc}")
            for bucket_key, a in buckets.items():
                self._merge(self.ledger.unwritten, bucket_key, a)
        else:
            self.health.recovered("accounting")

    @staticmethod
    def _merge(into: dict[Any, Amounts], key: Any, a: Amounts) -> None:
        # Runs on the writer thread while the loop may add to the same dict: GIL-atomic dict ops only.
        mine = into.setdefault(key, Amounts())
        mine.seconds += a.seconds
        mine.sm_seconds += a.sm_seconds
        mine.joules += a.joules

    def _prune(self, before: float) -> None:
        assert self.db is not None
        try:
            self.db.prune(before)
        except Exception as exc:
            log.warning("accounting state file not pruned", error=str(exc))

    # --- exported series -----------------------------------------------------------------------

    def _sample(self, gpu: int, uuid: str, now: float) -> Sample:
        ids: Labels = (("gpu", str(gpu)), ("uuid", uuid))
        sample = Sample(f"accounting:gpu{gpu}", "fast", now, gpu=gpu)
        oldest = now - self.settings.owner_series_retention
        per_owner: dict[Owner, list[Any]] = {}
        totals, seen, cache = self.ledger.totals, self.ledger.seen, self._labels
        add = sample.values.append
        for key in self.ledger.keys_by_uuid.get(uuid, ()):
            a = totals[key]
            owner = key[2]
            labels = cache.get(key)
            if labels is None:
                state, signal = key[3], key[4]
                labels = cache[key] = ((*ids, ("state", state), ("signal", signal)) if owner is None
                                       else (*ids, *owner.labels(), ("state", state)))
            if owner is None:
                add(("gpumon_gpu_seconds_total", labels, a.seconds))
                add(("gpumon_gpu_sm_active_seconds_total", labels, a.sm_seconds))
            elif seen.get(key, 0.0) >= oldest:
                add(("gpumon_owner_gpu_seconds_total", labels, a.seconds))
                sums = per_owner.get(owner)
                if sums is None:
                    sums = per_owner[owner] = [0.0, 0.0, labels[:-1]]
                sums[0] += a.sm_seconds
                sums[1] += a.joules
        for sm, joules, owner_labels in per_owner.values():
            add(("gpumon_owner_sm_active_seconds_total", owner_labels, sm))
            add(("gpumon_owner_energy_joules_total", owner_labels, joules))
        sample.add("gpumon_gpu_idle_held_streak_seconds", ids, self.ledger.streak(uuid))
        return sample

    def _settings_sample(self, now: float) -> Sample:
        s = Sample("accounting", "self", now)
        s.add("gpumon_accounting_active_threshold_ratio", (), self.settings.active_threshold)
        s.add("gpumon_accounting_idle_alert_after_seconds", (), self.settings.idle_alert_after)
        s.add("gpumon_accounting_waste_target_ratio", (), self.settings.waste_target)
        return s

