"""The NCCL RAS client against a fake RAS server speaking NCCL's protocol on a loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from gpumon import catalog
from gpumon.exporter import Exporter
from gpumon.model import Sample
from gpumon.sources import nccl_ras
from gpumon.sources.nccl_ras import (
    PROTOCOL_VERSION,
    NcclRasSource,
    RasError,
    leg_timeout,
    parse_json_status,
    parse_status,
    parse_text_status,
    query_budget,
    query_status,
)
from tests.support.clock import FakeClock

OPS = ("Broadcast", "Reduce", "AllGather", "ReduceScatter", "AllReduce")


def rank(n: int, *, host: str = "10.0.0.1", allreduce: int = 100, async_error: int = 0, init_state: int = 0,
         abort: bool = False, pid: int = 1000, gpu: int = 0) -> dict[str, Any]:
    """Rank `n` of a job whose rank 0 is process `pid` on GPU `gpu` (one GPU per process, as torchrun)."""
    counts = dict.fromkeys(OPS, 0) | {"AllReduce": allreduce, "AllGather": 7}
    return {"rank": n, "host": host, "pid": pid + n, "cuda_dev": 0, "nvml_dev": (gpu + n) % 8,
            "status": {"init_state": init_state, "async_error": async_error, "finalize_called": False,
                       "destroy_flag": False, "abort_flag": abort},
            "collective_counts": counts}


def missing(n: int, *, dead: bool, host: str = "10.0.0.2", unresponsive: bool = True) -> dict[str, Any]:
    """A `missing_ranks` entry. NCCL lists a rank there when its communicator data did not come back:
    `unresponsive` when its process did not answer the RAS collective, `considered_dead` when RAS gave the
    process up, neither when the process answered but no longer has the communicator (destroyed, split)."""
    return {"rank": n, "host": host, "pid": 2000 + n, "cuda_dev": 0, "nvml_dev": n % 8,
            "status": {"unresponsive": unresponsive, "considered_dead": dead}}


def comm(ranks: list[dict[str, Any]], missing_ranks: list[dict[str, Any]] | None = None, *,
         hash_: str = "0x1234") -> dict[str, Any]:
    missing_ranks = missing_ranks or []
    return {"hash": hash_, "secondary_hash": "0x1:0x2", "size": len(ranks) + len(missing_ranks),
            "ranks_count": len(ranks), "missing_ranks_count": len(missing_ranks), "ranks": ranks,
            "missing_ranks": missing_ranks}


def report(comms: list[dict[str, Any]], *, timeouts: int = 0, version: str = "2.29.7") -> bytes:
    """A STATUS report shaped like NCCL's rasDumpCommsToJSON (src/ras/client_support.cc)."""
    doc = {"nccl_version": version, "cuda_runtime_version": 12080, "cuda_driver_version": 12080,
           "timestamp": "2026-11-28 08:00:00", "communicators_count": len(comms), "communicators": comms,
           "ras": {"collection_time_sec": 0.012, "timeouts_count": timeouts}}
    return json.dumps(doc, indent=2).encode() + b"\n"


def status_json(ranks: list[dict[str, Any]], missing_ranks: list[dict[str, Any]] | None = None,
                timeouts: int = 0) -> bytes:
    return report([comm(ranks, missing_ranks)], timeouts=timeouts)


TEXT_STATUS = b"""NCCL version 2.24.3+cuda12.6 compiled with CUDA 12.6
CUDA runtime version 12060, driver version 12080

Job summary
===========

  Nodes  Processes         GPUs  Processes     GPUs
(total)   per node  per process    (total)  (total)
      2          8            1         16       16

Communicators... (0.013s)
=============

Group     Comms     Nodes     Ranks     Ranks     Ranks    Status  Errors
    #  in group  per comm  per node  per comm  in group
    0         1         2         8        16        15   RUNNING  INCOMPLETE,ERROR

Errors
======

DEAD
  1 job process is considered dead (unreachable via the RAS network)
  Process 2001 on node 10.0.0.2 managing GPU 1

#0-0 (0000000000001234) INCOMPLETE
  Missing communicator data from 1 rank
  Rank 9 -- GPU 1 managed by process 2001 on node 10.0.0.2

#0-0 (0000000000001234) ERROR
  Asynchronous errors on 2 ranks
  Rank 3 -- GPU 3 managed by process 1003 on node 10.0.0.1

Warnings
========

TIMEOUT
  Encountered 2 communication timeouts while gathering communicator data

"""


