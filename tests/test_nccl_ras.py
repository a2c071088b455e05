"""The NCCL RAS client against a fake RAS server speaking NCCL's protocol on a loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpumon import catalog
from gpumon.model import Sample
from gpumon.sources.nccl_ras import (
    PROTOCOL_VERSION,
    NcclRasSource,
    RasError,
    parse_json_status,
    parse_status,
    parse_text_status,
    query_status,
)
from tests.conftest import FakeClock

OPS = ("Broadcast", "Reduce", "AllGather", "ReduceScatter", "AllReduce")


def rank(n: int, *, host: str = "10.0.0.1", allreduce: int = 100, async_error: int = 0, init_state: int = 0,
         abort: bool = False) -> dict[str, Any]:
    counts = dict.fromkeys(OPS, 0) | {"AllReduce": allreduce, "AllGather": 7}
    return {"rank": n, "host": host, "pid": 1000 + n, "cuda_dev": n % 8, "nvml_dev": n % 8,
            "status": {"init_state": init_state, "async_error": async_error, "finalize_called": False,
                       "destroy_flag": False, "abort_flag": abort},
            "collective_counts": counts}


def missing(n: int, *, dead: bool, host: str = "10.0.0.2") -> dict[str, Any]:
    return {"rank": n, "host": host, "pid": 2000 + n, "cuda_dev": n % 8, "nvml_dev": n % 8,
            "status": {"unresponsive": True, "considered_dead": dead}}


def status_json(ranks: list[dict[str, Any]], missing_ranks: list[dict[str, Any]] | None = None,
                timeouts: int = 0) -> bytes:
    """A STATUS report shaped like NCCL's rasDumpCommsToJSON (src/ras/client_support.cc)."""
    missing_ranks = missing_ranks or []
    doc = {"nccl_version": "2.28.9", "cuda_runtime_version": 12080, "cuda_driver_version": 12080,
           "timestamp": "2026-11-28 08:00:00", "communicators_count": 1,
           "communicators": [{"hash": "0x1234", "secondary_hash": "0x1:0x2",
                              "size": len(ranks) + len(missing_ranks), "ranks_count": len(ranks),
                              "missing_ranks_count": len(missing_ranks), "ranks": ranks,
                              "missing_ranks": missing_ranks}],
           "ras": {"collection_time_sec": 0.012, "timeouts_count": timeouts}}
    return json.dumps(doc, indent=2).encode() + b"\n"


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
    """A RAS listener on 127.0.0.1. `status` is called per STATUS and returns the report bytes."""

    def __init__(self, status: Callable[[], bytes] = lambda: status_json([rank(0), rank(1)]), *,
                 json_supported: bool = True, behaviour: str = "ok") -> None:
        self.status = status
        self.json_supported = json_supported
        self.behaviour = behaviour  # ok | silent | bad_handshake | close_after_handshake | silent_status
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
                    writer.write(b"OK\n")
                elif upper.startswith("SET FORMAT "):
                    writer.write(b"OK\n" if self.json_supported else f"ERROR: Unknown command {cmd}\n".encode())
                elif upper in ("STATUS", "VERBOSE STATUS"):
                    if self.behaviour == "silent_status":
                        await reader.read()
                        return
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


async def test_good_status_json() -> None:
    async with FakeRas() as ras:
        sample = await source(ras).poll()
    m = metrics(sample)
    assert ras.commands == [f"CLIENT PROTOCOL {PROTOCOL_VERSION}", "TIMEOUT 1", "SET FORMAT json", "STATUS"]
    assert sample.unit == f"nccl_ras:127.0.0.1:{ras.port}"
    assert m["gpumon_nccl_ras_up"] == 1
    assert m["gpumon_nccl_info{nccl_version=2.28.9,format=json}"] == 1
    assert (m["gpumon_nccl_communicators"], m["gpumon_nccl_ranks"]) == (1, 2)
    assert (m["gpumon_nccl_missing_ranks"], m["gpumon_nccl_dead_processes"]) == (0, 0)
    assert m["gpumon_nccl_async_error_ranks"] == 0
    assert m["gpumon_nccl_collective_operations_total{operation=AllReduce}"] == 100
    assert m["gpumon_nccl_collective_operations_total{operation=AllGather}"] == 7
    assert m["gpumon_nccl_collective_stall_seconds"] == 0
    for name, labels, _ in sample.values:
        metric = catalog.BY_NAME[name]
        assert {k for k, _ in labels} == set(metric.labels), name


