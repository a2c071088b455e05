"""The bundled rules on the H200 capture, time-stretched so that one recorded sample is one minute:
the low-SM alert fires while only PCIe copies run (util.gpu reads 99 %), the memory alert while
memory is 93 % full, and neither at the end of the compute phase."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from gpumon.rules.alerting import RuleEngine, State
from gpumon.rules.promql import Evaluator
from gpumon.rules.ruletest import MemoryStorage, run_test_file
from gpumon.rules.service import BUNDLED_RULES, load_groups
from gpumon.sources.replay import DEMO_CAPTURE

MINUTE = 60_000
RULE_TESTS = sorted((BUNDLED_RULES / "tests").glob("*.test.yml"))


def capture_storage() -> tuple[MemoryStorage, list[str]]:
    records = [json.loads(line) for line in (DEMO_CAPTURE / "trace.jsonl").read_text().splitlines()]
    phases = json.loads((DEMO_CAPTURE / "phases.json").read_text())
    ids = (("gpu", "0"), ("uuid", "GPU-h200"))
    storage = MemoryStorage()

    def put(name: str, value: float, t: int, extra: tuple[tuple[str, str], ...] = ()) -> None:
        storage.add(tuple(sorted((("__name__", name), *ids, *extra))), t, value)
    names = []
    for i, r in enumerate(records):
        t = i * MINUTE
        put("gpumon_sm_active_ratio", r["gpm"]["sm_util"] / 100, t)
        put("gpumon_gpu_utilization_ratio", r["util"]["gpu"] / 100, t)
        put("gpumon_memory_used_bytes", r["mem"]["used"], t)
        put("gpumon_memory_total_bytes", r["mem"]["total"], t)
        put("gpumon_compute_processes", len(r["procs"]), t)
        put("gpumon_gpu_up", 1, t)
        put("gpumon_gpu_info", 1, t, (("gpm", "true"), ("name", "NVIDIA H200")))
        names.append(next((p["name"] for p in phases if p["start"] <= r["t"] < p["end"]), "-"))
    return storage, names


def test_bundled_rules_on_the_capture() -> None:
    storage, phases = capture_storage()
    groups = load_groups([])
    engine = RuleEngine(groups, Evaluator(storage), storage.add)
    firing: dict[str, set[str]] = defaultdict(set)
    last_of_compute: set[str] = set()
    for i, phase in enumerate(phases):
        for g in groups:
            engine.eval_group(g, i * MINUTE)
        now = {dict(a.labels)["alertname"] for a in engine.alerts() if a.state is State.FIRING}
        firing[phase] |= now
        if phase == "compute" and phases[i + 1] != "compute":
            last_of_compute = now
    assert "GpuSmActivityLow" in firing["pcie"]
    assert "GpuMemoryHigh" in firing["memfull"]
    assert "GpuMemoryHigh" not in firing["compute"]
    assert last_of_compute == set()
    assert "GpuUtilizationLow" not in set().union(*firing.values())  # this GPU has GPM
    assert all(s.health == "ok" for s in engine.states.values()), [s.last_error for s in engine.states.values()]


@pytest.mark.parametrize("test_file", RULE_TESTS, ids=lambda p: p.name)
def test_bundled_rule_tests_pass_in_gpumon_and_promtool(test_file: Path) -> None:
    assert run_test_file(test_file).failures == []
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: run the tests with `make test`, which installs it")
    theirs = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True)
    assert theirs.returncode == 0, theirs.stdout + theirs.stderr


def test_bundled_rules_have_tests() -> None:
    assert RULE_TESTS, "rules/tests/*.test.yml missing"
    tested = set()
    for path in RULE_TESTS:
        tested |= {line.split(":", 1)[1].strip() for line in path.read_text().splitlines()
                   if line.strip().startswith("alertname:")}
    names = {r.name for g in load_groups([]) for r in g.rules}
    assert names <= tested, f"bundled alerts without a test: {sorted(names - tested)}"


def test_capture_with_bundled_rules_notifies_low_sm_firing_then_resolved(tmp_path: Path) -> None:
    """End to end on the time-stretched capture: rules -> notifications -> outbox payloads."""
    from gpumon.config import RouteConfig
    from gpumon.notify.routing import build_route
    from gpumon.notify.service import NotifyService, Receiver
    from gpumon.notify.webhook import WebhookTarget

    storage, phases = capture_storage()
    groups = load_groups([])
    engine = RuleEngine(groups, Evaluator(storage), storage.add)
    route = build_route(RouteConfig(receiver="ops", group_by=["alertname"], group_wait=30.0, group_interval=60.0,
                                    repeat_interval=3600.0))
    notify = NotifyService(route, {"ops": Receiver(WebhookTarget("ops", "http://127.0.0.1:1/"))}, tmp_path)
    for i in range(len(phases)):
        for g in groups:
            engine.eval_group(g, i * MINUTE)
        notify.update(engine.alerts(), now=i * 60.0)
        notify.flush(i * 60.0)
    payloads = [json.loads(e.body) for e in notify.outbox.due("ops", 1e12, limit=1000)]
    low_sm = [p for p in payloads if p["groupLabels"] == {"alertname": "GpuSmActivityLow"}]
    assert low_sm and low_sm[0]["status"] == "firing" and low_sm[0]["version"] == "4"
    a = low_sm[0]["alerts"][0]
    assert a["labels"]["gpu"] == "0" and a["annotations"]["summary"].startswith("GPU 0: SM activity")
    assert "gpumon_resolve_when" not in a["annotations"]
    # The alert first fires in the idle phase and resolves once the compute phase lifts the 5-minute
    # average above 70 % (the hysteresis), then fires again in pcie.
    statuses = [p["status"] for p in low_sm]
    assert "resolved" in statuses, statuses
    notify.outbox.close()
