"""Prometheus's query API over the store: result shapes and values as Prometheus writes them, its
parameter and error formats, the limits that keep a heavy query from starving polling, and the POST
form Grafana sends (a read, not stopped by the write guard). tests/integration/test_query_api_prometheus.py
compares the answers with a real Prometheus's on the same data."""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gpumon.config import QueryConfig
from gpumon.model import Sample
from gpumon.query_api import QueryApi, QueryError, format_value
from gpumon.store import Store

NOW = 1_800_000_000.0


def filled_store(points: int = 30) -> Store:
    """Two GPUs, one sample a second for `points` seconds up to NOW: temperature 40+i on GPU i, an
    energy counter growing 100 J/s, and a static info series."""
    store = Store(600)
    for k in range(points):
        t = NOW - (points - 1 - k)
        for gpu in (0, 1):
            s = Sample(f"gpu{gpu}", "fast", t, gpu=gpu)
            labels = (("gpu", str(gpu)), ("uuid", f"GPU-{gpu}"))
            s.add("gpumon_gpu_temperature_celsius", labels, 40.0 + gpu)
            s.add("gpumon_energy_joules_total", labels, 100.0 * k)
            s.add("gpumon_gpu_info", (*labels, ("name", "NVIDIA H200")), 1.0)
            store.put(s)
    return store


def api(store: Store | None = None, **limits: Any) -> QueryApi:
    return QueryApi(store or filled_store(), retention_s=600.0, limits=QueryConfig(**limits), clock=lambda: NOW)


def run(coro: Any) -> Any:
    """The answer, decoded: query and query_range give the JSON text their thread made."""
    got = asyncio.run(coro)
    return json.loads(got) if isinstance(got, str) else got


@pytest.mark.parametrize(("value", "text"), [
    (1.0, "1"), (0.5, "0.5"), (-0.0, "-0"), (1e21, "1e+21"), (1e-7, "1e-07"), (1.5e-7, "1.5e-07"),
    (-2e-6, "-0.000002"), (1e20, "100000000000000000000"), (1.2345e300, "1.2345e+300"), (5e-324, "5e-324"),
    (123456.789, "123456.789"), (0.1 + 0.2, "0.30000000000000004"), (math.nan, "NaN"), (math.inf, "+Inf"),
    (-math.inf, "-Inf"), (2.0**53, "9007199254740992"),
])
def test_values_are_written_as_prometheus_writes_them(value: float, text: str) -> None:
    """Prometheus 2.42's marshalFloat (answers checked against a running one): shortest round-trip digits,
    with an exponent only below 1e-6 or from 1e21 on."""
    assert format_value(value) == text


def test_an_instant_vector_a_scalar_a_string_and_a_range() -> None:
    q = api()
    got = run(q.query({"query": "gpumon_gpu_temperature_celsius", "time": str(NOW)}))
    assert got == {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"__name__": "gpumon_gpu_temperature_celsius", "gpu": "0", "uuid": "GPU-0"}, "value": [NOW, "40"]},
        {"metric": {"__name__": "gpumon_gpu_temperature_celsius", "gpu": "1", "uuid": "GPU-1"}, "value": [NOW, "41"]},
    ]}}
    rate = run(q.query({"query": "sum(rate(gpumon_energy_joules_total[10s]))", "time": "1800000000.5"}))
    assert rate["data"]["result"] == [{"metric": {}, "value": [1800000000.5, "200"]}]
    scalar = run(q.query({"query": "scalar(count(gpumon_gpu_info))", "time": "2027-01-15T08:00:00Z"}))
    assert scalar["data"]["resultType"] == "scalar" and scalar["data"]["result"][1] in ("2", "NaN")
    assert run(q.query({"query": '"hello"', "time": str(NOW)}))["data"] == {"resultType": "string",
                                                                           "result": [NOW, "hello"]}
    matrix = run(q.query({"query": 'gpumon_gpu_temperature_celsius{gpu="1"}[2s]', "time": str(NOW)}))["data"]
    assert matrix["resultType"] == "matrix"
    assert matrix["result"][0]["values"] == [[NOW - 2, "41"], [NOW - 1, "41"], [NOW, "41"]]


