"""Alert rules inside the running daemon: the HTTP API, gpumon_alerts in /metrics, state across
kill -9, reloads, and the `gpumon rules` commands."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpumon.rules.service import BUNDLED_RULES
from tests.support.processes import Gpumon, need, run_gpumon

pytestmark = pytest.mark.integration

RULES = """
groups:
  - name: local
    rules:
      - alert: Pending
        expr: gpumon_gpu_up == 1
        for: 1h
      - alert: Firing
        expr: gpumon_gpu_up == 1
        labels: {severity: page}
        annotations: {summary: "GPU {{ $labels.gpu }} is up ({{ $value }})"}
"""


def alerts(g: Gpumon) -> dict[str, dict[str, Any]]:
    status, body = g.get("/api/v1/alerts")
    assert status == 200
    return {a["labels"]["alertname"]: a for a in json.loads(body)["data"]["alerts"]}


def wait_alerts(g: Gpumon, names: set[str], timeout: float = 15.0) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        got = alerts(g)
        if names <= set(got):
            return got
        assert time.monotonic() < deadline, f"alerts {names} not active: {got}\n{g.log}"
        time.sleep(0.2)


def test_alerts_api_metrics_and_state_across_kill_9(tmp_path: Path) -> None:
    rules = tmp_path / "local.rules.yml"
    rules.write_text(RULES)
    args = ("--rules", str(rules), "--rule-evaluation-interval", "500ms")
    with Gpumon(tmp_path, *args) as g:
        before = wait_alerts(g, {"Pending", "Firing"})
        assert before["Pending"]["state"] == "pending" and before["Firing"]["state"] == "firing"
        assert before["Firing"]["annotations"]["summary"] == "GPU 0 is up (1)"
        time.sleep(1.2)  # a scrape after the evaluation that rendered the alerts
        _, metrics = g.get("/metrics")
        assert b'gpumon_alerts{alertname="Firing",alertstate="firing",gpu="0"' in metrics
        _, body = g.get("/api/v1/rules")
        groups = json.loads(body)["data"]["groups"]
        assert [r["name"] for r in groups[0]["rules"]] == ["Pending", "Firing"]
        assert groups[0]["rules"][0]["duration"] == 3600 and groups[0]["rules"][0]["health"] == "ok"
        assert g.proc is not None
        g.proc.kill()  # kill -9: no chance to save anything on the way out
        g.proc.wait()
    time.sleep(0.5)
    with Gpumon(tmp_path, *args) as g:
        after = wait_alerts(g, {"Pending", "Firing"})
    # The pending alert keeps its `for` progress, the firing one its start: neither is new.
    assert after["Pending"]["activeAt"] == before["Pending"]["activeAt"]
    assert after["Firing"]["activeAt"] == before["Firing"]["activeAt"]
    assert after["Firing"]["state"] == "firing"


def test_bad_rules_at_start_and_at_reload(tmp_path: Path) -> None:
    rules = tmp_path / "local.rules.yml"
    rules.write_text("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: limitk(1, x)\n")
    r = run_gpumon("run", "--backend", "replay:demo", "--rules", str(rules), "--listen", "127.0.0.1:1")
    assert r.returncode == 1
    assert f"{rules}:5: groups[0].rules[0].expr: aggregation limitk is not in Prometheus 2.42's PromQL" in r.stderr
    assert "Traceback" not in r.stderr
    rules.write_text(RULES)
    with Gpumon(tmp_path, "--rules", str(rules), "--rule-evaluation-interval", "500ms") as g:
        wait_alerts(g, {"Firing"})
        rules.write_text("groups: [")
        g.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reload failed" not in g.log:
            assert time.monotonic() < deadline, g.log
            time.sleep(0.05)
        assert "Firing" in alerts(g)  # the previous rules keep running


def test_rules_check_test_and_export(tmp_path: Path) -> None:
    bundled = sorted(BUNDLED_RULES.glob("*.rules.yml"))
    ok = run_gpumon("rules", "check", *map(str, bundled))
    assert ok.returncode == 0 and "SUCCESS" in ok.stdout, ok.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: mad_over_time(x[5m])\n")
    r = run_gpumon("rules", "check", str(bad))  # a function of a later Prometheus than the 2.42 gpumon speaks
    assert r.returncode == 1 and f"{bad}:5" in r.stderr and "not in Prometheus 2.42's PromQL" in r.stderr
    tests = sorted((BUNDLED_RULES / "tests").glob("*.test.yml"))
    t = run_gpumon("rules", "test", *map(str, tests))
    assert t.returncode == 0, t.stdout
    plain = run_gpumon("rules", "export")
    assert plain.returncode == 0 and "gpumon_resolve_when" not in plain.stdout
    (tmp_path / "exported.yml").write_text(plain.stdout)
    crd = run_gpumon("rules", "export", "--format", "prometheusrule", "--namespace", "gpu")
    doc = yaml.safe_load(crd.stdout)
    assert doc["kind"] == "PrometheusRule" and doc["metadata"]["namespace"] == "gpu"
    (tmp_path / "from-crd.yml").write_text(yaml.safe_dump(doc["spec"]))
    for name in ("exported.yml", "from-crd.yml"):
        check = subprocess.run([need("promtool"), "check", "rules", str(tmp_path / name)],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