class FakeRas:
    """A RAS listener on 127.0.0.1. `status` is called per STATUS and returns the report bytes.

    `answer_after(leg)` is how long NCCL takes to report after TIMEOUT `leg` (default: at once; a job
    with an unresponsive peer waits out the leg timeout, then up to 5 s x NCCL_RAS_TIMEOUT_FACTOR more).
    """

    def __init__(self, status: Callable[[], bytes] = lambda: status_json([rank(0), rank(1)]), *,
                 json_supported: bool = True, behaviour: str = "ok",
                 answer_after: Callable[[int], float] = lambda leg: 0.0) -> None:
        self.status = status
        self.json_supported = json_supported
        self.behaviour = behaviour  # ok | silent | bad_handshake | close_after_handshake | silent_status
        self.answer_after = answer_after
        self.leg = nccl_ras.LEG_TIMEOUT_SEC  # NCCL's default until TIMEOUT says otherwise
        self.commands: list[str] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> FakeRas:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        if hasattr(self.server, "close_clients"):
            self.server.close_clients()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.behaviour == "silent":
                await reader.read()  # accept, never answer
                return
            while line := await reader.readline():
                cmd = line.decode().strip()
                self.commands.append(cmd)
                upper = cmd.upper()
                if upper.startswith("CLIENT PROTOCOL "):
                    if self.behaviour == "bad_handshake":
                        writer.write(b"\x00\xffHELLO garbage\n")
                    elif self.behaviour == "close_after_handshake":
                        return
                    else:
                        writer.write(f"SERVER PROTOCOL {PROTOCOL_VERSION}\n".encode())
                elif upper.startswith("TIMEOUT "):
                    self.leg = int(cmd.split()[1])
                    writer.write(b"OK\n")
                elif upper.startswith("SET FORMAT "):
                    writer.write(b"OK\n" if self.json_supported else f"ERROR: Unknown command {cmd}\n".encode())
                elif upper in ("STATUS", "VERBOSE STATUS"):
                    if self.behaviour == "silent_status":
                        await reader.read()
                        return
                    await asyncio.sleep(self.answer_after(self.leg))
                    writer.write(self.status())
                    await writer.drain()
                    return  # NCCL closes the connection after the report
                else:
                    writer.write(f"ERROR: Unknown command {cmd}\n".encode())
                await writer.drain()
        finally:
            writer.close()


def metrics(sample: Sample) -> dict[str, float]:
    """name{extra labels} -> value, without the endpoint label."""
    out = {}
    for name, labels, value in sample.values:
        extra = ",".join(f"{k}={v}" for k, v in labels if k != "endpoint")
        out[f"{name}{{{extra}}}" if extra else name] = value
    return out


def source(ras: FakeRas, **kw: Any) -> NcclRasSource:
    return NcclRasSource("127.0.0.1", ras.port, timeout=kw.pop("timeout", 2.0), **kw)


@pytest.fixture
def short_budget(monkeypatch: pytest.MonkeyPatch) -> float:
    """Queries give up after 0.3 s instead of NCCL's 1 + leg + 5 s, for tests of servers that never answer."""
    monkeypatch.setattr(nccl_ras, "query_budget", lambda leg, factor=1: 0.3)
    return 0.3


