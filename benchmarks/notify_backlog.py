"""A notification backlog for a dead receiver must not slow polling (issue: notifications, the
benchmark item "1,000 queued notifications to a dead receiver leave poll duration within 10 % of
normal").

    python -m benchmarks.notify_backlog [--notifications 1000] [--window 45] [--repeats 1] [--quick]

Runs the real daemon (`gpumon run --backend nvml` on the fake libnvidia-ml.so.1 with 8 GPUs and
recorded latencies, exactly as the suite's footprint item starts it: 1 s fast polling, the bundled
rules) with one webhook receiver whose URL is a closed loopback port, twice:

- *baseline*: the outbox is empty;
- *backlog*: `notifications` Alertmanager v4 payloads are queued for that receiver before start,
  through gpumon's own `Outbox.put` into `STATE_DIR/outbox.sqlite` (the same rows the notifier writes
  when it flushes a group; firing enough alerts through rules to queue 1,000 would take hours of
  group_interval).

During each window /metrics is read every `scrape_every_s`: `gpumon_poll_duration_seconds{tier="fast"}`
(a gauge: the wall time of the last poll round) is recorded once per round, the round being told
apart by the gauge and `gpumon_last_poll_success_timestamp_seconds` changing; the notifier's own
`gpumon_notification_queue_length{receiver}` shows the backlog really is there. CPU comes from
/proc/PID/stat. The daemon's "will retry" log lines tell which rounds were in flight while a delivery
was retried (the retry's SQLite work runs on the event loop that ends the round). Reports baseline
against backlog and their ratio (budget <= 1.10: mean round duration). Never fails on a number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import daemon, environment
from benchmarks.report import percentile, progress
from gpumon.notify.outbox import Outbox
from gpumon.notify.payload import AlertEvent, webhook_payload
from gpumon.notify.service import OUTBOX_FILE

RECEIVER = "dead"
BUDGET_RATIO = 1.10
POLL_DURATION = 'gpumon_poll_duration_seconds{tier="fast"}'
POLL_SUCCESS = 'gpumon_last_poll_success_timestamp_seconds{tier="fast"}'
QUEUE_LENGTH = f'gpumon_notification_queue_length{{receiver="{RECEIVER}"}}'
RETRIED = f'gpumon_notifications_retried_total{{receiver="{RECEIVER}"}}'

CONFIG = """notify:
  receivers:
    - name: {receiver}
      webhook:
        url: {url}
  route:
    receiver: {receiver}
    group_by: [alertname, gpu]
"""


@dataclass
class Settings:
    notifications: int = 1000
    gpus: int = 8
    window_s: float = 45.0  # measured seconds per run
    warmup_s: float = 5.0  # past start-up (imports, first polls, first render) before measuring
    scrape_every_s: float = 0.4  # < the 1 s poll interval, so every round's gauge value is seen
    rule_evaluation_interval: str = "10s"  # the bundled rules' default; the queue-length metric updates with it
    repeats: int = 1  # pairs of runs; every other pair runs backlog first, so drift on a shared VM cancels


def dead_url() -> str:
    """A loopback URL nothing listens on: connections are refused at once, as for a receiver that is down.
    (free_port binds and releases a port; nothing else binds it in the seconds this runs.)"""
    return f"http://127.0.0.1:{daemon.free_port()}/hook"


def fill_outbox(state: Path, n: int) -> None:
    """Queue n realistic notifications (one firing GpuMemoryHigh alert per group, 8 GPUs round robin)
    for RECEIVER, through gpumon's own outbox, as the notifier's flush() would have."""
    outbox = Outbox(state / OUTBOX_FILE)
    try:
        now = time.time()
        for i in range(n):
            gpu = str(i % 8)
            labels = {"alertname": "GpuMemoryHigh", "gpu": gpu, "uuid": f"GPU-bench-{gpu}",
                      "severity": "warning", "instance": "bench"}
            event = AlertEvent(labels, {"summary": f"GPU {gpu} memory above 90 % (notification {i})"},
                               now - 60, None)
            group = {"alertname": "GpuMemoryHigh", "gpu": gpu}
            body = webhook_payload(RECEIVER, f'{{}}:{{alertname="GpuMemoryHigh", gpu="{gpu}"}}', group,
                                   [event], "http://bench:9948")
            # Distinct, increasing creation times keep the outbox's per-receiver order as in real use.
            outbox.put(RECEIVER, json.dumps(body).encode(), now - n + i)
    finally:
        outbox.close()


def _values(body: str, names: tuple[str, ...]) -> dict[str, float]:
    """The values of exactly these series (name{labels} as rendered) in an exposition."""
    out: dict[str, float] = {}
    for line in body.splitlines():
        key, _, value = line.rpartition(" ")
        if key in names:
            out[key] = float(value)
    return out


def _summary(polls_s: list[float]) -> dict[str, float]:
    ms = [v * 1e3 for v in polls_s]
    if not ms:
        return {"polls": 0}
    return {"polls": len(ms), "mean_ms": statistics.fmean(ms), "median_ms": statistics.median(ms),
            "p90_ms": percentile(ms, 0.9), "p99_ms": percentile(ms, 0.99), "max_ms": max(ms)}


def measure(p: daemon.Process, s: Settings) -> dict[str, Any]:
    """Poll durations (one per round), CPU and the receiver's queue over one window."""
    names = (POLL_DURATION, POLL_SUCCESS, QUEUE_LENGTH, RETRIED)
    rounds: list[tuple[float, float]] = []  # (Unix time the round ended, its duration in s)
    queue: list[float] = []
    retried: list[float] = []
    last: tuple[float, float] | None = None
    c0, t0 = p.cpu_seconds(), time.monotonic()
    while (now := time.monotonic()) < t0 + s.window_s:
        status, body = daemon.http_get(p.base_url + "/metrics", timeout=5.0)
        v = _values(body.decode(), names) if status == 200 else {}
        if POLL_DURATION in v:
            pair = (v.get(POLL_SUCCESS, 0.0), v[POLL_DURATION])
            if last is not None and pair != last:  # a new round (the first one seen may predate t0)
                rounds.append(pair)
            last = pair
        if QUEUE_LENGTH in v:
            queue.append(v[QUEUE_LENGTH])
        if RETRIED in v:
            retried.append(v[RETRIED])
        time.sleep(min(s.scrape_every_s, max(0.0, t0 + s.window_s - now)))
    cpu, wall = p.cpu_seconds() - c0, time.monotonic() - t0
    return {"window_s": wall, "cpu_percent": 100.0 * cpu / wall, "poll_s": [d for _, d in rounds],
            "rounds": rounds,
            "queue_min": min(queue, default=None), "queue_max": max(queue, default=None),
            "retries_in_window": (retried[-1] - retried[0]) if retried else None}


