"""The NCCL RAS source: job-level health from the RAS service a running NCCL (>= 2.24) job serves.

NCCL's RAS threads listen on `localhost:28028` (`NCCL_RAS_ADDR`) for a line-based text protocol; the
exchange implemented here is the one NCCL's own `ncclras` client makes (docs/interconnect.md has the
protocol and the NCCL sources it was checked against):

    -> CLIENT PROTOCOL 2          <- SERVER PROTOCOL <n>
    -> TIMEOUT <seconds>          <- OK
    -> SET FORMAT json            <- OK            (NCCL 2.28+; older versions answer "ERROR: ...")
    -> STATUS                     <- the report, then NCCL closes the connection

Everything is asyncio with one deadline over the whole exchange, so a job that accepts and never
answers costs one timeout and never blocks the event loop. The parsers are plain functions that
either return a `RasStatus` or raise `RasError`; nothing else escapes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from gpumon.model import Sample, Tier

log = structlog.get_logger("gpumon.nccl_ras")

DEFAULT_HOST = "localhost"
DEFAULT_PORT = 28028
PROTOCOL_VERSION = 2  # NCCL_RAS_CLIENT_PROTOCOL in src/ras/ras_internal.h
MAX_STATUS_BYTES = 16 << 20  # a 4096-rank job's JSON is a few MB
MAX_LINE_BYTES = 64 << 10
NCCL_IN_PROGRESS = 7  # ncclInProgress: not an error in init_state / async_error
NCCL_SUCCESS = 0

T = TypeVar("T")


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


def parse_json_status(text: str) -> RasStatus:
    """Parse the `SET FORMAT json` STATUS report (client_support.cc, rasDumpCommsToJSON)."""
    try:
        doc = json.loads(text, strict=False)  # NCCL writes host names unescaped
    except (ValueError, RecursionError) as exc:
        raise RasError("protocol", f"RAS status is not JSON: {exc}") from None
    top = _obj(doc, "document")
    version = top.get("nccl_version", "")
    if not isinstance(version, str):
        raise RasError("protocol", "RAS JSON: nccl_version is not a string")
    comms = _list(top.get("communicators"), "communicators")
    status = RasStatus("json", nccl_version=version, communicators=len(comms), missing_ranks=0,
                       collectives={})
    missing: set[tuple[str, int, int, int]] = set()
    dead: set[tuple[str, int]] = set()
    unresponsive: set[tuple[str, int]] = set()
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
            counts = _obj(rank.get("collective_counts", {}), "collective_counts")
            for op, n in counts.items():
                n = _int(n, f"collective count {op}")
                if n < 0:
                    raise RasError("protocol", f"RAS JSON: negative collective count {op}")
                most[op] = max(most.get(op, 0), n)
        collectives.update(most)
        for j, raw_missing in enumerate(_list(comm.get("missing_ranks", []), "missing_ranks")):
            m = _obj(raw_missing, f"missing_ranks[{j}]")
            host = m.get("host", "")
            host = host if isinstance(host, str) else ""
            pid = _int(m.get("pid", -1), "pid")
            st = _obj(m.get("status", {}), "missing rank status")
            missing.add((host, pid, _int(m.get("cuda_dev", -1), "cuda_dev"), _int(m.get("rank", -1), "rank")))
            if _flag(st.get("considered_dead", False), "considered_dead"):
                dead.add((host, pid))
            elif _flag(st.get("unresponsive", False), "unresponsive"):
                unresponsive.add((host, pid))
    status.missing_ranks = len({(h, p, d) for h, p, d, _ in missing})
    status.dead_processes = len(dead)
    status.unresponsive_processes = len(unresponsive)
    status.collectives = dict(collectives)
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
    per-rank list, so `collectives`, `missing_ranks` and `running_ranks` stay unknown.
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


async def query_status(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, timeout: float = 5.0,
                       prefer_json: bool = True) -> tuple[str, bytes]:
    """One RAS exchange: returns (format, raw STATUS payload). Raises `RasError`; never outlasts `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    async def step(aw: Awaitable[T]) -> T:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise asyncio.TimeoutError
        return await asyncio.wait_for(aw, remaining)

    try:
        reader, writer = await step(asyncio.open_connection(host, port, limit=MAX_LINE_BYTES))
    except asyncio.TimeoutError:
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
        # NCCL's own wait for its peers, kept well inside ours: NCCL may take the leg timeout plus as
        # much again (RAS_COLLECTIVE_EXTRA_TIMEOUT_SEC) before it reports.
        nccl_timeout = max(1, int((timeout - 1) / 2))
        reply = await command(f"TIMEOUT {nccl_timeout}")
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
    except asyncio.TimeoutError:
        raise RasError("timeout", f"NCCL RAS at {host}:{port} did not answer within {timeout:g} s") from None
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


@dataclass
class _Stall:
    total: int | None = None
    since: float = 0.0


@dataclass
class NcclRasSource:
    """Polls one RAS endpoint; `await poll()` on the event loop gives one Sample (unit `nccl_ras:HOST:PORT`).

    State (failure counts, the stall clock) is only touched from the event loop, and an asyncio lock
    keeps two polls from overlapping, so no thread ever sees it half-updated.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    timeout: float = 5.0
    prefer_json: bool = True
    tier: Tier = Tier.SLOW
    clock: Callable[[], float] = time.monotonic  # for the stall gauge
    wall: Callable[[], float] = time.time  # sample timestamps
    failures: Counter[str] = field(default_factory=Counter)
    last_status: RasStatus | None = None
    _stall: _Stall = field(default_factory=_Stall)
    _lock: asyncio.Lock | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def unit(self) -> str:
        return f"nccl_ras:{self.endpoint}"

    async def poll(self) -> Sample:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            return await self._poll()

    async def _poll(self) -> Sample:
        ep = (("endpoint", self.endpoint),)
        started = time.perf_counter()
        status: RasStatus | None = None
        try:
            fmt, payload = await query_status(self.host, self.port, timeout=self.timeout,
                                              prefer_json=self.prefer_json)
            status = parse_status(payload, fmt)
        except RasError as exc:
            self.failures[exc.reason] += 1
            if exc.reason == "connect":  # no job listening: whatever was counting has ended
                self._stall = _Stall()
            log.debug("NCCL RAS query failed", endpoint=self.endpoint, reason=exc.reason, error=str(exc))
        duration = time.perf_counter() - started
        sample = Sample(self.unit, self.tier.value, self.wall())
        sample.add("gpumon_nccl_ras_up", ep, 0.0 if status is None else 1.0)
        sample.add("gpumon_nccl_ras_query_duration_seconds", ep, duration)
        for reason in ("connect", "timeout", "protocol"):
            sample.add("gpumon_nccl_ras_query_failures_total", (*ep, ("reason", reason)), self.failures[reason])
        self.last_status = status
        if status is None:
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
        if status.collectives is not None:
            for op, n in sorted(status.collectives.items()):
                sample.add("gpumon_nccl_collective_operations_total", (*ep, ("operation", op)), n)
            stall = self._stalled_for(sum(status.collectives.values()), status.running_ranks > 0)
            if stall is not None:
                sample.add("gpumon_nccl_collective_stall_seconds", ep, stall)
        return sample

    def _stalled_for(self, total: int, running: bool) -> float | None:
        """Seconds the total collective count has not moved while ranks run; None when none run."""
        now = self.clock()
        if not running:
            self._stall = _Stall()
            return None
        if self._stall.total != total:
            self._stall = _Stall(total, now)
        return now - self._stall.since
