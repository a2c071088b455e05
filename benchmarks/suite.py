"""`make bench` / `make bench-gpu`: what gpumon costs, against NVML's floor and nvitop-exporter.

    python -m benchmarks [--gpu] [--quick] [--out build/bench/results.json] [--no-nvitop]

Without --gpu everything runs on the fake libnvidia-ml.so.1 (tools/fakenvml, built into the
run's temporary directory) replaying the bundled H200 capture with its recorded call latencies
(FAKENVML_LATENCY=1), fanned out to 1, 8 and 16 GPUs. With --gpu it runs items 1-4 on the real NVML
of this machine (all its GPUs) and stops with a clear message if there is none. Prints a table with
the budgets of issue 8 and writes every number as JSON. Reports; never fails on a number.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gpumon
from benchmarks import accounting, daemon, doctor, floor, interconnect, mig_capture, notify_backlog
from benchmarks.environment import fake_library, gpumon_argv, machine, nvml_env, real_nvml_present
from benchmarks.report import progress
from gpumon.sources.replay import DEMO_CAPTURE

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "bench"
NVITOP_VENV = BUILD / "nvitop-venv"
NVIDIA_SMI_QUERY_MS = 117.0  # ../shared/fixtures/nvml/README.md: `nvidia-smi --query-gpu` (185 fields) per run, H200
NVIDIA_SMI_SOURCE = "shared/fixtures/nvml/README.md (H200, driver 580.159.04, all 185 fields)"
PROCS_CAPTURE = ROOT / "tests" / "fixtures" / "procs"  # data only: the synthetic shared-GPU capture
PROCS_BUSY_AT = 12.0  # trace second inside its `compute` phase: 20 compute processes per GPU
MEMFULL_FROM_S = 27.0  # trace second at which GPU 0's memory first exceeds 90% (checked by the smoke test)
ALERT_RULES = """groups:
  - name: bench
    interval: 1s
    rules:
      - alert: BenchMemoryHigh
        expr: gpumon_memory_used_bytes / gpumon_memory_total_bytes > 0.9
"""

ALERT_CONFIG = """notify:
  receivers:
    - name: bench
      webhook:
        url: {url}
  route:
    receiver: bench
    group_by: [alertname, gpu]
    group_wait: 1ms