async def test_good_status_json() -> None:
    async with FakeRas() as ras:
        sample = await source(ras).query()
    m = metrics(sample)
    assert ras.commands == [f"CLIENT PROTOCOL {PROTOCOL_VERSION}", "TIMEOUT 2", "SET FORMAT json", "STATUS"]
    assert sample.unit == f"nccl_ras:127.0.0.1:{ras.port}"
    assert m["gpumon_nccl_ras_up"] == 1
    assert m["gpumon_nccl_info{nccl_version=2.29.7,format=json}"] == 1
    assert (m["gpumon_nccl_communicators"], m["gpumon_nccl_ranks"]) == (1, 2)
    assert (m["gpumon_nccl_missing_ranks"], m["gpumon_nccl_dead_processes"]) == (0, 0)
    assert m["gpumon_nccl_async_error_ranks"] == 0
    # A job seen for the first time only sets the baseline: what it did before is not counted as new.
    assert m["gpumon_nccl_collective_operations_total{operation=AllReduce}"] == 0
    assert m["gpumon_nccl_collective_operations_total{operation=AllGather}"] == 0
    assert m["gpumon_nccl_collective_stall_seconds"] == 0
    assert m["gpumon_nccl_ras_job_changes_total"] == 0
    for name, labels, _ in sample.values:
        metric = catalog.BY_NAME[name]
        assert {k for k, _ in labels} == set(metric.labels), name


async def test_dead_rank_and_async_error() -> None:
    report = status_json([rank(0), rank(1, async_error=6)], [missing(2, dead=True), missing(3, dead=False)],
                         timeouts=1)
    async with FakeRas(lambda: report) as ras:
        m = metrics(await source(ras).query())
    assert m["gpumon_nccl_ras_up"] == 1
    assert m["gpumon_nccl_ranks"] == 4
    assert m["gpumon_nccl_missing_ranks"] == 2
    assert m["gpumon_nccl_dead_processes"] == 1
    assert m["gpumon_nccl_unresponsive_processes"] == 1
    assert m["gpumon_nccl_async_error_ranks"] == 1
    assert m["gpumon_nccl_ras_timeouts"] == 1


async def test_stalled_job() -> None:
    clock = FakeClock()
    count = {"n": 100}
    async with FakeRas(lambda: status_json([rank(0, allreduce=count["n"]), rank(1, allreduce=count["n"])])) as ras:
        src = source(ras, clock=clock)
        assert metrics(await src.query())["gpumon_nccl_collective_stall_seconds"] == 0
        clock.advance(15)
        assert metrics(await src.query())["gpumon_nccl_collective_stall_seconds"] == 15
        clock.advance(15)
        assert metrics(await src.query())["gpumon_nccl_collective_stall_seconds"] == 30
        count["n"] += 1  # it moves again
        clock.advance(15)
        assert metrics(await src.query())["gpumon_nccl_collective_stall_seconds"] == 0


async def test_no_stall_gauge_without_running_ranks() -> None:
    report = status_json([rank(0, abort=True), rank(1, init_state=7)])
    async with FakeRas(lambda: report) as ras:
        m = metrics(await source(ras).query())
    assert "gpumon_nccl_collective_stall_seconds" not in m
    assert m["gpumon_nccl_init_error_ranks"] == 0  # ncclInProgress is not an error


async def test_text_fallback_for_older_nccl() -> None:
    async with FakeRas(lambda: TEXT_STATUS, json_supported=False) as ras:
        m = metrics(await source(ras).query())
    assert m["gpumon_nccl_ras_up"] == 1
    assert m["gpumon_nccl_info{nccl_version=2.24.3+cuda12.6,format=text}"] == 1
    assert (m["gpumon_nccl_communicators"], m["gpumon_nccl_ranks"]) == (1, 16)
    assert m["gpumon_nccl_dead_processes"] == 1
    assert m["gpumon_nccl_async_error_ranks"] == 2
    assert m["gpumon_nccl_ras_timeouts"] == 2
    # the text report has no absolute counts: no collective counters and no stall gauge, never a fake 0
    assert not any(k.startswith(("gpumon_nccl_collective", "gpumon_nccl_missing_ranks")) for k in m)


