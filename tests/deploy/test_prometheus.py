"""deploy/prometheus: the scrape configuration, the recording rules and the exported alert rules load
into Prometheus's own checker, and the recording rules compute what their names say."""

from __future__ import annotations

import re

import pytest
import yaml

from gpumon.catalog import METRICS
from tests.support.deploy import DEPLOY, gpumon, run

PROM = DEPLOY / "prometheus"
RECORDING = PROM / "gpumon.recording.rules.yml"


def test_scrape_config_passes_promtool() -> None:
    result = run("promtool", "check", "config", "prometheus.yml", cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert "static_configs" in jobs["gpumon"]
    assert "file_sd_configs" in jobs["gpumon-file-sd"]
    assert sorted(config["rule_files"]) == ["gpumon.recording.rules.yml", "gpumon.rules.yml"]


def test_file_sd_targets_are_well_formed() -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    (job,) = (j for j in config["scrape_configs"] if j["job_name"] == "gpumon-file-sd")
    files = [p for pattern in job["file_sd_configs"][0]["files"] for p in sorted(PROM.glob(pattern))]
    assert files
    for path in files:
        groups = yaml.safe_load(path.read_text())
        assert isinstance(groups, list) and groups
        for group in groups:
            assert set(group) <= {"targets", "labels"}
            assert all(re.fullmatch(r"[\w.-]+:\d+", t) for t in group["targets"]), group
            assert all(isinstance(v, str) for v in group.get("labels", {}).values())


def test_rule_files_pass_promtool() -> None:
    result = run("promtool", "check", "rules", "gpumon.recording.rules.yml", "gpumon.rules.yml", cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr


def test_recording_rules_unit_tests() -> None:
    result = run("promtool", "test", "rules", "gpumon.recording.test.yml", cwd=PROM / "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_recording_rules_read_only_metrics_gpumon_exports() -> None:
    exported = {m.name for m in METRICS}
    groups = yaml.safe_load(RECORDING.read_text())["groups"]
    recorded = {r["record"] for g in groups for r in g["rules"]}
    for rule in (r for g in groups for r in g["rules"]):
        assert re.fullmatch(r"(gpu|instance|job|namespace|hpc_job):gpumon_\w+:\w+", rule["record"]), rule["record"]
        names = set(re.findall(r"\b(gpumon_\w+|\w+:gpumon_\w+:\w+)\b", rule["expr"]))
        assert names and names <= exported | recorded, (rule["record"], names - exported - recorded)


def test_every_recording_rule_is_unit_tested() -> None:
    groups = yaml.safe_load(RECORDING.read_text())["groups"]
    recorded = {r["record"] for g in groups for r in g["rules"]}
    tests = yaml.safe_load((PROM / "tests" / "gpumon.recording.test.yml").read_text())["tests"]
    tested = {name for t in tests for case in t["promql_expr_test"]
              for name in re.findall(r"\w+:gpumon_\w+:\w+", case["expr"])}
    assert recorded - tested == set()


def test_exported_alert_rules_are_current(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = gpumon(capsys, "rules", "export")
    assert code == 0, err
    stale = "deploy/prometheus/gpumon.rules.yml is stale: gpumon rules export > deploy/prometheus/gpumon.rules.yml"
    assert (PROM / "gpumon.rules.yml").read_text() == out, stale