async def test_dead_rank_and_async_error() -> None:
    report = status_json([rank(0), rank(1, async_error=6)], [missing(2, dead=True), missing(3, dead=False)],
                         timeouts=1)
    async with FakeRas(lambda: report) as ras:
        m = metrics(await source(ras).poll())
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
        assert metrics(await src.poll())["gpumon_nccl_collective_stall_seconds"] == 0
        clock.advance(15)
        assert metrics(await src.poll())["gpumon_nccl_collective_stall_seconds"] == 15
        clock.advance(15)
        assert metrics(await src.poll())["gpumon_nccl_collective_stall_seconds"] == 30
        count["n"] += 1  # it moves again
        clock.advance(15)
        assert metrics(await src.poll())["gpumon_nccl_collective_stall_seconds"] == 0


async def test_no_stall_gauge_without_running_ranks() -> None:
    report = status_json([rank(0, abort=True), rank(1, init_state=7)])
    async with FakeRas(lambda: report) as ras:
        m = metrics(await source(ras).poll())
    assert "gpumon_nccl_collective_stall_seconds" not in m
    assert m["gpumon_nccl_init_error_ranks"] == 0  # ncclInProgress is not an error


async def test_text_fallback_for_older_nccl() -> None:
    async with FakeRas(lambda: TEXT_STATUS, json_supported=False) as ras:
        m = metrics(await source(ras).poll())
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
        m = metrics(await src.poll())
    assert m["gpumon_nccl_ras_up"] == 0
    assert m["gpumon_nccl_ras_query_failures_total{reason=protocol}"] == 1
    assert "gpumon_nccl_communicators" not in m


@pytest.mark.parametrize("payload", [b"\x00\x01garbage\xff", b"{\"communicators\": 3}", b"[1, 2",
                                     b"{\"communicators\": [{\"size\": \"big\"}]}"])
async def test_garbage_status(payload: bytes) -> None:
    async with FakeRas(lambda: payload) as ras:
        m = metrics(await source(ras).poll())
    assert m["gpumon_nccl_ras_up"] == 0
    assert m["gpumon_nccl_ras_query_failures_total{reason=protocol}"] == 1


@pytest.mark.parametrize("behaviour", ["silent", "silent_status"])
async def test_server_that_never_answers_times_out(behaviour: str) -> None:
    async with FakeRas(behaviour=behaviour) as ras:
        src = source(ras, timeout=0.3)
        started = time.monotonic()
        m = metrics(await asyncio.wait_for(src.poll(), 3.0))
        assert time.monotonic() - started < 1.5
    assert m["gpumon_nccl_ras_up"] == 0
    assert m["gpumon_nccl_ras_query_failures_total{reason=timeout}"] == 1


async def test_no_job_listening() -> None:
    async with FakeRas() as ras:
        port = ras.port
    src = NcclRasSource("127.0.0.1", port, timeout=1.0)
    m = metrics(await src.poll())
    assert m["gpumon_nccl_ras_up"] == 0
    assert m["gpumon_nccl_ras_query_failures_total{reason=connect}"] == 1


async def test_event_loop_keeps_running_during_a_hung_query() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async with FakeRas(behaviour="silent") as ras:
        task = asyncio.create_task(ticker())
        await source(ras, timeout=0.3).poll()
        task.cancel()
    assert ticks >= 10


async def test_query_status_returns_raw_payload() -> None:
    async with FakeRas(lambda: b"x" * 200_000) as ras:
        fmt, payload = await query_status("127.0.0.1", ras.port, timeout=2.0, prefer_json=False)
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
