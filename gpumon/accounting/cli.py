"""`gpumon report`: the period, the source (this host's state file or a Prometheus server) and the
output, from the command line."""

from __future__ import annotations

import argparse
import re
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from gpumon import promclient
from gpumon.accounting import prometheus
from gpumon.accounting.db import open_readonly
from gpumon.accounting.report import GROUPINGS, as_csv, as_json, as_table, build
from gpumon.config import Config, parse_duration
from gpumon.notify.urls import redacted
from gpumon.yamlfile import ConfigError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = sub.add_parser("report", help="where the GPU-hours went over a period: by owner or GPU, with cost")
    report.add_argument("--config", type=Path, help="YAML configuration file (for state_dir)")
    report.add_argument("--state-dir", help="the daemon's state directory (default /var/lib/gpumon)")
    period = report.add_mutually_exclusive_group()
    period.add_argument("--since", help="the period up to now, e.g. 24h, 7d (default 24h)")
    period.add_argument("--from", dest="start", help="start: RFC 3339 (2026-11-30T00:00:00Z), a date, or Unix seconds")
    report.add_argument("--to", dest="end", help="end, as --from (default now)")
    report.add_argument("--by", choices=GROUPINGS, default="namespace", help="grouping (default namespace)")
    report.add_argument("--price-per-gpu-hour", type=float, help="cost of a held GPU-hour")
    report.add_argument("--price-per-kwh", type=float, help="cost of a kWh of GPU energy")
    report.add_argument("--format", choices=["table", "json", "csv"], default="table")
    report.add_argument("--prometheus", metavar="URL", help="a fleet: query this Prometheus server instead")
    report.add_argument("--http.config.file", dest="http_config", type=Path,
                        help="HTTP client settings for --prometheus, as promtool's (auth, TLS)")


def parse_time(text: str) -> float:
    """RFC 3339 / ISO 8601 (a date alone is midnight UTC), or Unix seconds."""
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
        return float(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time: RFC 3339 (2026-11-30T00:00:00Z), a date or Unix seconds") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def run(args: argparse.Namespace, config: Config) -> int:
    """Exit 0 with the report, 1 with a sentence on stderr."""
    try:
        end = parse_time(args.end) if args.end else time.time()
        start = parse_time(args.start) if args.start else end - parse_duration(args.since or "24h")
        if start >= end:
            raise ValueError("the period is empty: --from must be before --to")
        prices = {"price_per_gpu_hour": args.price_per_gpu_hour, "price_per_kwh": args.price_per_kwh}
        if args.prometheus:
            http = promclient.http_settings(args.http_config)
            rows = prometheus.rows(args.prometheus, start, end, http)
            source = f"Prometheus at {redacted(args.prometheus.rstrip('/'))}"
        else:
            db = open_readonly(config.state_dir)
            if db is None:
                raise ValueError(f"no accounting in {config.state_dir} (has gpumon run there with accounting on?)")
            host = socket.gethostname()
            rows = [(row, host) for row in db.usage(start, end)]
            db.close()
            source = f"this host's accounting ({config.state_dir})"
        report = build(rows, by=args.by, start=start, end=end, source=source, **prices)
    except (ValueError, ConfigError) as exc:
        print(f"gpumon report: {exc}", file=sys.stderr)
        return 1
    print({"table": as_table, "json": as_json, "csv": as_csv}[args.format](report), end="" if args.format == "csv"
          else "\n")
    return 0