"""

BUDGETS = {  # issue 8
    "poll_vs_floor": 1.2, "python_overhead_us": 150.0, "cpu_percent_per_gpu": 0.3, "rss_mb_8gpus": 60.0,
    "scrape_p99_ms": 5.0, "alert_ms_after_firing": 200.0, "accounting_us_per_gpu": 20.0,
    "doctor_us_per_gpu": 1000.0,
}


@dataclass
class Settings:
    gpu: bool = False  # real NVML instead of the fake library
    sizes: tuple[int, ...] = (1, 8, 16)
    rounds: int = 30
    spacing_s: float = 0.2
    daemon_gpus: int = 8
    footprint_s: float = 60.0
    scrape_each: int = 50
    scrapers: int = 20
    paced_s: float = 10.0  # seconds of the once-a-second-per-scraper run
    nvitop: bool = True
    alert: bool = True
    alert_lead_s: float = 8.0  # the replay reaches memory > 90% on GPU 0 this long after start
    interconnect_rounds: int = 500  # InfiniBand polls over 8 fake NICs (benchmarks.interconnect)
    accounting_rounds: int = 300  # accounting steps over daemon_gpus GPUs (benchmarks.accounting)
    doctor_rounds: int = 200  # slow rounds of the doctor's checks over daemon_gpus GPUs (benchmarks.doctor)


def run_poll(library: Path | None, gpus: int, latency: int, s: Settings, mode: str, bare: bool = False,
             processes: bool = False, mig: bool = False) -> dict[str, Any]:
    """benchmarks.poll in a fresh process (pynvml loads the library once per process); `processes`
    plays the shared-GPU capture in a busy phase and polls the process source too; `mig` plays an H200
    split into seven MIG instances and polls the MIG source too."""
    env = nvml_env(library, gpus=gpus, latency=latency)
    if processes and library is not None:
        env |= {"FAKENVML_CAPTURE": str(PROCS_CAPTURE), "FAKENVML_SPEED": "0", "FAKENVML_START": str(PROCS_BUSY_AT)}
    if mig and library is not None:
        env |= {"FAKENVML_CAPTURE": str(mig_capture.write(BUILD / "mig7")), "FAKENVML_SPEED": "0",
                "FAKENVML_START": "5"}
    out = subprocess.run([sys.executable, "-m", "benchmarks.poll", "--rounds", str(s.rounds),
                          "--spacing", str(s.spacing_s), "--mode", mode, *(["--bare"] if bare else []),
                          *(["--processes"] if processes else []), *(["--mig"] if mig else [])],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"benchmarks.poll failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure_exporter(name: str, argv: list[str], env: dict[str, str], port: int, ready: str, s: Settings,
                     work: Path) -> dict[str, Any]:
    p = daemon.Process.start(name, argv, env, f"http://127.0.0.1:{port}", ready, work / f"{name}.log")
    try:
        time.sleep(min(5.0, s.footprint_s / 4))  # past start-up: imports, first polls, first render
        result: dict[str, Any] = {"footprint": daemon.footprint(p, s.footprint_s)}
        result["scrape"] = daemon.scrape_latency(p.base_url + "/metrics", s.scrapers, s.scrape_each, s.paced_s)
        result["footprint"]["peak_rss_mib_after_scrapes"] = p.memory_kib().get("VmHWM", 0) / 1024
    finally:
        p.stop()
    return result


def measure_scrape_floor(body_bytes: int, s: Settings, work: Path) -> dict[str, Any]:
    """Scrape latency of a server that only returns a fixed body of `body_bytes`: this machine's floor."""
    port = daemon.free_port()
    argv = [sys.executable, "-m", "benchmarks.scrape_floor", str(port), str(max(body_bytes, 1))]
    p = daemon.Process.start("scrape-floor", argv, os.environ, f"http://127.0.0.1:{port}", "/metrics",
                             work / "scrape-floor.log")
    try:
        return daemon.scrape_latency(p.base_url + "/metrics", s.scrapers, s.scrape_each, s.paced_s)
    finally:
        p.stop()


def measure_alert(library: Path, s: Settings, work: Path) -> dict[str, Any]:
    """gpumon with one rule (memory > 90%, no `for`, evaluated every 1 s) on a replay that reaches
    the memfull phase `alert_lead_s` after start on GPU 0, notifying a local webhook (group_wait 1 ms,
    one group per GPU) when gpumon has notifications."""
    rules = work / "alert.rules.yml"
    rules.write_text(ALERT_RULES)
    hook = daemon.Webhook()
    config = work / "alert.yml"
    config.write_text(ALERT_CONFIG.format(url=hook.url))
    port = daemon.free_port()
    env = nvml_env(library, gpus=s.daemon_gpus, latency=1, start=MEMFULL_FROM_S - s.alert_lead_s)
    argv = [*gpumon_argv(port, work / "state-alert", rules), "--config", str(config)]
    try:
        p = daemon.Process.start("gpumon-alert", argv, env, f"http://127.0.0.1:{port}", "/-/ready",
                                 work / "gpumon-alert.log")
        try:
            total = 150754820096  # the capture's memory size; only the threshold depends on it
            return daemon.alert_latency(p, "BenchMemoryHigh", "0", 'gpumon_memory_used_bytes{gpu="0"',
                                        0.9 * total, hook)
        finally:
            p.stop()
    finally:
        hook.close()


