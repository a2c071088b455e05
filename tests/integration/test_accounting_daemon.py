"""Accounting in the running daemon: counters that survive kill -9 (nothing double counted, at most one
poll lost), and `gpumon report` over this host's state file agreeing with `gpumon report --prometheus`
against a real Prometheus that scraped the same daemon."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import Gpumon, Prometheus, http_get

pytestmark = pytest.mark.integration

INTERVAL = 0.25  # the fast poll
SCRAPE = "500ms"


def gpu_seconds(g: Gpumon) -> float:
    _, body = g.get("/metrics")
    return sum(s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples
               if s.name == "gpumon_gpu_seconds_total")


def stored(state: Path) -> float:
    with sqlite3.connect(f"file:{state / 'accounting.sqlite'}?mode=ro", uri=True) as db:
        return float(db.execute("SELECT sum(seconds) FROM totals WHERE owner = ''").fetchone()[0] or 0.0)


def test_counters_survive_kill_9(tmp_path: Path) -> None:
    args = ("--fast-interval", f"{INTERVAL}s")
    with Gpumon(tmp_path, *args) as g:
        time.sleep(2.0)
        exported, at = gpu_seconds(g), time.monotonic()
        time.sleep(1.0)
        assert g.proc is not None
        killed = time.monotonic()
        g.proc.send_signal(signal.SIGKILL)  # no goodbye: what is in the state file is all there is
        g.proc.wait()
    kept = stored(tmp_path / "state")
    # Everything exported before, and the second after, less at most the poll in flight; never more.
    assert exported <= kept <= exported + (killed - at) + INTERVAL
    assert kept >= exported + (killed - at) - 2 * INTERVAL
    with Gpumon(tmp_path, *args) as g:
        restarted = time.monotonic()
        again = gpu_seconds(g)
        since = time.monotonic() - restarted
    assert kept <= again <= kept + since + 2 * INTERVAL  # continued from the file, the downtime not counted


def scraping(prom: Prometheus) -> None:
    deadline = time.monotonic() + 30
    while True:
        status, body = http_get(f"{prom.url}/api/v1/query?query=gpumon_gpu_seconds_total")
        if status == 200 and json.loads(body)["data"]["result"]:
            return
        assert time.monotonic() < deadline, "Prometheus never scraped gpumon"
        time.sleep(0.2)


def report(*args: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-m", "gpumon", "report", "--format", "json", *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_the_local_report_agrees_with_prometheus(tmp_path: Path) -> None:
    config = tmp_path / "gpumon.yaml"
    config.write_text(f"accounting: {{bucket: 500ms}}\nstate_dir: {tmp_path / 'state'}\n")
    with Gpumon(tmp_path, "--config", str(config), "--fast-interval", f"{INTERVAL}s",
                backend="replay:demo,loop,gpus=2,speed=4") as g:
        prom = Prometheus(tmp_path, f"""
global: {{scrape_interval: {SCRAPE}, scrape_timeout: {SCRAPE}}}
scrape_configs:
  - job_name: gpumon
    static_configs: [{{targets: ["127.0.0.1:{g.port}"]}}]
""")
        with prom:
            scraping(prom)  # the period starts once Prometheus has the counters, or it has nothing to go on
            time.sleep(1.0)
            start = float(int(time.time()))
            time.sleep(12.0)  # the demo at 4x: idle, compute, copies and full memory in the period
            end = float(int(time.time()))
            time.sleep(2.0)  # Prometheus has scraped past the end
            period = ["--from", str(start), "--to", str(end), "--by", "gpu"]
            local = report("--config", str(config), *period)
            fleet = report("--prometheus", prom.url, *period)
    local_total, fleet_total = local["total"], fleet["total"]
    assert isinstance(local_total, dict) and isinstance(fleet_total, dict)
    held = float(local_total["held_h"]) * 3600
    assert held + float(local_total["idle_free_h"]) * 3600 == pytest.approx(2 * (end - start), abs=1.0)
    for column in ("active_h", "idle_held_h", "idle_free_h", "held_h"):
        # Within one scrape interval per GPU (Prometheus extrapolates increase() to the period's edges).
        got, want = float(fleet_total[column]) * 3600, float(local_total[column]) * 3600
        assert got == pytest.approx(want, abs=2 * 0.5), column
    assert fleet["waste_share"] == pytest.approx(local["waste_share"], abs=0.05)
    assert len(fleet["groups"]) == len(local["groups"]) == 2  # type: ignore[arg-type]