def _retry_times(log: Path) -> list[float]:
    """Unix times of the daemon's "will retry" log lines (JSON logs, ISO timestamps): each is logged
    right after the failed attempt and the outbox's retry() UPDATE, both on the event loop."""
    from datetime import datetime

    times = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "notification delivery failed; will retry":
            times.append(datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp())
    return times


def _attribute_retries(result: dict[str, Any], retries: list[float], slack_s: float = 0.02) -> None:
    """Which poll rounds were in flight when a delivery was retried (the retry's work then holds up
    the event loop that ends the round): their durations, and the poll durations without them."""
    rounds: list[tuple[float, float]] = result.pop("rounds")
    hit = [d for end, d in rounds if any(end - d - slack_s <= t <= end + slack_s for t in retries)]
    rest = [d for end, d in rounds if not any(end - d - slack_s <= t <= end + slack_s for t in retries)]
    start, stop = (rounds[0][0] - rounds[0][1], rounds[-1][0]) if rounds else (0.0, 0.0)
    result["retries_logged_in_window"] = sum(start <= t <= stop for t in retries)
    result["rounds_during_retry_ms"] = [round(d * 1e3, 3) for d in hit]
    result["poll_s_without_retry_rounds"] = rest


def run_once(library: Path, s: Settings, work: Path, name: str, backlog: int) -> dict[str, Any]:
    state = work / f"state-{name}"
    if backlog:
        t = time.perf_counter()
        fill_outbox(state, backlog)
        fill_s = time.perf_counter() - t
    config = work / f"{name}.yml"
    config.write_text(CONFIG.format(receiver=RECEIVER, url=dead_url()))
    port = daemon.free_port()
    argv = [*environment.gpumon_argv(port, state), "--config", str(config),
            "--rule-evaluation-interval", s.rule_evaluation_interval]
    env = environment.nvml_env(library, gpus=s.gpus, latency=1)
    p = daemon.Process.start(f"gpumon-{name}", argv, env, f"http://127.0.0.1:{port}", "/-/ready",
                             work / f"gpumon-{name}.log")
    try:
        time.sleep(s.warmup_s)
        result = measure(p, s)
    finally:
        p.stop()
    result["queued_before_start"] = backlog
    _attribute_retries(result, _retry_times(p.log))
    if backlog:
        result["fill_s"] = fill_s
    return result


