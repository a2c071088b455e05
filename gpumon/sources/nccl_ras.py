"""The NCCL RAS source: job-level health from the RAS service a running NCCL (>= 2.24) job serves.

NCCL's RAS threads listen on `localhost:28028` (`NCCL_RAS_ADDR`) for a line-based text protocol; the
exchange implemented here is the one NCCL's own `ncclras` client makes (docs/interconnect.md has the
protocol and the NCCL sources it was checked against):

    -> CLIENT PROTOCOL 2          <- SERVER PROTOCOL <n>
    -> TIMEOUT <seconds>          <- OK
    -> SET FORMAT json            <- OK            (NCCL 2.28.7+; older versions answer "ERROR: ...")
    -> STATUS                     <- the report, then NCCL closes the connection

Everything is asyncio with one deadline over the whole exchange, so a job that accepts and never
answers costs one budget (`query_budget`) and never blocks the event loop. The parsers are plain
functions that either return a `RasStatus` or raise `RasError`; nothing else escapes them.

Every process of every NCCL job on a node binds the client port with SO_REUSEPORT, so with two jobs on
one node the kernel hands each query to either job. The source therefore tells jobs apart (by their
ranks and communicators), counts and logs a change of job, and keeps the collective counters and the
stall clock per job, so it never computes a stall or an increase across two jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import structlog

from gpumon.model import Sample, Tier
from gpumon.sources.base import Schedule, Unit

log = structlog.get_logger("gpumon.nccl_ras")

DEFAULT_HOST = "localhost"
DEFAULT_PORT = 28028
PROTOCOL_VERSION = 2  # NCCL_RAS_CLIENT_PROTOCOL in src/ras/ras_internal.h
# src/ras/ras_internal.h: a collective waits RAS_COLLECTIVE_LEG_TIMEOUT (5 s x NCCL_RAS_TIMEOUT_FACTOR, or
# what TIMEOUT set, unscaled) for its peers, then up to RAS_COLLECTIVE_EXTRA_TIMEOUT (5 s x the factor,
# whatever TIMEOUT said) for answers still travelling through other peers, before it reports.
LEG_TIMEOUT_SEC = 5
EXTRA_TIMEOUT_SEC = 5
DEFAULT_TIMEOUT_FACTOR = 1  # NCCL_PARAM(RasTimeoutFactor, "RAS_TIMEOUT_FACTOR", 1) in src/ras/ras.cc
# ncclras's TIMEOUT_INCREMENT (src/ras/client.cc): on top of NCCL's wait, for the connection, the handshake
# and NCCL writing the report.
CLIENT_SLACK_SEC = 1.0
MAX_STATUS_BYTES = 16 << 20  # a 4096-rank job's JSON is a few MB
MAX_LINE_BYTES = 64 << 10
NCCL_IN_PROGRESS = 7  # ncclInProgress: not an error in init_state / async_error
NCCL_SUCCESS = 0
MAX_JOBS = 8  # jobs whose counters and stall clock are remembered at one endpoint
MAX_COMMS_PER_JOB = 4096  # communicators remembered per job beyond those in the latest report

T = TypeVar("T")
CommKey = tuple[str, str]  # (hash, secondary_hash) of a communicator
RankId = tuple[str, int, int]  # (host, pid, nvml_dev): a GPU of a job process


class RasError(Exception):
    """A RAS query failed; `reason` is `connect`, `timeout` or `protocol`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class RasStatus:
    """Job-level health parsed from one STATUS report. None means "this format does not say"."""

    format: str
    nccl_version: str = ""
    communicators: int = 0
    ranks: int = 0  # ranks of the largest communicator
    running_ranks: int = 0  # ranks initialised and not finalising/aborting (JSON); -1 if unknown (text)
    missing_ranks: int | None = None
    unresponsive_processes: int = 0
    dead_processes: int = 0
    async_error_ranks: int = 0
    init_error_ranks: int = 0
    timeouts: int = 0
    collectives: dict[str, int] | None = None  # operation -> sum over communicators of max over ranks
    # Per communicator, operation -> the most any rank launched (JSON only): what the counters follow.
    comm_collectives: dict[CommKey, dict[str, int]] | None = None
    # Who the job is (JSON only): the GPUs of its processes, answering or missing. Two jobs sharing a
    # node use different GPUs, so their sets are disjoint even where container PID namespaces repeat pids.
    rank_ids: frozenset[RankId] = frozenset()