@pytest.mark.parametrize("behaviour", ["bad_handshake", "close_after_handshake"])
async def test_protocol_errors(behaviour: str) -> None:
    async with FakeRas(behaviour=behaviour) as ras:
        src = source(ras)
        m = metrics(await src.query())
    assert m["gpumon_nccl_ras_up"] == 0
    assert m["gpumon_nccl_ras_query_failures_total{reason=protocol}"] == 1
    assert "gpumon_nccl_communicators" not in m


@pytest.mark.parametrize("payload", [b"\x00\x01garbage\xff", b"{\"communicators\": 3}", b"[1, 2",
                                     b"{\"communicators\": [{\"size\": \"big\"}]}"])
async def test_garbage_status(payload: bytes) -> None:
    async with FakeRas(lambda: payload) as ras:
        m = metrics(await source(ras).query())
    assert m["gpumon_nccl_ras_up"] == 0
    assert m["gpumon_nccl_ras_query_failures_total{reason=protocol}"] == 1


@pytest.mark.parametrize("behaviour", ["silent", "silent_status"])
async def test_server_that_never_answers_times_out(behaviour: str, short_budget: float) -> None:
    async with FakeRas(behaviour=behaviour) as ras:
        src = source(ras, timeout=1)
        started = time.monotonic()
        m = metrics(await asyncio.wait_for(src.query(), 3.0))
        assert time.monotonic() - started < 1.5
    assert m["gpumon_nccl_ras_up"] == 0
    assert m["gpumon_nccl_ras_query_failures_total{reason=timeout}"] == 1


async def test_no_job_listening() -> None:
    async with FakeRas() as ras:
        port = ras.port
    src = NcclRasSource("127.0.0.1", port, timeout=1.0)
    m = metrics(await src.query())
    assert m["gpumon_nccl_ras_up"] == 0
    assert m["gpumon_nccl_ras_query_failures_total{reason=connect}"] == 1


async def test_event_loop_keeps_running_during_a_hung_query(short_budget: float) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async with FakeRas(behaviour="silent") as ras:
        task = asyncio.create_task(ticker())
        await source(ras, timeout=1).query()
        task.cancel()
    assert ticks >= 10


async def test_query_status_returns_raw_payload() -> None:
    async with FakeRas(lambda: b"x" * 200_000) as ras:
        fmt, payload = await query_status("127.0.0.1", ras.port, leg=2, prefer_json=False)
    assert (fmt, len(payload)) == ("text", 200_000)
    assert "SET FORMAT json" not in ras.commands


def test_text_parser_rejects_non_reports() -> None:
    with pytest.raises(RasError):
        parse_text_status("hello\n")
    empty = parse_text_status("NCCL version 2.25.1\n\nCommunicators... (0.001s)\n=============\n\n"
                              "No communicator data collected!\n")
    assert (empty.communicators, empty.ranks, empty.nccl_version) == (0, 0, "2.25.1")


def test_json_parser_counts_each_missing_rank_once_across_communicators() -> None:
    doc = json.loads(status_json([rank(0)], [missing(1, dead=True)]))
    doc["communicators"].append(doc["communicators"][0])
    status = parse_json_status(json.dumps(doc))
    assert (status.communicators, status.missing_ranks, status.dead_processes) == (2, 1, 1)
    assert status.collectives is not None and status.collectives["AllReduce"] == 200


# --- NCCL's timing: a degraded job answers after the leg timeout plus part of the extra wait ----------------


