"""GPU-seconds by state and by owner, integrated at the poll rate.

Each fast round gives, per GPU, what happened since the previous one: GPM's SM activity is the
average over exactly that interval, so the interval is classified by it (NVML's util.gpu where the GPU
has no GPM, and the `signal` label says so):

- `active`: SM activity at or above the threshold;
- `idle_held`: below it while someone holds the GPU (a process has a context or memory on it, or the
  kubelet or the job mapping gives it to a pod or job);
- `idle_free`: below it and nobody holds it.

The interval's seconds, its SM-activity-weighted seconds and the energy drawn go to the GPU and, split
evenly, to the owners holding it then (a time-sliced GPU's compute cannot be split exactly between
pods; its power is the device's). Energy is the power draw integrated over the interval and, at each
new reading of the GPU's energy counter, scaled so that the owners' shares add up to what the counter
says. Time without a poll (a hung or lost GPU, gpumon not running) is not accounted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

ACTIVE, IDLE_HELD, IDLE_FREE = "active", "idle_held", "idle_free"
STATES = (ACTIVE, IDLE_HELD, IDLE_FREE)
SM_ACTIVE, GPU_UTILIZATION = "sm_active", "gpu_utilization"


class Owner(NamedTuple):
    """Whose a GPU's time is: a pod's container, else a job (and its user), else a user, else a
    process name; all empty when someone holds the GPU and nothing says who. (A tuple: it is a dict
    key in every accounting step, and a tuple hashes in C.)"""

    namespace: str = ""
    pod: str = ""
    container: str = ""
    job: str = ""
    user: str = ""
    process: str = ""

    def labels(self) -> tuple[tuple[str, str], ...]:
        return tuple(zip(OWNER_LABELS, self, strict=True))


OWNER_LABELS = ("owner_namespace", "owner_pod", "owner_container", "job_id", "user", "process")


@dataclass
class Reading:
    """One GPU in one fast round: what the sources said."""

    gpu: int
    uuid: str
    at: float  # the fast sample's timestamp (Unix seconds)
    activity: float | None  # SM activity, or util.gpu where there is no GPM; None: neither was read
    signal: str  # SM_ACTIVE or GPU_UTILIZATION
    held: bool
    owners: tuple[Owner, ...]
    power_w: float | None
    energy_j: float | None  # the energy counter, as last read (slow tier)


@dataclass
class Amounts:
    seconds: float = 0.0
    sm_seconds: float = 0.0
    joules: float = 0.0


# Where an amount is kept: (GPU uuid, gpu index, owner or None for the GPU itself, state, signal).
Key = tuple[str, int, "Owner | None", str, str]


@dataclass
class _Gpu:
    last_at: float | None = None
    streak_idle_held: float = 0.0
    energy_at_last_count: float | None = None
    pending: dict[tuple[int, Key], float] = field(default_factory=dict)  # (bucket, key) -> joules by power
    pending_since: float = 0.0


class Ledger:
    def __init__(self, active_threshold: float, bucket_s: float, max_gap_s: float, max_pending_s: float) -> None:
        self.active_threshold = active_threshold
        self.bucket_s = bucket_s
        self.max_gap_s = max_gap_s  # a longer interval between two polls is not accounted
        # Energy waits for the next counter reading at most this long (a counter that stopped moving
        # is no counter): then the power-integrated joules are booked as they are.
        self.max_pending_s = max_pending_s
        self.totals: dict[Key, Amounts] = {}  # since accounting began (restored from the state file)
        self.keys_by_uuid: dict[str, list[Key]] = {}  # the totals of each GPU, for its exported series
        self.seen: dict[Key, float] = {}  # when each key last grew
        # What grew since the last write, by bucket, to be added to the state file's rows.
        self.unwritten: dict[tuple[int, Key], Amounts] = {}
        self._gpus: dict[str, _Gpu] = {}

    def streak(self, uuid: str) -> float:
        """How long the GPU has been idle and held without a break, in seconds."""
        gpu = self._gpus.get(uuid)
        return gpu.streak_idle_held if gpu is not None else 0.0

    def add(self, r: Reading) -> None:
        gpu = self._gpus.setdefault(r.uuid, _Gpu())
        last, gpu.last_at = gpu.last_at, r.at
        self._reconcile(r, gpu)
        if last is None or r.activity is None or not 0 < r.at - last <= self.max_gap_s:
            return
        dt = r.at - last
        if not gpu.pending:
            gpu.pending_since = r.at
        state = ACTIVE if r.activity >= self.active_threshold else IDLE_HELD if r.held else IDLE_FREE
        gpu.streak_idle_held = gpu.streak_idle_held + dt if state == IDLE_HELD else 0.0
        bucket = int(r.at // self.bucket_s * self.bucket_s)
        sm = r.activity * dt
        joules = (r.power_w or 0.0) * dt
        self._grow((r.uuid, r.gpu, None, state, r.signal), bucket, r.at, dt, sm)
        gpu.pending[(bucket, (r.uuid, r.gpu, None, state, r.signal))] = (
            gpu.pending.get((bucket, (r.uuid, r.gpu, None, state, r.signal)), 0.0) + joules)
        if state != IDLE_FREE:
            owners = r.owners or (Owner(),)
            share = 1.0 / len(owners)
            for owner in owners:
                key = (r.uuid, r.gpu, owner, state, "")
                self._grow(key, bucket, r.at, dt * share, sm * share)
                gpu.pending[(bucket, key)] = gpu.pending.get((bucket, key), 0.0) + joules * share
        if r.energy_j is None or r.at - gpu.pending_since > self.max_pending_s:
            self._book(gpu, 1.0)  # no counter to scale by: the power draw is all there is

    def _grow(self, key: Key, bucket: int, at: float, seconds: float, sm_seconds: float,
              joules: float = 0.0) -> None:
        total = self.totals.get(key)
        if total is None:
            total = self.totals[key] = Amounts()
            self.keys_by_uuid.setdefault(key[0], []).append(key)
        part = self.unwritten.get((bucket, key))
        if part is None:
            part = self.unwritten[(bucket, key)] = Amounts()
        total.seconds += seconds
        total.sm_seconds += sm_seconds
        total.joules += joules
        part.seconds += seconds
        part.sm_seconds += sm_seconds
        part.joules += joules
        if seconds:
            self.seen[key] = at

    def _reconcile(self, r: Reading, gpu: _Gpu) -> None:
        """A new energy counter reading: book the power-integrated energy since the previous one,
        scaled to the counter's increase (the counter is what the GPU really drew)."""
        if r.energy_j is None or r.energy_j == gpu.energy_at_last_count:
            return
        previous, gpu.energy_at_last_count = gpu.energy_at_last_count, r.energy_j
        if previous is None or r.energy_j < previous:  # the first reading, or the driver was reloaded
            self._book(gpu, 1.0)
            return
        drawn = sum(j for (_, key), j in gpu.pending.items() if key[2] is None)
        self._book(gpu, (r.energy_j - previous) / drawn if drawn > 0 else 1.0)

    def _book(self, gpu: _Gpu, scale: float) -> None:
        for (bucket, key), joules in gpu.pending.items():
            self._grow(key, bucket, 0.0, 0.0, 0.0, joules * scale)
        gpu.pending.clear()

    def book_pending(self) -> None:
        """Book the energy still waiting for a counter reading, as the power says (at shutdown)."""
        for gpu in self._gpus.values():
            self._book(gpu, 1.0)

    def take_unwritten(self) -> dict[tuple[int, Key], Amounts]:
        """What grew since the last call, by bucket (increments, to add to the state file's rows)."""
        out, self.unwritten = self.unwritten, {}
        return out

    def restore(self, key: Key, amounts: Amounts, seen: float) -> None:
        """A total from the state file, at start."""
        if key not in self.totals:
            self.keys_by_uuid.setdefault(key[0], []).append(key)
        self.totals[key] = amounts
        self.seen[key] = seen