# --- parsing -------------------------------------------------------------------------------------


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RasError("protocol", f"RAS JSON: {what} is not an object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise RasError("protocol", f"RAS JSON: {what} is not a list")
    return value


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RasError("protocol", f"RAS JSON: {what} is not an integer")
    return value


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise RasError("protocol", f"RAS JSON: {what} is not a boolean")
    return value


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


# NCCL 2.28.7 and 2.28.9 write a missing rank as `"nvml_dev": 3` + newline + `"status": {` with no comma
# between them (jsonWriteMissingRank; fixed in 2.29.2), so on those versions the report is not JSON exactly
# when a rank is missing, the case this source is for.
_MISSING_COMMA = re.compile(r'("nvml_dev":\s*-?\d+)(\s*"status"\s*:)')


def _load_json(text: str) -> Any:
    try:
        return json.loads(text, strict=False)  # NCCL writes host names unescaped
    except (ValueError, RecursionError) as exc:
        repaired = _MISSING_COMMA.sub(r"\1,\2", text)
        if repaired != text:
            with contextlib.suppress(ValueError, RecursionError):
                return json.loads(repaired, strict=False)
        raise RasError("protocol", f"RAS status is not JSON: {exc}") from None


def parse_json_status(text: str) -> RasStatus:
    """Parse the `SET FORMAT json` STATUS report (client_support.cc, rasDumpCommsToJSON)."""
    top = _obj(_load_json(text), "document")
    version = top.get("nccl_version", "")
    if not isinstance(version, str):
        raise RasError("protocol", "RAS JSON: nccl_version is not a string")
    comms = _list(top.get("communicators"), "communicators")
    status = RasStatus("json", nccl_version=version, communicators=len(comms), missing_ranks=0,
                       collectives={}, comm_collectives={})
    assert status.comm_collectives is not None
    missing: set[tuple[str, int, int]] = set()
    dead: set[tuple[str, int]] = set()
    unresponsive: set[tuple[str, int]] = set()
    rank_ids: set[RankId] = set()
    collectives: Counter[str] = Counter()
    for i, raw_comm in enumerate(comms):
        comm = _obj(raw_comm, f"communicators[{i}]")
        status.ranks = max(status.ranks, _int(comm.get("size"), "communicator size"))
        most: dict[str, int] = {}
        for j, raw_rank in enumerate(_list(comm.get("ranks"), "ranks")):
            rank = _obj(raw_rank, f"ranks[{j}]")
            st = _obj(rank.get("status"), "rank status")
            init_state = _int(st.get("init_state"), "init_state")
            async_error = _int(st.get("async_error"), "async_error")
            stopping = any(_flag(st.get(k, False), k) for k in ("finalize_called", "destroy_flag", "abort_flag"))
            if init_state not in (NCCL_SUCCESS, NCCL_IN_PROGRESS):
                status.init_error_ranks += 1
            if async_error not in (NCCL_SUCCESS, NCCL_IN_PROGRESS):
                status.async_error_ranks += 1
            if init_state == NCCL_SUCCESS and not stopping:
                status.running_ranks += 1
            if (pid := _int(rank.get("pid", -1), "pid")) >= 0:
                rank_ids.add((_str(rank.get("host")), pid, _int(rank.get("nvml_dev", -1), "nvml_dev")))
            counts = _obj(rank.get("collective_counts", {}), "collective_counts")
            for op, n in counts.items():
                n = _int(n, f"collective count {op}")
                if n < 0:
                    raise RasError("protocol", f"RAS JSON: negative collective count {op}")
                most[op] = max(most.get(op, 0), n)
        collectives.update(most)
        key = (_str(comm.get("hash")), _str(comm.get("secondary_hash")))
        seen = status.comm_collectives.setdefault(key, {})
        for op, n in most.items():
            seen[op] = max(seen.get(op, 0), n)
        for j, raw_missing in enumerate(_list(comm.get("missing_ranks", []), "missing_ranks")):
            m = _obj(raw_missing, f"missing_ranks[{j}]")
            host = _str(m.get("host", ""))
            pid = _int(m.get("pid", -1), "pid")
            st = _obj(m.get("status", {}), "missing rank status")
            is_dead = _flag(st.get("considered_dead", False), "considered_dead")
            is_unresponsive = _flag(st.get("unresponsive", False), "unresponsive")
            if pid >= 0:
                rank_ids.add((host, pid, _int(m.get("nvml_dev", -1), "nvml_dev")))
            # NCCL also lists ranks whose process answered but no longer has this communicator (it
            # called ncclCommDestroy, or a split left it out): neither unresponsive nor dead, and not lost.
            if not (is_dead or is_unresponsive):
                continue
            missing.add((host, pid, _int(m.get("cuda_dev", -1), "cuda_dev")))
            if is_dead:
                dead.add((host, pid))
            else:
                unresponsive.add((host, pid))
    status.missing_ranks = len(missing)
    status.dead_processes = len(dead)
    status.unresponsive_processes = len(unresponsive)
    status.collectives = dict(collectives)
    status.rank_ids = frozenset(rank_ids)
    ras = top.get("ras", {})
    if isinstance(ras, dict):
        status.timeouts = _int(ras.get("timeouts_count", 0), "timeouts_count")
    return status


_VERSION = re.compile(r"^NCCL version (\S+)", re.M)
_COMM_ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\S+)\s+(\d+)\s+(\d+)\s+([A-Z]+)\s+([A-Z,]+)\s*$", re.M)
_MISSING = re.compile(r"^INCOMPLETE\n\s+Missing communicator data from (\d+) job process", re.M)
_DEAD = re.compile(r"^DEAD\n\s+(\d+) job process(?:es are| is) considered dead", re.M)
_ASYNC = re.compile(r"^\s+Asynchronous errors? on (\d+) ranks?", re.M)
_INIT = re.compile(r"^\s+Initialization errors? on (\d+) ranks?", re.M)
_TIMEOUTS = re.compile(r"Encountered (\d+) communication timeouts? while gathering communicator data")
_MAX_INT = 1 << 62


