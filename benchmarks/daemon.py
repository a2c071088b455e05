"""Exporters as running processes: CPU and peak RSS over a window, scrape latency, alert latency.

Works on any exporter started as a subprocess (gpumon, nvitop-exporter): CPU comes from
/proc/PID/stat (utime + stime of all threads), peak RSS from /proc/PID/status (VmHWM, the high-water
mark since start), scrape latency from aiohttp clients on loopback.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import signal
import socket
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.report import percentile

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class Process:
    """An exporter running in the background; its output goes to `log`."""

    name: str
    proc: subprocess.Popen[bytes]
    base_url: str
    log: Path

    @classmethod
    def start(cls, name: str, argv: Sequence[str], env: Mapping[str, str], base_url: str, ready_path: str,
              log: Path, timeout: float = 30.0) -> Process:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(list(argv), env=dict(env), stdout=out, stderr=subprocess.STDOUT)
        p = cls(name, proc, base_url, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} before it was ready; see {log}:\n"
                                   + log.read_text(errors="replace")[-2000:])
            try:
                if http_get(base_url + ready_path, timeout=1.0)[0] == 200:
                    return p
            except OSError:
                pass
            time.sleep(0.1)
        p.stop()
        raise RuntimeError(f"{name} was not ready within {timeout} s; see {log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cpu_seconds(self) -> float:
        """utime + stime of the process (all threads) so far."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "; fields[0] is state (field 3)
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def memory_kib(self) -> dict[str, int]:
        out = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
        return out


def footprint(p: Process, seconds: float, scrape_every: float = 15.0) -> dict[str, float]:
    """CPU (% of one core) and memory of p over `seconds`, scraped every `scrape_every` s as a
    Prometheus would (the scrape's cost is part of the footprint)."""
    c0, t0 = p.cpu_seconds(), time.monotonic()
    next_scrape = t0
    while (now := time.monotonic()) < t0 + seconds:
        if now >= next_scrape:
            http_get(p.base_url + "/metrics", timeout=5.0)
            next_scrape += scrape_every
        time.sleep(min(0.5, max(0.0, t0 + seconds - now)))
    cpu, wall = p.cpu_seconds() - c0, time.monotonic() - t0
    mem = p.memory_kib()
    return {"window_s": wall, "cpu_percent": 100.0 * cpu / wall,
            "rss_mib": mem.get("VmRSS", 0) / 1024, "peak_rss_mib": mem.get("VmHWM", 0) / 1024}


# What Prometheus 2.x sends with every scrape: it prefers OpenMetrics, and takes gzip.
PROMETHEUS_SCRAPE_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
              "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
}