def test_a_range_query_steps_from_start_to_end() -> None:
    got = run(api().query_range({"query": "gpumon_energy_joules_total{gpu='0'} / 100", "start": str(NOW - 4),
                                 "end": str(NOW), "step": "2s"}))
    assert got["data"]["resultType"] == "matrix"
    assert got["data"]["result"] == [{"metric": {"gpu": "0", "uuid": "GPU-0"},
                                      "values": [[NOW - 4, "25"], [NOW - 2, "27"], [NOW, "29"]]}]
    scalar = run(api().query_range({"query": "time()", "start": str(NOW - 1), "end": str(NOW), "step": "0.5"}))
    assert scalar["data"]["result"] == [{"metric": {}, "values": [[NOW - 1, str(int(NOW - 1))],
                                                                  [NOW - 0.5, str(NOW - 0.5)], [NOW, str(int(NOW))]]}]


@pytest.mark.parametrize(("params", "status", "kind", "words"), [
    ({}, 400, "bad_data", "no expression found"),
    ({"query": "sum("}, 400, "bad_data", 'invalid parameter "query"'),
    ({"query": "up", "time": "yesterday"}, 400, "bad_data",
     'invalid parameter "time": Invalid time value for \'time\': cannot parse "yesterday" to a valid timestamp'),
    ({"query": "up", "time": "nan"}, 400, "bad_data", "valid timestamp"),
    ({"query": "up", "time": "1e307"}, 400, "bad_data", "valid timestamp"),  # beyond int64 milliseconds
    ({"query": "up", "time": "2026-12-05T03:00:00"}, 400, "bad_data", "valid timestamp"),  # no zone
    ({"query": "up", "time": "2026-12-05"}, 400, "bad_data", "valid timestamp"),
    ({"query": "up", "timeout": "soon"}, 400, "bad_data", 'invalid parameter "timeout"'),
    ({"query": "up", "timeout": "0"}, 503, "timeout", "query timed out in query queue"),
])
def test_instant_query_errors(params: dict[str, str], status: int, kind: str, words: str) -> None:
    with pytest.raises(QueryError) as err:
        run(api().query(params))
    assert (err.value.status, err.value.error_type) == (status, kind) and words in str(err.value)


@pytest.mark.parametrize(("params", "words"), [
    ({"query": "up", "end": "1", "step": "1"}, 'invalid parameter "start"'),
    ({"query": "up", "start": "2", "end": "1", "step": "1"}, "end timestamp must not be before start time"),
    ({"query": "up", "start": "1", "end": "2", "step": "0"}, "zero or negative query resolution step"),
    ({"query": "up", "start": "1", "end": "2", "step": "-1s"}, 'invalid parameter "step"'),
    ({"query": "up", "start": "0", "end": "100000", "step": "1"}, "exceeded maximum resolution of 11,000 points"),
    ({"query": "up[5m]", "start": "1", "end": "2", "step": "1"}, 'invalid expression type "range vector"'),
    ({"query": '"s"', "start": "1", "end": "2", "step": "1"}, 'invalid expression type "string"'),
])
def test_range_query_errors(params: dict[str, str], words: str) -> None:
    with pytest.raises(QueryError) as err:
        run(api().query_range(params))
    assert err.value.error_type == "bad_data" and words in str(err.value)


def test_a_query_loading_too_many_points_is_stopped() -> None:
    with pytest.raises(QueryError) as err:
        run(api(max_samples=1000).query_range({"query": "count_over_time(gpumon_gpu_temperature_celsius[30s:10ms])",
                                               "start": str(NOW - 29), "end": str(NOW), "step": "0.5"}))
    assert (err.value.status, err.value.error_type) == (422, "execution")
    assert "web.query.max_samples" in str(err.value)


@pytest.mark.parametrize("expr", [
    "max_over_time(vector(1)[2h:1ms])",  # a subquery that never reaches a selector
    "max_over_time(max_over_time(gpumon_gpu_info[1m])[2h:1ms])",
])
def test_a_heavy_query_times_out_on_its_thread_while_the_loop_goes_on(expr: str) -> None:
    q = api(timeout=0.3)
    ticks = 0

    async def poller() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async def both() -> tuple[QueryError, float]:
        task = asyncio.create_task(poller())
        started = time.monotonic()
        try:
            await q.query({"query": expr, "time": str(NOW)})
        except QueryError as exc:
            return exc, time.monotonic() - started
        finally:
            task.cancel()
        raise AssertionError("no timeout")
    err, took = asyncio.run(both())
    assert (err.status, err.error_type) == (503, "timeout") and took < 1.5
    assert ticks >= 10  # the event loop kept running while the query did


def test_a_subquery_counts_its_points() -> None:
    with pytest.raises(QueryError) as err:
        run(api(max_samples=1000).query({"query": "count_over_time(vector(1)[1h:1s])", "time": str(NOW)}))
    assert err.value.error_type == "execution" and "web.query.max_samples" in str(err.value)


