"""The benchmarks run at tiny size on every test run, so they cannot rot. They report; they do not judge."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import rules_eval


def test_rules_eval_benchmark_runs() -> None:
    result = rules_eval.run(gpus=2, minutes=1, rounds=2)
    assert result["gpus"] == 2 and result["series"] > 50
    assert result["eval_ms_median"] > 0


def test_floor_is_computed_from_the_capture_and_the_catalog() -> None:
    from benchmarks import floor
    from gpumon.sources.replay import DEMO_CAPTURE

    f = floor.compute(DEMO_CAPTURE)
    assert "nvmlDeviceGetUtilizationRates" in f.calls and "gpm.sample_get_us" in f.calls
    assert f.probe_us == sum(f.calls.values()) > 0
    assert f.replay_median_us > 0 and f.replay_mean_us > 0


def test_alert_benchmark_starts_the_replay_just_before_memory_passes_90_percent() -> None:
    import json

    from benchmarks.suite import MEMFULL_FROM_S
    from gpumon.sources.replay import DEMO_CAPTURE

    records = [json.loads(line) for line in (DEMO_CAPTURE / "trace.jsonl").read_text().splitlines() if line]
    first = next(r["t"] for r in records if r["mem"]["used"] / r["mem"]["total"] > 0.9)
    assert abs(first - records[0]["t"] - MEMFULL_FROM_S) < 0.5


def test_benchmark_suite_runs_at_tiny_size(tmp_path: Path) -> None:
    """The whole suite on the fake library (2 GPUs, a few rounds, 1 s windows); no nvitop-exporter."""
    from benchmarks import suite

    settings = suite.Settings(sizes=(1, 2), rounds=2, spacing_s=0.11, daemon_gpus=2, footprint_s=0.5,
                              scrape_each=2, scrapers=2, paced_s=1.0, nvitop=False,
                              alert_lead_s=1.0, accounting_rounds=3)
    results = suite.run(settings, tmp_path)
    assert [p["gpus"] for p in results["poll"]] == [1, 2]
    assert results["overhead"]["gpu_poll_us_median"] > 0
    assert results["overhead_processes"]["gpu_poll_us_median"] > 0
    assert results["accounting"]["loop_us_per_gpu_median"] > 0 and "| accounting, 2 GPUs" in suite.table(results)
    assert results["gpumon"]["footprint"]["peak_rss_mib"] > 0
    assert results["gpumon"]["scrape"]["requests"] == 4
    assert results["alert"]["firing_seen"] >= results["alert"]["active_at"]
    assert "| poll, 2 GPU(s)" in suite.table(results)
    assert results["scrape_floor"]["requests"] == 4 and "| scrape floor" in suite.table(results)


def test_bench_gpu_says_clearly_when_nvml_is_missing() -> None:
    from benchmarks import suite
    from benchmarks.environment import real_nvml_present

    why = real_nvml_present()
    if why is None:
        pytest.skip("this machine has NVML")
    with pytest.raises(SystemExit, match=r"bench-gpu: .*make bench"):
        suite.main(["--gpu", "--out", "/nonexistent/never-written.json"])


def test_notify_backlog_benchmark_runs_at_tiny_size(tmp_path: Path) -> None:
    """Baseline and backlog daemons on 2 fake GPUs, 2 s windows, 20 notifications queued for a dead
    receiver: the backlog must really be in the outbox (the notifier's own queue-length metric)."""
    from benchmarks import notify_backlog

    settings = notify_backlog.Settings(notifications=20, gpus=2, window_s=2.5, warmup_s=1.0,
                                       rule_evaluation_interval="1s")
    result = notify_backlog.run(settings, tmp_path)
    assert result["backlog_present"] and result["backlog_queue_min"] >= 20
    assert [r["queued_before_start"] for r in result["runs"]["backlog"]] == [20]
    assert result["runs"]["baseline"][0]["queue_max"] == 0
    assert result["baseline"]["polls"] >= 1 and result["backlog"]["polls"] >= 1
    assert result["ratio_mean"] > 0 and result["baseline"]["cpu_percent"] > 0
    assert "notify backlog: fast poll round, 20 queued" in notify_backlog.table_rows(result)[0][0]


def test_interconnect_benchmark_runs_at_tiny_size() -> None:
    """Two fake NICs of each kind, a few polls: every port polled, every series there, no read errors."""
    from benchmarks import interconnect

    result = interconnect.run(nics=2, rounds=3)
    cx, plain = result["connectx"], result["plain"]
    assert cx["ports"] == plain["ports"] == 2 and cx["rounds"] == 3
    assert cx["series_per_poll"] > plain["series_per_poll"] > 0  # hw_counters only on ConnectX
    assert cx["read_errors"] == plain["read_errors"] == 0
    assert 0 < cx["poll_us_median"] <= cx["poll_us_p90"] <= cx["poll_us_max"]
    assert result["connectx_us_per_8_nics"] == cx["poll_us_median"] * 4
    assert "InfiniBand poll, 2 NICs" in interconnect.table_row(result)[0]


def test_doctor_benchmark_reports_the_first_rounds_apart() -> None:
    import asyncio

    from benchmarks import doctor
    from gpumon.doctor import kernel_log

    result = asyncio.run(doctor.measure(1, 4, kmsg_records=2 * kernel_log.ROUND_RECORDS + 5, pci_devices=40))
    # A ring larger than a round's share is read over three rounds, those rounds apart from the steady ones.
    assert result["kmsg_records"] == 2 * kernel_log.ROUND_RECORDS + 5 and result["kmsg_rounds_to_read"] == 3
    assert result["rounds"] == 2 and result["first_round_ms"] > 0 and result["backlog_round_ms_max"] > 0
    assert result["pci_devices"] == 40 and result["pci_gpus"] == doctor.NVIDIA_GPUS
    assert result["pci_scan_us_cached"] < result["pci_scan_us_uncached"]