async def _scrapers(url: str, concurrency: int, requests_each: int, every_s: float = 0.0
                    ) -> tuple[list[float], int, float]:
    """Each of `concurrency` clients scrapes `requests_each` times, back to back (every_s 0) or
    every `every_s` seconds from a random phase. The body is read but not decompressed: the
    client's CPU (it shares this machine's cores with the exporter) stays out of the figure."""
    latencies: list[float] = []
    size = 0

    async def one(session: aiohttp.ClientSession, phase: float = 0.0) -> None:
        nonlocal size
        start = time.perf_counter() + phase
        for k in range(requests_each):
            if every_s:
                await asyncio.sleep(max(0.0, start + k * every_s - time.perf_counter()))
            t0 = time.perf_counter()
            async with session.get(url) as r:
                body = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{url} answered {r.status}")
            latencies.append(time.perf_counter() - t0)
            size = len(body)

    import random

    rng = random.Random(8)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=PROMETHEUS_SCRAPE_HEADERS,
                                     auto_decompress=False) as session:
        k, requests_each = requests_each, 1
        await one(session)  # warm up: connection set up and first render
        requests_each = k
        latencies.clear()
        t0 = time.perf_counter()
        await asyncio.gather(*(one(session, rng.uniform(0, every_s)) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return latencies, size, wall


def scrape_latency(url: str, concurrency: int = 20, requests_each: int = 50, paced_s: float = 10.0
                   ) -> dict[str, float]:
    """p50/p99 of GET url (keep-alive, OpenMetrics and gzip as Prometheus asks): `concurrency` clients
    scraping back to back (the worst case: every request queues behind the others), the same
    clients each scraping once a second from random phases for `paced_s` (a fleet of aggressive
    Prometheus servers), and one client alone (the service time)."""
    together, size, wall = asyncio.run(_scrapers(url, concurrency, requests_each))
    paced, _, _ = asyncio.run(_scrapers(url, concurrency, max(1, int(paced_s)), every_s=1.0))
    alone, _, _ = asyncio.run(_scrapers(url, 1, requests_each))
    return {"concurrency": concurrency, "requests": len(together), "body_bytes_gzip": size,
            "requests_per_s": len(together) / wall,
            "p50_ms": statistics.median(together) * 1e3, "p99_ms": percentile(together, 0.99) * 1e3,
            "max_ms": max(together) * 1e3,
            "paced_requests": len(paced), "paced_p50_ms": statistics.median(paced) * 1e3,
            "paced_p99_ms": percentile(paced, 0.99) * 1e3,
            "alone_p50_ms": statistics.median(alone) * 1e3, "alone_p99_ms": percentile(alone, 0.99) * 1e3}


class Webhook:
    """A local webhook receiver (Alertmanager v4 JSON) on loopback that notes when each firing
    alert first arrived."""

    def __init__(self) -> None:
        self.received: dict[tuple[str, str], float] = {}  # (alertname, gpu) -> Unix time
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                now = time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(200)
                self.end_headers()
                try:
                    alerts = json.loads(body).get("alerts", [])
                except ValueError:
                    return
                for a in alerts:
                    if a.get("status") == "firing":
                        key = (a["labels"].get("alertname", ""), a["labels"].get("gpu", ""))
                        outer.received.setdefault(key, now)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def alert_latency(p: Process, alertname: str, gpu: str, metric_line_prefix: str, threshold: float,
                  webhook: Webhook | None = None, timeout: float = 60.0, period: float = 0.01) -> dict[str, Any]:
    """Watch /metrics and /api/v1/alerts every `period` s. Returns when the condition (a metric line
    above threshold) first showed in /metrics, when the alert became active (its activeAt), when it
    first showed as firing in /api/v1/alerts and when the webhook received it (all Unix times), and
    the differences."""
    seen: float | None = None
    result: dict[str, Any] | None = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = time.time()
        if seen is None:
            _, body = http_get(p.base_url + "/metrics")
            for line in body.decode().splitlines():
                if line.startswith(metric_line_prefix) and float(line.rsplit(" ", 1)[1]) > threshold:
                    seen = now
                    break
        _, body = http_get(p.base_url + "/api/v1/alerts")
        for a in json.loads(body)["data"]["alerts"]:
            labels = a["labels"]
            mine = labels.get("alertname") == alertname and labels.get("gpu") == gpu
            if mine and a["state"] == "firing" and result is None:
                fired = time.time()
                if seen is None:  # the condition showed and the alert fired within one watch period
                    seen = now
                active = datetime.fromisoformat(a["activeAt"].replace("Z", "+00:00")).timestamp()
                result = {"condition_seen": seen, "active_at": active, "firing_seen": fired,
                          "seen_to_firing_ms": (fired - seen) * 1e3,
                          "active_to_firing_seen_ms": (fired - active) * 1e3}
        if result is not None:
            hook = webhook.received.get((alertname, gpu)) if webhook else None
            if webhook is None or hook is not None:
                if hook is not None:
                    result["webhook_received"] = hook
                    result["active_to_webhook_ms"] = (hook - result["active_at"]) * 1e3
                return result
        time.sleep(period)
    if result is not None:
        result["webhook_received"] = None  # fired, but the webhook never heard of it
        return result
    raise RuntimeError(f"{alertname} did not fire within {timeout} s")