def test_budget_is_what_ncclras_waits_scaled_by_the_timeout_factor() -> None:
    # ncclras (src/ras/client.cc) waits 1 + timeout + 5 s; NCCL's extra wait is 5 s x NCCL_RAS_TIMEOUT_FACTOR.
    assert query_budget(5) == 1 + 5 + 5
    assert query_budget(5, 3) == 1 + 5 + 15
    assert (leg_timeout(None), leg_timeout(None, 2)) == (5, 10)  # NCCL's default leg scales with the factor
    assert (leg_timeout(2.5), leg_timeout(0.2), leg_timeout(7)) == (3, 1, 7)  # whole seconds, never 0 (= off)
    default = NcclRasSource()
    assert (default.leg, default.budget) == (5, 11)
    slow_network = NcclRasSource(timeout_factor=3)
    assert (slow_network.leg, slow_network.budget) == (15, 31)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="NCCL_RAS_TIMEOUT_FACTOR"):
            NcclRasSource(timeout_factor=bad)  # type: ignore[arg-type]


async def test_degraded_job_that_answers_after_its_leg_timeout_is_not_a_timeout() -> None:
    """A job with a dead peer: NCCL waits out the leg timeout for it, then part of its 5 s extra wait for
    answers still travelling through other peers, and reports. That is well inside NCCL's own bound (and
    ncclras's wait) but used to be past gpumon's, so exactly the degraded job was recorded as a timeout."""
    degraded = status_json([rank(0), rank(1)], [missing(2, dead=True)], timeouts=1)
    async with FakeRas(lambda: degraded, answer_after=lambda leg: leg + 0.6) as ras:
        src = source(ras, timeout=1)
        started = time.monotonic()
        m = metrics(await src.query())
        took = time.monotonic() - started
    assert m["gpumon_nccl_ras_query_failures_total{reason=timeout}"] == 0
    assert m["gpumon_nccl_ras_up"] == 1
    assert "TIMEOUT 1" in ras.commands and took >= 1.6  # it did answer late
    assert (m["gpumon_nccl_dead_processes"], m["gpumon_nccl_ras_timeouts"]) == (1, 1)


async def test_query_status_never_outlasts_its_budget() -> None:
    async with FakeRas(behaviour="silent_status") as ras:
        started = time.monotonic()
        with pytest.raises(RasError) as err:
            await query_status("127.0.0.1", ras.port, leg=1, budget=0.3)
        assert time.monotonic() - started < 1.0
    assert err.value.reason == "timeout"
    with pytest.raises(ValueError):
        await query_status("127.0.0.1", ras.port, leg=0)  # TIMEOUT 0 would switch NCCL's timeout off


# --- missing ranks: only those whose process did not answer or is dead ------------------------------------


async def test_ranks_that_left_a_communicator_are_not_missing() -> None:
    """After ncclCommSplit or ncclCommDestroy, NCCL lists the ranks whose processes answered without the
    communicator under missing_ranks too, with unresponsive and considered_dead false: not lost."""
    split = report([comm([rank(0), rank(1)], [missing(2, dead=False, unresponsive=False),
                                               missing(3, dead=False, unresponsive=False)], hash_="0xa"),
                    comm([rank(0, pid=2002, gpu=2), rank(1, pid=2002, gpu=2)], hash_="0xb")])
    async with FakeRas(lambda: split) as ras:
        m = metrics(await source(ras).query())
    assert m["gpumon_nccl_ras_up"] == 1
    assert m["gpumon_nccl_missing_ranks"] == 0  # NcclRankLost (missing_ranks > 0) must not fire on a split
    assert (m["gpumon_nccl_dead_processes"], m["gpumon_nccl_unresponsive_processes"]) == (0, 0)

    lost = report([comm([rank(0), rank(1)], [missing(2, dead=False, unresponsive=False),
                                              missing(3, dead=False, unresponsive=True),
                                              missing(4, dead=True)])])
    status = parse_json_status(lost.decode())
    assert (status.missing_ranks, status.unresponsive_processes, status.dead_processes) == (2, 1, 1)