def test_label_values_cannot_grow_without_bound() -> None:
    inner = 'gpumon_gpu_info{gpu="0"}'
    for _ in range(5):  # each level repeats the value 32 times: 32^5 characters without a bound
        inner = f'label_replace({inner}, "name", "{"$1" * 32}", "name", "(.*)")'
    with pytest.raises(QueryError) as err:
        run(api().query({"query": inner, "time": str(NOW)}))
    assert err.value.error_type == "execution" and "gpumon allows 65536" in str(err.value)


def test_a_query_whose_client_went_away_stops_and_frees_its_slot() -> None:
    q = api(concurrency=1, timeout=30)

    async def scenario() -> float:
        first = asyncio.create_task(q.query({"query": "max_over_time(vector(1)[1d:1ms])", "time": str(NOW)}))
        await asyncio.sleep(0.2)
        first.cancel()  # aiohttp cancels the handler when the client hangs up
        started = time.monotonic()
        answer = json.loads(await q.query({"query": "1", "time": str(NOW), "timeout": "5s"}))
        assert answer["data"]["result"][1] == "1"
        return time.monotonic() - started
    assert asyncio.run(scenario()) < 2.0  # the slot came back long before the first query's 30 s


def test_queries_beyond_the_concurrency_wait_no_longer_than_their_timeout() -> None:
    q = api(concurrency=1, timeout=0.05)

    async def held() -> QueryError:
        await q._running.acquire()  # another query holds the only slot
        try:
            await q.query({"query": "1"})
        except QueryError as exc:
            return exc
        raise AssertionError("ran without a slot")
    err = run(held())
    assert err.error_type == "timeout" and "waiting for other queries" in str(err)
    # With a slot free, even a very short timeout runs the query rather than "waiting".
    assert run(api(timeout=0.001).query({"query": "1"}))["status"] == "success"


def test_series_labels_and_label_values() -> None:
    q = api()
    series = run(asyncio.sleep(0, q.series({}, ['gpumon_gpu_info{gpu="1"}'])))
    assert series["data"] == [{"__name__": "gpumon_gpu_info", "gpu": "1", "name": "NVIDIA H200", "uuid": "GPU-1"}]
    with pytest.raises(QueryError, match="no match"):
        q.series({}, [])
    with pytest.raises(QueryError, match="not a series selector"):
        q.series({}, ["sum(gpumon_gpu_info)"])
    assert q.labels({}, [])["data"] == ["__name__", "gpu", "name", "uuid"]
    assert q.labels({}, ["gpumon_energy_joules_total"])["data"] == ["__name__", "gpu", "uuid"]
    assert q.label_values("__name__", {}, [])["data"] == ["gpumon_energy_joules_total", "gpumon_gpu_info",
                                                         "gpumon_gpu_temperature_celsius"]
    assert q.label_values("gpu", {}, ["gpumon_gpu_info"])["data"] == ["0", "1"]
    # A window before the history: nothing, and a warning that says how far back gpumon keeps.
    old = q.label_values("gpu", {"start": str(NOW - 7200), "end": str(NOW - 3600)}, [])
    assert old["data"] == [] and "600s of history" in old["warnings"][0]
    with pytest.raises(QueryError, match="invalid label name"):
        q.label_values("1bad", {}, [])


def test_a_range_before_the_history_warns() -> None:
    got = run(api().query_range({"query": "1", "start": str(NOW - 3600), "end": str(NOW), "step": "60"}))
    assert got["warnings"] and "store.retention" in got["warnings"][0]
    assert "warnings" not in run(api().query({"query": "1", "time": str(NOW)}))
    # Reaching back through a range, a subquery or an offset warns too; the 5-minute lookback does not.
    for expr in ("rate(gpumon_energy_joules_total[1h])", "max_over_time(gpumon_gpu_info[5m:1m] offset 10m)"):
        assert run(api().query({"query": expr, "time": str(NOW)}))["warnings"], expr
    assert "warnings" not in run(api().query({"query": "gpumon_gpu_info", "time": str(NOW)}))