def _num(text: str) -> int:
    n = int(text)
    if n > _MAX_INT:
        raise RasError("protocol", "RAS status: implausible number")
    return n


def parse_text_status(text: str) -> RasStatus:
    """Parse the default text STATUS report (client_support.cc, rasClientRunInit/rasClientRunComms).

    The text report has no absolute collective counts (only per-communicator mismatches) and no
    per-rank list, so `collectives`, `missing_ranks`, `running_ranks` and `rank_ids` stay unknown.
    """
    if "Communicators..." not in text and not _VERSION.search(text):
        raise RasError("protocol", "not a RAS status report")
    m = _VERSION.search(text)
    status = RasStatus("text", nccl_version=m.group(1) if m else "", running_ranks=-1)
    for row in _COMM_ROW.finditer(text):
        status.communicators += _num(row.group(2))
        status.ranks = max(status.ranks, _num(row.group(5)))
    if (m := _MISSING.search(text)) is not None:
        status.unresponsive_processes = _num(m.group(1))
    if (m := _DEAD.search(text)) is not None:
        status.dead_processes = _num(m.group(1))
    status.async_error_ranks = sum(_num(x) for x in _ASYNC.findall(text))
    status.init_error_ranks = sum(_num(x) for x in _INIT.findall(text))
    if (m := _TIMEOUTS.search(text)) is not None:
        status.timeouts = _num(m.group(1))
    return status