def run(s: Settings, work: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "settings": asdict(s), "budgets": BUDGETS,
                               "mode": "real NVML" if s.gpu else "fake NVML (H200 capture, recorded latencies)"}
    library = None
    if s.gpu:
        why = real_nvml_present()
        if why:
            raise SystemExit(f"bench-gpu: {why}. Run `make bench` for the fake-NVML benchmark.")
    else:
        library = fake_library(work)
    # An installed gpumon has its bytecode compiled (pip does it); a checkout run with
    # PYTHONDONTWRITEBYTECODE compiles every module at each start, which alone adds ~10 MB to the
    # peak RSS measured below. Compile it first, as an install would.
    compileall.compile_dir(str(Path(gpumon.__file__).parent), quiet=1)
    fl = floor.compute(DEMO_CAPTURE)
    results["floor"] = asdict(fl)
    sizes = (0,) if s.gpu else s.sizes  # 0: every GPU the machine has
    results["poll"] = []
    latency = 1 if library else 0  # on hardware the latency is real and cannot be switched off
    for n in sizes:
        r = run_poll(library, n, latency, s, "parallel")
        r["bare"] = run_poll(library, n, latency, s, "parallel", bare=True)
        r["vs_probe_floor"] = r["gpu_poll_us_median"] / fl.probe_us
        r["vs_replay_floor"] = r["gpu_poll_us_median"] / fl.replay_median_us
        r["vs_bare"] = r["gpu_poll_us_median"] / r["bare"]["gpu_poll_us_median"]
        results["poll"].append(r)
        progress(f"poll {r['gpus']} GPUs: {r['gpu_poll_us_median']:.0f} us per GPU poll, "
                  f"bare pynvml {r['bare']['gpu_poll_us_median']:.0f} us")
    # Latency off (fake) or real (hardware: then this is the whole serial poll, NVML included).
    n_over = s.daemon_gpus if library else 0
    results["overhead"] = run_poll(library, n_over, 0, s, "serial")
    results["overhead"]["bare"] = run_poll(library, n_over, 0, s, "serial", bare=True)
    results["overhead"]["gpumon_own_us"] = (results["overhead"]["gpu_poll_us_median"]
                                            - results["overhead"]["bare"]["gpu_poll_us_median"])
    progress(f"overhead: {results['overhead']['gpu_poll_us_median']:.0f} us per GPU poll")
    procs = results["overhead_processes"] = run_poll(library, n_over, 0, s, "serial", processes=True)
    procs["bare"] = run_poll(library, n_over, 0, s, "serial", bare=True, processes=True)
    progress(f"overhead with processes: {procs['gpu_poll_us_median']:.0f} us per GPU poll")
    if not s.gpu:  # the fake library's seven-instance MIG capture (a real GPU is measured as it is set up)
        mig = results["overhead_mig"] = run_poll(library, n_over, 0, s, "serial", mig=True)
        mig["bare"] = run_poll(library, n_over, 0, s, "serial", bare=True, mig=True)
        progress(f"overhead with 7 MIG instances: {mig['gpu_poll_us_median']:.0f} us per GPU poll")

    env = nvml_env(library, gpus=s.daemon_gpus, latency=1)
    port = daemon.free_port()
    results["gpumon"] = measure_exporter("gpumon", gpumon_argv(port, work / "state"), env, port, "/-/ready", s, work)
    results["gpumon"]["gpus"] = s.daemon_gpus if library else results["poll"][0]["gpus"]
    results["scrape_floor"] = measure_scrape_floor(results["gpumon"]["scrape"]["body_bytes_gzip"], s, work)
    progress(f"gpumon: {results['gpumon']}")
    if s.nvitop and library:
        exe = NVITOP_VENV / "bin" / "nvitop-exporter"
        if not exe.exists():
            results["nvitop"] = {"skipped": f"{exe} not installed (make bench installs it)"}
        else:
            port = daemon.free_port()
            argv = [str(exe), "--bind-address", "127.0.0.1", "--port", str(port), "--interval", "1.0"]
            try:
                results["nvitop"] = measure_exporter("nvitop-exporter", argv, env, port, "/metrics", s, work)
                results["nvitop"]["gpus"] = s.daemon_gpus
            except (RuntimeError, OSError) as exc:  # a partial table beats none
                results["nvitop"] = {"skipped": f"failed: {exc}"}
        progress(f"nvitop: {results['nvitop']}")
    if s.alert and library:
        try:
            results["alert"] = measure_alert(library, s, work)
        except (RuntimeError, OSError) as exc:
            results["alert_error"] = str(exc)
        progress(f"alert: {results.get('alert') or results.get('alert_error')}")
    if library:
        # The notification issue's item: a dead receiver's backlog must not slow polling. Half the
        # footprint window per run (baseline and backlog), so `make bench` grows by about a minute.
        nb = notify_backlog.Settings(gpus=s.daemon_gpus, window_s=s.footprint_s / 2,
                                     warmup_s=min(5.0, s.footprint_s / 4))
        try:
            results["notify_backlog"] = notify_backlog.run(nb, work, library)
        except (RuntimeError, OSError) as exc:
            results["notify_backlog_error"] = str(exc)
    # Issue 7: InfiniBand collection over 8 fake NICs (no NVML involved, so also with --gpu).
    results["accounting"] = asyncio.run(accounting.measure(s.daemon_gpus, s.accounting_rounds))
    progress(f"accounting: {results['accounting']['loop_us_per_gpu_median']:.1f} us per GPU per poll")
    results["doctor"] = asyncio.run(doctor.measure(s.daemon_gpus, s.doctor_rounds))
    progress(f"doctor: {results['doctor']['slow_round_us_per_gpu_median']:.0f} us per GPU per slow round")
    results["interconnect"] = interconnect.run(rounds=s.interconnect_rounds)
    progress(f"interconnect: {results['interconnect']['connectx']['poll_us_median']:.0f} us per poll, 8 NICs")
    results["machine"]["loadavg_end"] = os.getloadavg()
    return results


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "NOT MET")


