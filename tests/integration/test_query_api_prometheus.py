"""gpumon's query API against a real Prometheus on the same data: Prometheus scrapes a replaying gpumon,
and the same queries go to both. The answers must have Prometheus's shapes, and where the data is the
same on both sides (static series, counts, scalars, strings) the same values; errors the same type and
status. Prometheus's series carry its target labels (instance, job), which gpumon's do not."""

from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import Gpumon, Prometheus, http_get

pytestmark = pytest.mark.integration
TARGET = {"instance", "job"}


def get(base: str, path: str, **params: str) -> tuple[int, dict[str, Any]]:
    status, body = http_get(f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}")
    return status, json.loads(body)


def without_target(answer: dict[str, Any]) -> dict[str, Any]:
    """The answer with Prometheus's target labels dropped and results sorted the same way."""
    data = answer.get("data")
    if isinstance(data, dict) and isinstance(data.get("result"), list) and data["resultType"] in ("vector", "matrix"):
        for r in data["result"]:
            r["metric"] = {k: v for k, v in r["metric"].items() if k not in TARGET}
        data["result"].sort(key=lambda r: sorted(r["metric"].items()))
    return answer


def test_the_query_api_answers_as_prometheus_does(tmp_path: Path) -> None:
    with Gpumon(tmp_path, "--fast-interval", "500ms") as gpumon:
        scrape = f"""
global: {{scrape_interval: 500ms, scrape_timeout: 400ms}}
scrape_configs:
  - job_name: gpumon
    static_configs: [{{targets: ["127.0.0.1:{gpumon.port}"]}}]
"""
        with Prometheus(tmp_path, scrape) as prom:
            deadline = time.time() + 20
            while time.time() < deadline:  # 4 s of scrapes
                _, up = get(prom.url, "query", query="count_over_time(gpumon_memory_total_bytes[1m])")
                if up["data"]["result"] and float(up["data"]["result"][0]["value"][1]) >= 8:
                    break
                time.sleep(0.3)
            at = f"{time.time() - 1:.3f}"
            same_values = [
                "gpumon_memory_total_bytes",
                'gpumon_temperature_threshold_celsius{threshold=~"slowdown|shutdown"}',
                "count by (threshold) (gpumon_temperature_threshold_celsius)",
                "sum without (uuid) (gpumon_memory_total_bytes) / 2^30",
                "scalar(count(gpumon_memory_total_bytes))",
                "vector(1) > bool 0",
                '"a string"',
                "2 * 3.5",
                "-gpumon_memory_total_bytes",
                "absent(no_such_metric)",
                'label_replace(gpumon_memory_total_bytes, "x", "$1", "gpu", "(.*)")',
            ]
            for query in same_values:
                ours = get(gpumon.url, "query", query=query, time=at)
                theirs = get(prom.url, "query", query=query, time=at)
                assert ours[0] == theirs[0] == 200, (query, ours, theirs)
                assert without_target(ours[1]) == without_target(theirs[1]), query

            # Changing series: the same shapes and series, values from each side's own samples.
            for query in ("gpumon_gpu_temperature_celsius", "avg_over_time(gpumon_power_draw_watts[1m])"):
                ours, theirs = (without_target(get(base, "query", query=query, time=at)[1])
                                for base in (gpumon.url, prom.url))
                assert ours["data"]["resultType"] == theirs["data"]["resultType"] == "vector"
                assert [r["metric"] for r in ours["data"]["result"]] == [r["metric"] for r in theirs["data"]["result"]]
            start, end = f"{float(at) - 1:.3f}", at  # Prometheus has scraped 2 s or more by then
            ours, theirs = (without_target(get(base, "query_range", query="gpumon_memory_total_bytes", start=start,
                                               end=end, step="0.5")[1]) for base in (gpumon.url, prom.url))
            assert ours == theirs

            errors = [
                ("query", {"query": "sum("}),
                ("query", {"query": "up", "time": "not-a-time"}),
                ("query_range", {"query": "up", "start": "0", "end": "100000", "step": "1"}),
                ("query_range", {"query": "up", "start": "10", "end": "1", "step": "1"}),
                ("query_range", {"query": "up", "start": "1", "end": "10", "step": "0"}),
                ("query_range", {"query": "up[1m]", "start": "1", "end": "10", "step": "1"}),
                ("series", {}),
            ]
            for path, params in errors:
                (ours_status, ours), (theirs_status, theirs) = (get(base, path, **params)
                                                                for base in (gpumon.url, prom.url))
                assert ours_status == theirs_status, (path, params, ours, theirs)
                assert ours["status"] == theirs["status"] == "error" and ours["errorType"] == theirs["errorType"]
                if path == "query_range" and params["query"] != "up[1m]":
                    assert ours["error"] == theirs["error"]

            match = {"match[]": "gpumon_temperature_threshold_celsius", "start": start, "end": end}
            ours, theirs = (get(base, "series", **match)[1] for base in (gpumon.url, prom.url))
            assert ours["data"] == [{k: v for k, v in s.items() if k not in TARGET} for s in theirs["data"]]
            ours, theirs = (get(base, "label/threshold/values", **match)[1] for base in (gpumon.url, prom.url))
            assert ours == theirs
            ours, theirs = (get(base, "labels", **match)[1] for base in (gpumon.url, prom.url))
            assert ours["data"] == [n for n in theirs["data"] if n not in TARGET]
            # Metadata: gpumon's catalog says what a Prometheus reads from the exposition's HELP and TYPE.
            for metric in ("gpumon_gpu_temperature_celsius", "gpumon_energy_joules", "gpumon_gpu"):
                ours, theirs = (get(base, "metadata", metric=metric)[1] for base in (gpumon.url, prom.url))
                assert ours == theirs, metric
            assert len(get(gpumon.url, "metadata", limit="3")[1]["data"]) == 3
