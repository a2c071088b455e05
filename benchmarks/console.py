"""What one open console costs the daemon: gpumon replaying the H200 capture on 8 GPUs (1 s polls),
its CPU (% of one core, /proc/PID/stat) and the latency of a scrape of /metrics four times a second, first
with no browser, then with Debian's headless chromium showing the console (which queries the API every
poll), then without again. The browser gets a CPU of its own, the daemon and the scraper another: on a GPU
host nobody runs the browser, and its rendering must not pass for the daemon's latency.

    python -m benchmarks.console [--window 30] [--gpus 8]

Prints JSON. Needs chromium and chromedriver (`make test` installs them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.daemon import Process, free_port, http_get
from benchmarks.report import percentile

SCRAPE_EVERY_S = 0.25  # four scrapes a second: enough of them in a window for a p99


def window(p: Process, seconds: float) -> dict[str, float]:
    """CPU of p over `seconds`, scraping /metrics every SCRAPE_EVERY_S meanwhile."""
    latencies = []
    c0, t0 = p.cpu_seconds(), time.monotonic()
    while time.monotonic() < t0 + seconds:
        s = time.perf_counter()
        http_get(p.base_url + "/metrics", timeout=5.0)
        latencies.append(time.perf_counter() - s)
        time.sleep(max(0.0, SCRAPE_EVERY_S - (time.perf_counter() - s)))
    wall = time.monotonic() - t0
    return {"cpu_percent": 100.0 * (p.cpu_seconds() - c0) / wall, "scrapes": len(latencies),
            "scrape_p50_ms": statistics.median(latencies) * 1e3, "scrape_p99_ms": percentile(latencies, 0.99) * 1e3,
            "scrape_max_ms": max(latencies) * 1e3}


def measure(seconds: float, gpus: int) -> dict[str, Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # The browser belongs on the operator's machine, not the GPU host: here it gets a CPU of its own, the
    # daemon and the scraper the other, so its rendering does not pass for the daemon's latency.
    cpus = sorted(os.sched_getaffinity(0))
    daemon_cpus, browser_cpus = ({cpus[0]}, set(cpus[1:])) if len(cpus) > 1 else (set(cpus), set(cpus))
    os.sched_setaffinity(0, daemon_cpus)
    port = free_port()
    with tempfile.TemporaryDirectory() as state:
        p = Process.start("gpumon", [sys.executable, "-m", "gpumon", "run", "--backend",
                                     f"replay:demo,loop,gpus={gpus}", "--listen", f"127.0.0.1:{port}",
                                     "--state-dir", state], {"PATH": "/usr/bin:/bin"}, f"http://127.0.0.1:{port}",
                          "/-/ready", Path(state) / "gpumon.log")
        try:
            time.sleep(5.0)  # past start-up
            before = window(p, seconds)
            options = webdriver.ChromeOptions()
            options.binary_location = shutil.which("chromium") or "chromium"
            for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--window-size=1400,1000"):
                options.add_argument(arg)
            os.sched_setaffinity(0, browser_cpus)  # chromedriver and chromium inherit it
            try:
                driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"),
                                          options=options)
            finally:
                os.sched_setaffinity(0, daemon_cpus)
            try:
                driver.get(p.base_url + "/")
                time.sleep(5.0)  # the first load draws 5 minutes of history; then one query per poll
                with_console = window(p, seconds)
                refreshes = int(driver.execute_script("return document.getElementById('console').dataset.refreshed"))
            finally:
                driver.quit()
            after = window(p, seconds)
        finally:
            p.stop()
    idle = (before["cpu_percent"] + after["cpu_percent"]) / 2
    return {"gpus": gpus, "window_s": seconds, "daemon_cpus": sorted(daemon_cpus),
            "browser_cpus": sorted(browser_cpus), "without": before, "with_console": with_console, "after": after,
            "console_refreshes": refreshes, "added_cpu_percent": with_console["cpu_percent"] - idle}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--gpus", type=int, default=8)
    args = parser.parse_args()
    print(json.dumps(measure(args.window, args.gpus), indent=2))


if __name__ == "__main__":
    main()