async def test_over_http_get_and_the_post_form_grafana_sends() -> None:
    from gpumon.web import WebServer
    from tests.test_web import backend_of, make_sampler

    sampler, exporter = make_sampler()
    q = QueryApi(filled_store(), 600.0, clock=lambda: NOW)
    server = WebServer(sampler, exporter, backend_of(sampler), query=q)  # writes refused: not on loopback
    async with TestClient(TestServer(server.app())) as client:
        got = await client.get("/api/v1/query", params={"query": "count(gpumon_gpu_info)", "time": str(NOW)})
        assert got.status == 200 and (await got.json())["data"]["result"][0]["value"] == [NOW, "2"]
        form = await client.post("/api/v1/query_range", data={"query": "gpumon_gpu_info", "start": str(NOW - 1),
                                                              "end": str(NOW), "step": "1"})
        assert form.status == 200 and len((await form.json())["data"]["result"]) == 2
        series = await client.post("/api/v1/series", data=aiohttp.FormData([("match[]", "gpumon_gpu_info"),
                                                                           ("match[]", "gpumon_energy_joules_total")]))
        assert len((await series.json())["data"]) == 4
        bad = await client.get("/api/v1/query", params={"query": "sum("})
        assert bad.status == 400 and (await bad.json())["errorType"] == "bad_data"
        as_json = await client.post("/api/v1/query", json={"query": "1"})
        assert as_json.status == 400 and "form" in (await as_json.json())["error"]
        silence = await client.post("/api/v1/silences", json={})
        assert silence.status == 403  # the write guard still stands in front of the writes
        values = await client.get("/api/v1/label/uuid/values")
        assert (await values.json())["data"] == ["GPU-0", "GPU-1"]
        # A page elsewhere cannot make gpumon evaluate (an <img> or a form aimed at it).
        for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}, {"Origin": "null"}):
            refused = await client.get("/api/v1/query", params={"query": "1"}, headers=headers)
            assert refused.status == 403, headers
        same = await client.get("/api/v1/query", params={"query": "1"}, headers={"Sec-Fetch-Site": "same-origin"})
        assert same.status == 200


async def test_a_bug_in_the_evaluator_is_that_querys_error_not_a_500(monkeypatch: pytest.MonkeyPatch) -> None:
    from gpumon.rules.promql import Evaluator
    from gpumon.web import WebServer
    from tests.test_web import backend_of, make_sampler

    def broken(*args: Any, **kw: Any) -> Any:
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(Evaluator, "instant", broken)
    sampler, exporter = make_sampler()
    server = WebServer(sampler, exporter, backend_of(sampler), query=QueryApi(filled_store(), 600.0))
    async with TestClient(TestServer(server.app())) as client:
        got = await client.get("/api/v1/query", params={"query": "1"})
        assert got.status == 422 and (await got.json())["error"] == "internal error: ZeroDivisionError"


def test_at_start_and_end_are_the_ranges_edges() -> None:
    """In a range query `@ start()` and `@ end()` pin every step to the range's first and last instant."""
    for edge, value in (("start", "2500"), ("end", "2900")):
        got = run(api().query_range({"query": f'gpumon_energy_joules_total{{gpu="0"}} @ {edge}()',
                                     "start": str(NOW - 4), "end": str(NOW), "step": "2"}))
        assert [v for _, v in got["data"]["result"][0]["values"]] == [value] * 3
    instant = run(api().query({"query": 'gpumon_energy_joules_total{gpu="0"} @ start()', "time": str(NOW - 4)}))
    assert instant["data"]["result"][0]["value"][1] == "2500"


def test_metadata_from_the_catalog_as_an_openmetrics_scrape_names_it() -> None:
    everything = QueryApi.metadata({})["data"]
    assert everything["gpumon_energy_joules"] == [{"type": "counter", "help": "Energy consumed since the driver "
                                                   "was loaded.", "unit": "joules"}]
    assert everything["gpumon_gpu"][0]["type"] == "info" and "gpumon_gpu_info" not in everything
    assert list(QueryApi.metadata({"metric": "gpumon_power_draw_watts"})["data"]) == ["gpumon_power_draw_watts"]
    assert len(QueryApi.metadata({"limit": "2"})["data"]) == 2
    with pytest.raises(QueryError, match="limit must be a number"):
        QueryApi.metadata({"limit": "many"})


def test_a_cheap_query_stays_on_the_loop_and_a_heavy_one_moves_to_a_thread() -> None:
    """A thread would make every scrape wait for the GIL while the console's sub-millisecond queries run."""
    q = api()
    assert run(q.query({"query": "gpumon_gpu_info", "time": str(NOW)}))["status"] == "success"
    assert not q._threads._threads  # type: ignore[attr-defined]  # no thread was ever started
    heavy = run(q.query({"query": "count_over_time(vector(1)[1h:10ms])", "time": str(NOW)}))
    assert heavy["data"]["result"][0]["value"][1] == "360001"
    assert q._threads._threads  # type: ignore[attr-defined]