def test_nccl_2_28_report_with_a_missing_rank_parses() -> None:
    """NCCL 2.28.7 and 2.28.9 leave out the comma after a missing rank's nvml_dev (fixed in 2.29.2), so
    their report is invalid JSON exactly when a rank is missing."""
    good = status_json([rank(0)], [missing(1, dead=True)]).decode()
    broken = re.sub(r'("nvml_dev": \d+),(\s*"status")', r"\1\2", good)
    assert broken != good
    with pytest.raises(ValueError):
        json.loads(broken)
    status = parse_json_status(broken)
    assert (status.missing_ranks, status.dead_processes) == (1, 1)
    with pytest.raises(RasError):  # only that defect is repaired
        parse_json_status(broken.replace('"ranks": [', '"ranks": [[', 1))


# --- two jobs on one node share the RAS port (SO_REUSEPORT) -------------------------------------------------


def job_a(allreduce: int) -> bytes:
    return report([comm([rank(0, allreduce=allreduce), rank(1, allreduce=allreduce)], hash_="0xa")])


def job_b(allreduce: int) -> bytes:
    # Another job on the same node: other GPUs, other communicators, and (in its own container) the same pids.
    return report([comm([rank(0, allreduce=allreduce, gpu=4), rank(1, allreduce=allreduce, gpu=4)],
                        hash_="0xb")])


async def test_two_jobs_answering_in_turn_are_not_merged_into_one() -> None:
    """NCCL binds the client port with SO_REUSEPORT, so with two jobs on a node the kernel hands each query to
    either. Job A is hung at 100 AllReduce; job B runs. Neither the stall clock nor the counter may be
    computed across the two: A's stall keeps growing, the counter only counts each job's own increases."""
    clock = FakeClock()
    answers = iter([job_a(100), job_b(5000), job_a(100), job_b(5010), job_a(100), job_a(100)])
    seen: list[dict[str, float]] = []
    async with FakeRas(lambda: next(answers)) as ras:
        src = source(ras, clock=clock)
        with capture_logs() as logs:
            for _ in range(6):
                seen.append(metrics(await src.query()))
                clock.advance(15)
    stall = [m["gpumon_nccl_collective_stall_seconds"] for m in seen]
    assert stall == [0, 0, 30, 0, 60, 75]  # A: hung since the first query; B: moving
    counter = [m["gpumon_nccl_collective_operations_total{operation=AllReduce}"] for m in seen]
    assert counter == [0, 0, 0, 10, 10, 10]  # B's 10 new AllReduce; never a jump between the jobs' counts
    assert [m["gpumon_nccl_ras_job_changes_total"] for m in seen] == [0, 1, 2, 3, 4, 4]
    changes = [e for e in logs if e["event"] == "NCCL RAS answered for another job than the last query"]
    assert len(changes) == 4 and {e["log_level"] for e in changes} == {"warning"}
    assert [e["seen_before"] for e in changes] == [False, True, True, True]


async def test_one_job_changing_its_communicators_is_still_one_job() -> None:
    """A job that splits a communicator, destroys one and loses a rank stays one job; a new communicator's
    launches count, a destroyed one's never come off, and a rank that misses a query is not counted twice."""
    clock = FakeClock()
    world = [rank(0, allreduce=100), rank(1, allreduce=100)]
    answers = iter([
        report([comm(world, hash_="0xa")]),
        # rank 1 missed this query (its count is the lower one now): +5 from rank 0
        report([comm([rank(0, allreduce=105)], [missing(1, dead=False)], hash_="0xa")]),
        # rank 0 missed it: rank 1 shows 103, less than 105: nothing new, and no drop
        report([comm([rank(1, allreduce=103)], [missing(0, dead=False)], hash_="0xa")]),
        # both back at 110 (+5), and a split communicator with 4 AllReduce on it so far (+4)
        report([comm([rank(0, allreduce=110), rank(1, allreduce=110)], hash_="0xa"),
                comm([rank(0, allreduce=4)], hash_="0xc")]),
        # the world communicator destroyed; the split one moved on by 2
        report([comm([rank(0, allreduce=6)], hash_="0xc")]),
    ])
    async with FakeRas(lambda: next(answers)) as ras:
        src = source(ras, clock=clock)
        seen = []
        for _ in range(5):
            seen.append(metrics(await src.query()))
            clock.advance(15)
    assert [m["gpumon_nccl_collective_operations_total{operation=AllReduce}"] for m in seen] == [0, 5, 5, 14, 16]
    assert [m["gpumon_nccl_collective_stall_seconds"] for m in seen] == [0, 0, 15, 0, 0]
    assert seen[-1]["gpumon_nccl_ras_job_changes_total"] == 0


