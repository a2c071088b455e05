"""`gpumon doctor [--backend ...] [--json] [--only CHECK...]`: one poll, every check, a report."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from gpumon import promclient
from gpumon.attribution.procfs import Procfs
from gpumon.config import Config
from gpumon.doctor import fleet, host, kernel_log
from gpumon.doctor.checks import GPU_CHECKS, GpuView, run_gpu_checks, selected, straggler
from gpumon.doctor.report import Report, as_json, as_text
from gpumon.model import BackendUnavailable
from gpumon.yamlfile import ConfigError

NOT_HOST_PIDS = "this /proc shows another PID namespace than NVML's PIDs (in a container: hostPID: true)"
EXIT_UNCHECKED = 3  # --fleet could not read the fleet: neither ok nor a finding
HOST_CHECKS = ("hardware.gpus_missing", "hardware.xid_since_boot", "interconnect.infiniband", "driver.version",
               "driver.cuda_runtime", "workload.straggler", "application.algorithm_and_data")


def add_parser(sub: Any, backend_help: str) -> None:
    doctor = sub.add_parser("doctor", help="diagnose the GPUs: hardware, driver, workload (exit 0 ok, 1 warn, 2 fail)")
    doctor.add_argument("--config", type=Path, help="YAML configuration file")
    doctor.add_argument("--backend", help=backend_help)
    doctor.add_argument("--json", action="store_true", help="JSON (docs/doctor.schema.json) instead of a table")
    doctor.add_argument("--only", nargs="+", default=[], metavar="CHECK",
                        help="checks or layers to run (hardware, hardware.ecc, workload, ...)")
    doctor.add_argument("--fleet", metavar="URL", help="read every host's checks from this Prometheus server")
    doctor.add_argument("--http.config.file", dest="http_config", type=Path,
                        help="HTTP client settings for --fleet, as promtool's (auth, TLS)")
    doctor.add_argument("--sysfs", type=Path, default=Path("/sys"), help=argparse.SUPPRESS)  # tests: a fake tree
    doctor.add_argument("--kmsg", type=Path, default=kernel_log.KMSG, help=argparse.SUPPRESS)  # tests: a saved log


def known_checks() -> list[str]:
    return [*GPU_CHECKS, *HOST_CHECKS, fleet.STRAGGLER_CHECK]


def run(args: argparse.Namespace, config: Config) -> int:
    from gpumon.snapshot import take_snapshot

    only = frozenset(args.only)
    unknown = sorted(o for o in only if not any(selected(c, frozenset({o})) for c in known_checks()))
    if unknown:
        print(f"gpumon: unknown check {unknown[0]!r}; checks: {', '.join(known_checks())}", file=sys.stderr)
        return 64
    if args.fleet:
        return _fleet(args, only)
    if only and all(o == fleet.STRAGGLER_CHECK for o in only):
        print(f"gpumon: {fleet.STRAGGLER_CHECK} compares hosts: it runs with --fleet", file=sys.stderr)
        return 64
    try:
        snap = asyncio.run(take_snapshot(config))
    except BackendUnavailable as exc:  # NVML cannot load, the capture cannot be read: the worst finding
        print(f"gpumon: {exc}", file=sys.stderr)
        return 2
    devices = snap.devices
    by_gpu = snap.store.latest_by_gpu()
    findings = []
    views = [GpuView(d.index, d.uuid, by_gpu.get(d.index, [])) for d in devices]
    for view in views:
        findings += run_gpu_checks(view, only)
    replayed = bool(snap.backend.capture)
    if selected("hardware.gpus_missing", only):
        findings.append(host.gpus_missing(devices, args.sysfs, replayed))
    if selected("hardware.xid_since_boot", only):
        findings.append(host.kernel_xids(devices, _xids_since_boot(args.kmsg, replayed),
                                         kernel_log.seconds_since_boot()))
    if selected("interconnect.infiniband", only):
        findings.append(host.infiniband(snap.store.latest()))
    if selected("driver.version", only):
        findings.append(host.driver(devices))
    if selected("driver.cuda_runtime", only):
        proc_root = config.attribution.processes.proc_root
        # A replayed capture's PIDs are not this host's, unless /proc is a stand-in (tests).
        procfs = None if replayed and proc_root == Path("/proc") else Procfs(proc_root)
        if procfs is not None and procfs.host_pid_namespace() is False:  # NVML's PIDs are the host's
            findings.append(host.cuda_runtime(views, devices, None, NOT_HOST_PIDS))
        else:
            findings.append(host.cuda_runtime(views, devices, procfs))
    if selected("workload.straggler", only):
        findings.append(straggler(views))
    if selected("application.algorithm_and_data", only):
        findings.append(host.application_layers())
    report = Report(findings, {d.index: d.uuid for d in devices}, snap.backend.name, snap.backend.capture)
    print(as_json(report) if args.json else as_text(report, colour=sys.stdout.isatty()))
    return report.exit_status


def _xids_since_boot(path: Path, replayed: bool) -> kernel_log.XidsSinceBoot | None:
    if replayed and path == kernel_log.KMSG:  # this host's log says nothing of a replayed capture's GPUs
        return None
    xids = kernel_log.XidsSinceBoot(kernel_log.KernelLog(path))
    xids.read()
    xids.log.close()
    return xids


def _fleet(args: argparse.Namespace, only: frozenset[str]) -> int:
    try:
        http = promclient.http_settings(args.http_config)
        hosts = fleet.read(args.fleet, http, only)
    except ConfigError as exc:  # an unreachable server or a bad --http.config.file: nothing was checked
        print(f"gpumon: {exc}", file=sys.stderr)
        return EXIT_UNCHECKED
    found: list[fleet.Straggler] = []
    unavailable: dict[str, str] = {}
    if selected(fleet.STRAGGLER_CHECK, only):
        # Its own query, which can fail alone (a server that refuses it): the table stands without it.
        try:
            scan = fleet.stragglers(args.fleet, http)
        except ConfigError as exc:
            unavailable[fleet.STRAGGLER_CHECK] = str(exc)
        else:
            hosts, found = fleet.add_stragglers(hosts, scan), scan.found
    print(fleet.as_json(args.fleet, hosts, found, unavailable) if args.json
          else fleet.as_text(args.fleet, hosts, found, unavailable))
    return fleet.exit_status(hosts, unavailable)