def table(r: dict[str, Any]) -> str:
    """The results as a Markdown table with the budgets."""
    b, fl = r["budgets"], r["floor"]
    rows = [("item", "measured", "budget", "verdict")]
    for p in r["poll"]:
        rows.append((f"poll, {p['gpus']} GPU(s), per GPU poll (median; p90)",
                     f"{p['gpu_poll_us_median']:.0f} us ({p['gpu_poll_us_p90']:.0f}); "
                     f"{p['vs_probe_floor']:.2f}x probe floor, {p['vs_replay_floor']:.2f}x replay floor; "
                     f"bare pynvml {p['bare']['gpu_poll_us_median']:.0f} us ({p['vs_bare']:.2f}x)",
                     f"<= {b['poll_vs_floor']}x floor", _verdict(p["vs_probe_floor"] <= b["poll_vs_floor"])))
    rows.append(("  floor (fast tier, one GPU)", f"probe {fl['probe_us']:.0f} us; replay median "
                 f"{fl['replay_median_us']:.0f} us, mean {fl['replay_mean_us']:.0f} us", "", ""))
    o = r["overhead"]
    rows.append((f"Python overhead, {o['gpus']} GPUs, serial, latency off (median; CPU)",
                 f"{o['gpu_poll_us_median']:.0f} us; {o['cpu_us_per_gpu_poll']:.0f} us CPU; bare pynvml "
                 f"{o['bare']['gpu_poll_us_median']:.0f} us, so gpumon's own {o['gpumon_own_us']:.0f} us",
                 f"<= {b['python_overhead_us']:.0f} us", _verdict(o["gpu_poll_us_median"] <= b["python_overhead_us"])))
    if (op := r.get("overhead_processes")) is not None:
        rows.append(("  ... with 21 processes per GPU named and owned (process source too)",
                     f"{op['gpu_poll_us_median']:.0f} us; {op['cpu_us_per_gpu_poll']:.0f} us CPU; bare pynvml "
                     f"{op['bare']['gpu_poll_us_median']:.0f} us (with the process lists)",
                     f"<= {b['python_overhead_us']:.0f} us",
                     _verdict(op["gpu_poll_us_median"] <= b["python_overhead_us"])))
    if (om := r.get("overhead_mig")) is not None:
        rows.append(("  ... on a GPU split into 7 MIG instances (MIG source too; no util.gpu, GPM per instance)",
                     f"{om['gpu_poll_us_median']:.0f} us; {om['cpu_us_per_gpu_poll']:.0f} us CPU; bare pynvml "
                     f"{om['bare']['gpu_poll_us_median']:.0f} us (the same calls per instance)",
                     f"<= {b['python_overhead_us']:.0f} us",
                     _verdict(om["gpu_poll_us_median"] <= b["python_overhead_us"])))
    exporters = [("gpumon", r.get("gpumon")), ("nvitop-exporter", r.get("nvitop"))]
    for name, e in exporters:
        if not e or "skipped" in e:
            if e:
                rows.append((name, e["skipped"], "", ""))
            continue
        f, sc, n = e["footprint"], e["scrape"], e["gpus"]
        own = name == "gpumon"
        rows.append((f"{name} CPU, {n} GPUs, 1 s polling, {f['window_s']:.0f} s",
                     f"{f['cpu_percent']:.2f} % of a core = {f['cpu_percent'] / n:.3f} % per GPU",
                     f"<= {b['cpu_percent_per_gpu']} % per GPU" if own else "",
                     _verdict(f["cpu_percent"] / n <= b["cpu_percent_per_gpu"]) if own else ""))
        peak_mb = f["peak_rss_mib_after_scrapes"] * 1.048576
        end_mb = f["rss_mib"] * 1.048576
        rows.append((f"{name} peak RSS (VmHWM)", f"{peak_mb:.1f} MB (RSS at end of window {end_mb:.1f} MB)",
                     f"<= {b['rss_mb_8gpus']:.0f} MB" if own else "",
                     _verdict(peak_mb <= b["rss_mb_8gpus"]) if own else ""))
        rows.append((f"{name} scrape, {sc['concurrency']} concurrent (p50; p99)",
                     f"{sc['p50_ms']:.2f}; {sc['p99_ms']:.2f} ms back to back ({sc['requests_per_s']:.0f}/s); "
                     f"{sc['paced_p50_ms']:.2f}; {sc['paced_p99_ms']:.2f} ms at 1/s each; alone "
                     f"{sc['alone_p50_ms']:.2f}; {sc['alone_p99_ms']:.2f} ms ({sc['body_bytes_gzip']} B gzip)",
                     f"<= {b['scrape_p99_ms']:.0f} ms" if own else "",
                     _verdict(sc["p99_ms"] <= b["scrape_p99_ms"]) if own else ""))
    g, nv = r.get("gpumon"), r.get("nvitop")
    if g and nv and "skipped" not in nv:
        cpu_ratio = nv["footprint"]["cpu_percent"] / max(g["footprint"]["cpu_percent"], 1e-9)
        p99_ratio = nv["scrape"]["p99_ms"] / max(g["scrape"]["p99_ms"], 1e-9)
        rss_ratio = nv["footprint"]["peak_rss_mib_after_scrapes"] / g["footprint"]["peak_rss_mib_after_scrapes"]
        rows.append(("vs nvitop-exporter: CPU per GPU", f"nvitop-exporter uses {cpu_ratio:.2f}x gpumon's",
                     "gpumon ahead", _verdict(cpu_ratio > 1)))
        rows.append(("vs nvitop-exporter: scrape p99", f"nvitop-exporter's is {p99_ratio:.2f}x gpumon's",
                     "gpumon ahead", _verdict(p99_ratio > 1)))
        rows.append(("vs nvitop-exporter: peak RSS", f"nvitop-exporter's is {rss_ratio:.2f}x gpumon's", "", ""))
    fl_sc = r.get("scrape_floor")
    if fl_sc:
        rows.append(("scrape floor: a server returning a fixed body of that size (p50; p99)",
                     f"{fl_sc['p50_ms']:.2f}; {fl_sc['p99_ms']:.2f} ms back to back ({fl_sc['requests_per_s']:.0f}/s); "
                     f"{fl_sc['paced_p50_ms']:.2f}; {fl_sc['paced_p99_ms']:.2f} ms at 1/s each; alone "
                     f"{fl_sc['alone_p50_ms']:.2f}; {fl_sc['alone_p99_ms']:.2f} ms", "", ""))
    if g:
        smi = NVIDIA_SMI_QUERY_MS / g["scrape"]["alone_p50_ms"]
        rows.append(("vs nvidia-smi --query-gpu per scrape (117 ms, recorded)",
                     f"{smi:.0f}x gpumon's scrape (one scraper, p50); source: {NVIDIA_SMI_SOURCE}", "", ""))
    if "alert_error" in r:
        rows.append(("alert latency", "failed: " + r["alert_error"].splitlines()[0], "", ""))
    a = r.get("alert")
    if a:
        rows.append(("alert: condition seen in /metrics -> firing in /api/v1/alerts (1 s rule interval)",
                     f"{a['seen_to_firing_ms']:.0f} ms "
                     f"(activeAt -> seen firing {a['active_to_firing_seen_ms']:.0f} ms)", "", ""))
        to_hook = a.get("active_to_webhook_ms")
        rows.append(("alert: firing (activeAt, no `for`) -> local webhook received it (group_wait 1 ms)",
                     "never received" if to_hook is None else f"{to_hook:.0f} ms",
                     f"<= {b['alert_ms_after_firing']:.0f} ms",
                     _verdict(None if to_hook is None else to_hook <= b["alert_ms_after_firing"])))
    if "accounting" in r:
        a = r["accounting"]
        rows.append((f"accounting, {a['gpus']} GPUs: per GPU per poll on the event loop (median; p90)",
                     f"{a['loop_us_per_gpu_median']:.1f} us ({a['loop_us_per_gpu_p90']:.1f}); "
                     f"{a['cpu_us_per_gpu_with_writes']:.0f} us CPU with the state-file writes (their own thread)",
                     f"<= {b['accounting_us_per_gpu']:.0f} us", _verdict(a["loop_us_per_gpu_median"]
                                                                  <= b["accounting_us_per_gpu"])))
    if "doctor" in r:
        d = r["doctor"]
        rows.append((f"doctor's checks, {d['gpus']} GPUs: per GPU per slow round (median; p90)",
                     f"{d['slow_round_us_per_gpu_median']:.0f} us ({d['slow_round_us_per_gpu_p90']:.0f}); "
                     f"first round {d['first_round_ms']:.1f} ms ({d['kmsg_records']} kernel log records)",
                     f"<= {b['doctor_us_per_gpu']:.0f} us",
                     _verdict(d["slow_round_us_per_gpu_median"] <= b["doctor_us_per_gpu"])))
    if "interconnect" in r:
        rows.append(interconnect.table_row(r["interconnect"]))
    if "notify_backlog" in r:
        rows.extend(notify_backlog.table_rows(r["notify_backlog"]))
    elif "notify_backlog_error" in r:
        rows.append(("notify backlog", "failed: " + r["notify_backlog_error"].splitlines()[0], "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="real NVML instead of the fake library (items 1-4)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds not minutes (smoke test)")
    parser.add_argument("--footprint", type=float, default=60.0, help="seconds of the CPU/RSS window")
    parser.add_argument("--no-nvitop", action="store_true", help="skip nvitop-exporter")
    parser.add_argument("--out", type=Path, default=BUILD / "results.json")
    args = parser.parse_args(argv)
    s = Settings(gpu=args.gpu, footprint_s=args.footprint, nvitop=not args.no_nvitop)
    if args.quick:
        s = Settings(gpu=args.gpu, sizes=(1, 2), rounds=2, spacing_s=0.11, daemon_gpus=2, footprint_s=1.0,
                     scrape_each=3, scrapers=2, paced_s=1.0, nvitop=not args.no_nvitop, alert_lead_s=2.0,
                     accounting_rounds=5, doctor_rounds=5)
    with tempfile.TemporaryDirectory(prefix="gpumon-bench-") as tmp:
        results = run(s, Path(tmp))
    results["table"] = table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(results["table"])
    print(f"\n(all numbers: {args.out})")
    return 0