async def test_a_job_ending_forgets_it_and_text_reports_tell_jobs_apart_by_version() -> None:
    clock = FakeClock()
    async with FakeRas(lambda: job_a(100)) as ras:
        src = source(ras, clock=clock)
        await src.query()
    clock.advance(15)
    m = metrics(await src.query())  # nothing listens: the job ended
    assert m["gpumon_nccl_ras_query_failures_total{reason=connect}"] == 1
    # The next job, whatever it is, starts a fresh count and is not a change of job.
    async with FakeRas(lambda: job_b(7000)) as ras2:
        src.port = ras2.port
        m = metrics(await src.query())
    assert m["gpumon_nccl_ras_job_changes_total"] == 0
    assert m["gpumon_nccl_collective_operations_total{operation=AllReduce}"] == 0

    versions = iter(["2.24.3", "2.24.3", "2.25.1", "2.24.3"])
    async with FakeRas(lambda: TEXT_STATUS.replace(b"2.24.3+cuda12.6", next(versions).encode()),
                       json_supported=False) as ras:
        text_src = source(ras)
        changes = [metrics(await text_src.query())["gpumon_nccl_ras_job_changes_total"] for _ in range(4)]
    assert changes == [0, 0, 1, 2]


async def test_every_nccl_metric_is_produced_and_the_exposition_passes_promtool() -> None:
    answers = iter([job_a(100), job_b(50)])
    async with FakeRas(lambda: next(answers)) as ras:
        src = source(ras)
        await src.query()
        sample = await src.query()
    produced = {name for name, _, _ in sample.values}
    assert produced == {m.name for m in catalog.METRICS if m.source == "nccl_ras"}
    text = Exporter(process_metrics=False).render([sample]).text
    assert b"gpumon_nccl_ras_job_changes_total{" in text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: run the tests with `make test`, which installs it")
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, check=False)
    assert check.returncode == 0 and check.stdout == b"" and check.stderr == b"", check.stdout + check.stderr


# --- fuzzing: the parsers return a status or raise RasError, nothing else -----------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["communicators", "ranks", "missing_ranks", "status", "size", "collective_counts",
                         "init_state", "async_error", "abort_flag", "considered_dead", "ras", "timeouts_count",
                         "nccl_version", "pid", "host", "AllReduce"]) | st.text(max_size=5), children, max_size=5),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_fuzz_json_status(doc: Any) -> None:
    with contextlib.suppress(RasError):
        parse_status(json.dumps(doc).encode(), "json")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.sampled_from(["json", "text"]))
def test_fuzz_raw_bytes(payload: bytes, fmt: str) -> None:
    with contextlib.suppress(RasError):
        parse_status(payload, fmt)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(TEXT_STATUS.decode().splitlines(keepends=True)) | st.text(max_size=40),
                max_size=30))
def test_fuzz_text_status(lines: list[str]) -> None:
    with contextlib.suppress(RasError):
        parse_status("".join(lines).encode(), "text")


def test_deeply_nested_json_is_a_clean_error() -> None:
    with pytest.raises(RasError):
        parse_status(b"[" * 100_000 + b"]" * 100_000, "json")