def parse_status(payload: bytes, fmt: str) -> RasStatus:
    """Decode and parse a STATUS payload in the format negotiated; raises only `RasError`."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = payload.decode("latin-1")  # host names are the only free text; never fail on them
    if fmt == "json":
        return parse_json_status(text)
    return parse_text_status(text)


# --- the client ----------------------------------------------------------------------------------


def leg_timeout(timeout: float | None, factor: int = DEFAULT_TIMEOUT_FACTOR) -> int:
    """The seconds to send with TIMEOUT: NCCL's default (5 s x factor) for None, else `timeout` rounded up.

    NCCL reads an integer, and 0 would switch its timeout off, so the least is 1.
    """
    if timeout is None:
        return LEG_TIMEOUT_SEC * factor
    return max(1, math.ceil(timeout))


def query_budget(leg: int, factor: int = DEFAULT_TIMEOUT_FACTOR) -> float:
    """How long a STATUS exchange may take when NCCL was sent TIMEOUT `leg`, as ncclras waits for it.

    A job with an unresponsive peer answers only after the leg timeout plus the extra wait, so a shorter
    budget records exactly the degraded jobs as timeouts. ncclras adds the unscaled 5 s; NCCL scales it by
    the job's NCCL_RAS_TIMEOUT_FACTOR, which is why the factor is asked for here.
    """
    return CLIENT_SLACK_SEC + leg + EXTRA_TIMEOUT_SEC * factor


async def query_status(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, leg: int = LEG_TIMEOUT_SEC,
                       budget: float | None = None, prefer_json: bool = True) -> tuple[str, bytes]:
    """One RAS exchange sending TIMEOUT `leg`: returns (format, raw STATUS payload). Raises `RasError`.

    Never outlasts `budget` seconds (default `query_budget(leg)`, NCCL's default timeout factor).
    """
    if leg < 1:
        raise ValueError("leg must be at least 1 s: TIMEOUT 0 switches NCCL's timeout off")
    budget = query_budget(leg) if budget is None else budget
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget

    async def step(aw: Awaitable[T]) -> T:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError
        return await asyncio.wait_for(aw, remaining)

    try:
        reader, writer = await step(asyncio.open_connection(host, port, limit=MAX_LINE_BYTES))
    except TimeoutError:
        raise RasError("timeout", f"connecting to NCCL RAS at {host}:{port} timed out") from None
    except OSError as exc:
        raise RasError("connect", f"cannot connect to NCCL RAS at {host}:{port}: {exc.strerror or exc}") from None

    async def command(line: str) -> bytes:
        writer.write(line.encode() + b"\n")
        await step(writer.drain())
        reply = await step(reader.readline())
        if not reply.endswith(b"\n"):
            raise RasError("protocol", f"NCCL RAS closed the connection after {line.split()[0]}")
        return reply.strip()

    try:
        reply = await command(f"CLIENT PROTOCOL {PROTOCOL_VERSION}")
        if not reply.upper().startswith(b"SERVER PROTOCOL "):
            raise RasError("protocol", f"unexpected RAS handshake reply {reply[:80]!r}")
        reply = await command(f"TIMEOUT {leg}")
        if reply.upper() != b"OK":
            raise RasError("protocol", f"unexpected RAS reply to TIMEOUT: {reply[:80]!r}")
        fmt = "text"
        if prefer_json:
            reply = await command("SET FORMAT json")
            if reply.upper() == b"OK":
                fmt = "json"
            elif not reply.upper().startswith(b"ERROR"):
                raise RasError("protocol", f"unexpected RAS reply to SET FORMAT: {reply[:80]!r}")
        writer.write(b"STATUS\n")
        await step(writer.drain())
        payload = await step(_read_to_eof(reader))
        if not payload:
            raise RasError("protocol", "NCCL RAS sent an empty status")
        return fmt, payload
    except TimeoutError:
        raise RasError("timeout", f"NCCL RAS at {host}:{port} did not answer within {budget:g} s") from None
    except (ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError) as exc:
        raise RasError("protocol", f"bad RAS reply: {exc}") from None
    except OSError as exc:
        raise RasError("connect", f"NCCL RAS connection failed: {exc}") from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 0.2)


async def _read_to_eof(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await reader.read(65536):
        size += len(chunk)
        if size > MAX_STATUS_BYTES:
            raise RasError("protocol", f"RAS status larger than {MAX_STATUS_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# --- the source ----------------------------------------------------------------------------------


@dataclass(eq=False)
class _Job:
    """What the source remembers of one job answering at its endpoint."""

    nccl_version: str
    rank_ids: frozenset[RankId] = frozenset()
    comm_keys: frozenset[CommKey] = frozenset()
    # Per communicator the highest count seen, kept when the communicator drops out of a report (its
    # ranks may only have missed one query) so that it is never counted twice.
    counts: dict[CommKey, dict[str, int]] = field(default_factory=dict)
    progress_at: float | None = None  # clock reading when its count last advanced while ranks ran

    @property
    def known(self) -> bool:
        return bool(self.rank_ids or self.comm_keys)

    def matches(self, status: RasStatus, current: bool) -> bool:
        """Is `status` from this job? A shared GPU or communicator says yes; a report that names none
        (text, or no communicators) is taken for the current job unless the NCCL version differs."""
        if self.nccl_version and status.nccl_version and self.nccl_version != status.nccl_version:
            return False
        comm_keys = status.comm_collectives.keys() if status.comm_collectives else ()
        if not (status.rank_ids or comm_keys) or not self.known:
            return current
        return bool(self.rank_ids & status.rank_ids) or not self.comm_keys.isdisjoint(comm_keys)

    def describe(self) -> str:
        if not self.rank_ids:
            return f"NCCL {self.nccl_version or '?'}, {len(self.comm_keys)} communicators"
        host, pid, gpu = min(self.rank_ids)
        hosts = {h for h, _, _ in self.rank_ids}
        return (f"NCCL {self.nccl_version or '?'}, {len(self.rank_ids)} GPUs on {len(hosts)} hosts "
                f"(first: {host} pid {pid} GPU {gpu}), {len(self.comm_keys)} communicators")


@dataclass
class NcclRasSource:
    """Polls one RAS endpoint; `await poll()` on the event loop gives one Sample (unit `nccl_ras:HOST:PORT`).

    `timeout` is NCCL's own wait for the job's peers (the TIMEOUT command; None is NCCL's default,
    5 s x `timeout_factor`) and `timeout_factor` the job's NCCL_RAS_TIMEOUT_FACTOR; a query may take
    `query_budget` of the two (11 s by default). State (failure counts, jobs, counters, stall clocks) is
    only touched from the event loop, and an asyncio lock keeps two polls from overlapping, so no thread
    ever sees it half-updated.
    """

    name: ClassVar[str] = "nccl_ras"
    schedule: ClassVar[Schedule] = Schedule.ASYNC  # network I/O with its own timeout: never in a round

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    interval: float = 30.0  # seconds between queries (the daemon sets nccl_ras.interval or the slow tier's)
    timeout: float | None = None
    timeout_factor: int = DEFAULT_TIMEOUT_FACTOR
    prefer_json: bool = True
    tier: Tier = Tier.SLOW
    clock: Callable[[], float] = time.monotonic  # for the stall gauge
    wall: Callable[[], float] = time.time  # sample timestamps
    failures: Counter[str] = field(default_factory=Counter)
    job_changes: int = 0
    last_status: RasStatus | None = None
    _collectives: dict[str, int] = field(default_factory=dict)  # operation -> running total kept here
    _jobs: list[_Job] = field(default_factory=list)  # most recently answering first
    _lock: asyncio.Lock | None = None

    def __post_init__(self) -> None:
        factor = self.timeout_factor
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:  # NCCL reads an integer
            raise ValueError(f"timeout_factor must be a whole number >= 1 (NCCL_RAS_TIMEOUT_FACTOR), "
                             f"not {self.timeout_factor!r}")

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def unit(self) -> str:
        return f"nccl_ras:{self.endpoint}"

    @property
    def leg(self) -> int:
        return leg_timeout(self.timeout, self.timeout_factor)

    @property
    def budget(self) -> float:
        return query_budget(self.leg, self.timeout_factor)

    async def open(self) -> list[Unit]:
        """One unit, the endpoint: whether a job answers there is a state, found out by polling."""
        return [Unit(self.unit)]

    async def poll(self, unit: Unit, tier: Tier) -> list[Sample]:
        return [await self.query()]

    async def close(self) -> None:
        """No connection outlives a query."""

    async def query(self) -> Sample:
        """One status query, as one Sample; overlapping calls wait their turn."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            return await self._poll()

    async def _poll(self) -> Sample:
        ep = (("endpoint", self.endpoint),)
        started = time.perf_counter()
        status: RasStatus | None = None
        try:
            fmt, payload = await query_status(self.host, self.port, leg=self.leg, budget=self.budget,
                                              prefer_json=self.prefer_json)
            status = parse_status(payload, fmt)
        except RasError as exc:
            self.failures[exc.reason] += 1
            if exc.reason == "connect":  # nothing listens: every job that answered here has ended
                self._jobs.clear()
            log.debug("NCCL RAS query failed", endpoint=self.endpoint, reason=exc.reason, error=str(exc))
        duration = time.perf_counter() - started
        job, fresh = (None, False) if status is None else self._job_of(status)
        sample = Sample(self.unit, self.tier.value, self.wall())
        sample.add("gpumon_nccl_ras_up", ep, 0.0 if status is None else 1.0)
        sample.add("gpumon_nccl_ras_query_duration_seconds", ep, duration)
        for reason in ("connect", "timeout", "protocol"):
            sample.add("gpumon_nccl_ras_query_failures_total", (*ep, ("reason", reason)), self.failures[reason])
        sample.add("gpumon_nccl_ras_job_changes_total", ep, self.job_changes)
        self.last_status = status
        if status is None or job is None:
            return sample
        sample.add("gpumon_nccl_info", (*ep, ("nccl_version", status.nccl_version), ("format", status.format)), 1.0)
        sample.add("gpumon_nccl_communicators", ep, status.communicators)
        sample.add("gpumon_nccl_ranks", ep, status.ranks)
        if status.missing_ranks is not None:
            sample.add("gpumon_nccl_missing_ranks", ep, status.missing_ranks)
        sample.add("gpumon_nccl_unresponsive_processes", ep, status.unresponsive_processes)
        sample.add("gpumon_nccl_dead_processes", ep, status.dead_processes)
        sample.add("gpumon_nccl_async_error_ranks", ep, status.async_error_ranks)
        sample.add("gpumon_nccl_init_error_ranks", ep, status.init_error_ranks)
        sample.add("gpumon_nccl_ras_timeouts", ep, status.timeouts)
        if status.comm_collectives is not None:
            advanced = self._count(job, status.comm_collectives, fresh)
            for op, n in sorted(self._collectives.items()):
                sample.add("gpumon_nccl_collective_operations_total", (*ep, ("operation", op)), n)
            stall = self._stalled_for(job, advanced or fresh, status.running_ranks > 0)
            if stall is not None:
                sample.add("gpumon_nccl_collective_stall_seconds", ep, stall)
        return sample

    def _job_of(self, status: RasStatus) -> tuple[_Job, bool]:
        """The remembered job `status` comes from (a new one if none), and whether it is new.

        A job other than the one that answered last is counted and logged: either the job ended and
        another started, or two jobs on this node share the port (SO_REUSEPORT) and answer in turn.
        """
        current = self._jobs[0] if self._jobs else None
        job = next((j for j in self._jobs if j.matches(status, current=j is current)), None)
        fresh = job is None
        if job is None:
            job = _Job(status.nccl_version)
        else:
            self._jobs.remove(job)
        # Follow the job as it changes: communicators come and go, processes die.
        if status.rank_ids or status.comm_collectives:
            job.rank_ids, job.comm_keys = status.rank_ids, frozenset(status.comm_collectives or ())
        job.nccl_version = status.nccl_version or job.nccl_version
        self._jobs.insert(0, job)
        del self._jobs[MAX_JOBS:]
        if current is not None and job is not current:
            self.job_changes += 1
            log.warning("NCCL RAS answered for another job than the last query", endpoint=self.endpoint,
                        job=job.describe(), previous_job=current.describe(), seen_before=not fresh,
                        hint="unless the previous job ended, two jobs on this node share the RAS port "
                             "(SO_REUSEPORT); give each job its own port with NCCL_RAS_ADDR")
        return job, fresh

    def _count(self, job: _Job, comms: dict[CommKey, dict[str, int]], fresh: bool) -> bool:
        """Add what each communicator launched since this job's last report to the running totals.

        Increases are taken per job and per communicator, so another job's answer in between, or a
        destroyed communicator, never shows as a drop or a jump. A job seen for the first time adds
        nothing (what it launched before gpumon watched is not a rate); a new communicator of a known
        job adds all it launched, since it was created after that job's last report. Returns whether
        anything advanced.
        """
        advanced = False
        for key, ops in comms.items():
            before = job.counts.get(key)
            if before is None and not fresh:
                advanced = True  # a job creating a communicator is not hung
            for op, n in ops.items():
                self._collectives.setdefault(op, 0)
                was = 0 if before is None else before.get(op, 0)
                if n > was and not (before is None and fresh):
                    self._collectives[op] += n - was
                    advanced = True
            # Never lower the mark: the rank with the highest count may only have missed this query.
            job.counts[key] = {op: max(n, (before or {}).get(op, 0)) for op, n in ops.items()}
        if len(job.counts) > MAX_COMMS_PER_JOB:
            job.counts = {k: v for k, v in job.counts.items() if k in comms}
        return advanced

    def _stalled_for(self, job: _Job, advanced: bool, running: bool) -> float | None:
        """Seconds the job's collective count has not moved while its ranks run; None when none run."""
        now = self.clock()
        if not running:
            job.progress_at = None
            return None
        if advanced or job.progress_at is None:
            job.progress_at = now
        return now - job.progress_at
