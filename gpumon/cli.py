"""Command line: `gpumon run`, `gpumon snapshot`, `gpumon --version`.

Every failure a user can cause ends in one sentence on stderr and a non-zero exit code:
1 for configuration and listen errors, 2 when the backend (NVML, capture) is unavailable.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from gpumon import __version__, logs
from gpumon.config import FLAGS, Config, load_config
from gpumon.daemon import EXIT_BACKEND, EXIT_CONFIG, EXIT_OK, run_daemon
from gpumon.model import BackendUnavailable
from gpumon.yamlfile import ConfigError

BACKEND_HELP = "nvml (default), auto (nvml, else the bundled demo capture) or replay:PATH[,loop][,speed=X][,gpus=N]"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpumon", description="NVIDIA GPU telemetry exporter and alerting daemon.")
    parser.add_argument("--version", action="version", version=f"gpumon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", type=Path, help="YAML configuration file")
    run.add_argument("--check-config", action="store_true", help="validate the configuration and exit")
    run.add_argument("--backend", help=BACKEND_HELP)
    run.add_argument("--listen", help="HOST:PORT for /metrics (default :9948)")
    run.add_argument("--web-config", help="exporter-toolkit web-config file (TLS, basic auth)")
    run.add_argument("--state-dir", help="directory for persistent state (default /var/lib/gpumon)")
    run.add_argument("--fast-interval", help="fast tier interval (default 1s)")
    run.add_argument("--slow-interval", help="slow tier interval (default 30s)")
    run.add_argument("--poll-deadline", help="deadline of one GPU poll (default 80%% of the interval)")
    run.add_argument("--retention", help="how much history the store keeps (default 10m)")
    run.add_argument("--rules", nargs="+", metavar="GLOB", help="alert rule files (default: the bundled rules)")
    run.add_argument("--rule-evaluation-interval", help="interval of rule groups without their own (default 10s)")
    run.add_argument("--process-pids", action="store_const", const=True,
                     help="export per-process memory with a pid label")
    run.add_argument("--infiniband-root", help="sysfs InfiniBand directory (default /sys/class/infiniband)")
    run.add_argument("--nccl-ras", action="store_const", const=True, help="query the NCCL RAS service")
    run.add_argument("--nccl-ras-address", help="NCCL RAS HOST:PORT (default localhost:28028)")
    run.add_argument("--proc-root", help="procfs showing the host's PID namespace (default /proc)")
    run.add_argument("--kubernetes", action="store_const", const=True,
                     help="name the pods holding each GPU (the kubelet's pod-resources socket)")
    run.add_argument("--hpc-job-mapping-dir", help="directory of per-GPU job id files (as dcgm-exporter reads)")
    run.add_argument("--log-level", help="debug, info, warning or error")
    run.add_argument("--log-format", help="auto, json or console")

    rules = sub.add_parser("rules", help="check and test alert rule files")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, metavar="RULES_COMMAND")
    check = rules_sub.add_parser("check", help="load rule files and report every problem (exit 0/1)")
    check.add_argument("files", nargs="+", type=Path)
    test = rules_sub.add_parser("test", help="run rule unit tests in promtool's format (exit 0/1)")
    test.add_argument("files", nargs="+", type=Path)
    export = rules_sub.add_parser("export", help="print rules for Prometheus, without gpumon's extensions")
    export.add_argument("files", nargs="*", type=Path, help="rule files (default: the bundled rules)")
    export.add_argument("--format", choices=["prometheus", "prometheusrule"], default="prometheus",
                        help="a plain rule file, or a Prometheus Operator PrometheusRule resource")
    export.add_argument("--name", default="gpumon", help="PrometheusRule metadata.name")
    export.add_argument("--namespace", default="monitoring", help="PrometheusRule metadata.namespace")

    snap = sub.add_parser("snapshot", help="poll once, print what gpumon sees, exit")
    snap.add_argument("--config", type=Path, help="YAML configuration file")
    snap.add_argument("--backend", help=BACKEND_HELP)
    snap.add_argument("--process-pids", action="store_const", const=True, help="include per-process memory")
    snap.add_argument("--json", action="store_true", help="print JSON instead of a table")

    from gpumon.accounting.cli import add_parser as add_report
    from gpumon.doctor.cli import add_parser as add_doctor

    add_report(sub)
    add_doctor(sub, BACKEND_HELP)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {flag: getattr(args, flag) for flag in FLAGS if getattr(args, flag, None) is not None}


def _fail(message: str, code: int) -> int:
    print(f"gpumon: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "rules":
        from gpumon.rules import cli as rules_cli

        if args.rules_command == "export":
            return rules_cli.export(args.files, args.format, args.name, args.namespace)
        if args.rules_command == "check":
            return rules_cli.check_files(args.files)
        return rules_cli.test_files(args.files)
    overrides = _overrides(args)
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        return _fail(f"invalid configuration:\n{exc}", EXIT_CONFIG)
    try:
        if args.command == "run":
            return _run(args, config, overrides)
        if args.command == "report":
            from gpumon.accounting import cli as report_cli

            return report_cli.run(args, config)
        if args.command == "doctor":
            from gpumon.doctor import cli as doctor_cli

            logs.configure("warning", "console")
            return doctor_cli.run(args, config)
        return _snapshot(args, config)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last line of defence: a sentence, not a traceback
        if os.environ.get("GPUMON_DEBUG"):
            raise
        return _fail(f"internal error: {type(exc).__name__}: {exc} (set GPUMON_DEBUG=1 for details)", 70)


def _run(args: argparse.Namespace, config: Config, overrides: dict[str, Any]) -> int:
    if args.check_config:
        from gpumon.daemon import check_config

        try:
            lines = check_config(config)
        except ConfigError as exc:
            return _fail(f"invalid configuration:\n{exc}", EXIT_CONFIG)
        print(f"gpumon: configuration OK ({args.config or 'defaults and flags'}; {lines[0]})")
        for line in lines[1:]:
            print(f"  {line}")
        return EXIT_OK
    logs.configure(config.log.level, config.log.format)
    return asyncio.run(run_daemon(config, args.config, overrides))


def _snapshot(args: argparse.Namespace, config: Config) -> int:
    from gpumon.snapshot import as_json, as_table, take_snapshot

    logs.configure("warning", "console")
    try:
        snap = asyncio.run(take_snapshot(config))
    except BackendUnavailable as exc:
        return _fail(str(exc), EXIT_BACKEND)
    print(as_json(snap) if args.json else as_table(snap))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