def run(s: Settings, work: Path, library: Path | None = None) -> dict[str, Any]:
    """Baseline and backlog runs (`repeats` pairs); `library` is the fake NVML (built here if None)."""
    machine = environment.machine()  # load average at the start: the VM is shared
    library = library or environment.fake_library(work)
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "backlog": []}
    for k in range(s.repeats):
        order = ["baseline", "backlog"] if k % 2 == 0 else ["backlog", "baseline"]
        for name in order:
            r = run_once(library, s, work, f"{name}-{k}", s.notifications if name == "backlog" else 0)
            runs[name].append(r)
            progress(f"{name} {k}: {_summary(r['poll_s'])}, CPU {r['cpu_percent']:.2f} %, "
                      f"queue {r['queue_min']}..{r['queue_max']}")
    machine["loadavg_end"] = os.getloadavg()
    out: dict[str, Any] = {"machine": machine, "settings": asdict(s), "budget_ratio": BUDGET_RATIO, "runs": runs}
    for name, rs in runs.items():
        out[name] = _summary([v for r in rs for v in r["poll_s"]])
        out[name]["cpu_percent"] = statistics.fmean(r["cpu_percent"] for r in rs)
        out[name]["retries_in_window"] = sum(r["retries_logged_in_window"] for r in rs)
        out[name]["rounds_during_retry_ms"] = [d for r in rs for d in r["rounds_during_retry_ms"]]
        out[name]["without_retry_rounds"] = _summary([v for r in rs for v in r["poll_s_without_retry_rounds"]])
    b, q = out["baseline"], out["backlog"]
    queue_mins = [r["queue_min"] for r in runs["backlog"]]
    # Present in every backlog run, for the whole window, as the notifier itself counts it.
    out["backlog_present"] = all(m is not None and m >= s.notifications for m in queue_mins)
    out["backlog_queue_min"] = min((m for m in queue_mins if m is not None), default=None)
    if b["polls"] and q["polls"]:
        out["ratio_mean"] = q["mean_ms"] / b["mean_ms"]
        out["ratio_median"] = q["median_ms"] / b["median_ms"]
        out["ratio_p90"] = q["p90_ms"] / b["p90_ms"]
        out["met"] = out["ratio_mean"] <= BUDGET_RATIO
        if q["without_retry_rounds"]["polls"]:
            # What the backlog costs apart from the retries themselves (the queue's mere presence).
            out["ratio_mean_without_retry_rounds"] = (q["without_retry_rounds"]["mean_ms"]
                                                      / b["without_retry_rounds"]["mean_ms"])
    out["cpu_ratio"] = q["cpu_percent"] / max(b["cpu_percent"], 1e-9)
    return out


def table_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Rows for the suite's table: item, measured, budget, verdict."""
    b, q, n = r["baseline"], r["backlog"], r["settings"]["notifications"]
    if not b["polls"] or not q["polls"]:
        return [("notify backlog: poll duration", "no poll rounds seen", "", "n/a")]
    verdict = "n/a" if not r["backlog_present"] else ("met" if r["met"] else "NOT MET")
    return [
        (f"notify backlog: fast poll round, {n} queued to a dead receiver vs none (mean; median; p90)",
         f"{q['mean_ms']:.2f} vs {b['mean_ms']:.2f} ms ({r['ratio_mean']:.3f}x); "
         f"{q['median_ms']:.2f} vs {b['median_ms']:.2f} ms ({r['ratio_median']:.3f}x); "
         f"{q['p90_ms']:.2f} vs {b['p90_ms']:.2f} ms ({r['ratio_p90']:.3f}x); {q['polls']}/{b['polls']} rounds",
         f"<= {BUDGET_RATIO:.2f}x", verdict),
        ("notify backlog: CPU, backlog vs none; queue length seen during the window",
         f"{q['cpu_percent']:.2f} vs {b['cpu_percent']:.2f} % of a core ({r['cpu_ratio']:.2f}x); "
         f"min queue {r['backlog_queue_min']}", "", ""),
        ("notify backlog: retries in the window; rounds in flight during one; mean without those rounds",
         f"{q['retries_in_window']}; {', '.join(f'{d:.1f}' for d in q['rounds_during_retry_ms']) or 'none'} ms; "
         + (f"{q['without_retry_rounds']['mean_ms']:.2f} vs {b['without_retry_rounds']['mean_ms']:.2f} ms "
            f"({r['ratio_mean_without_retry_rounds']:.3f}x)" if "ratio_mean_without_retry_rounds" in r else "n/a"),
         "", ""),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.notify_backlog",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--notifications", type=int, default=Settings.notifications)
    parser.add_argument("--window", type=float, default=Settings.window_s, help="measured seconds per run")
    parser.add_argument("--repeats", type=int, default=Settings.repeats, help="baseline/backlog pairs")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds not minutes (smoke test)")
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    s = Settings(notifications=args.notifications, window_s=args.window, repeats=args.repeats)
    if args.quick:
        s = Settings(notifications=20, gpus=2, window_s=2.0, warmup_s=1.0, rule_evaluation_interval="1s")
    with tempfile.TemporaryDirectory(prefix="gpumon-bench-backlog-") as tmp:
        result = run(s, Path(tmp))
    for rs in result["runs"].values():
        for r in rs:
            r["poll_ms"] = [round(v * 1e3, 3) for v in r.pop("poll_s")]  # readable JSON
            r.pop("poll_s_without_retry_rounds")  # poll_ms less rounds_during_retry_ms
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    rows = table_rows(result)
    print("\n" + "\n".join(" | ".join(row) for row in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
