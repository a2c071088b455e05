"""The daemon on the shared-GPU capture with a kubelet, /proc and a job mapping: /metrics names the
pod, namespace, container, process and job of each busy GPU, and an alert on a GPU reaches a webhook
with its owner."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.procs import generate
from tests.support.attribution import BACKEND, JOB, POD, attributed_host
from tests.support.processes import Gpumon
from tests.support.webhook import WebhookReceiver

pytestmark = pytest.mark.integration

# The documented pattern (docs/attribution.md), firing at once on any GPU a process holds.
RULES = """groups:
  - name: owners
    rules:
      - alert: Held
        expr: >-
          (max by (instance, uuid, owner_namespace, owner_pod, owner_container) (gpumon_gpu_owner_info)
           or on(instance, uuid) max by (instance, uuid, job_id, user) (gpumon_gpu_job_info))
          * on(instance, uuid) group_left(gpu, job) (gpumon_compute_processes > 0)
          or on(instance, uuid) (gpumon_compute_processes > 0)
"""


def info(body: bytes, name: str) -> list[dict[str, str]]:
    return [s.labels for f in text_string_to_metric_families(body.decode()) for s in f.samples if s.name == name]


def owned(received: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """The latest labels of each GPU's alert, once both carry an owner."""
    return {a["labels"]["gpu"]: a["labels"] for p in received for a in p["alerts"]
            if a["labels"].get("owner_pod") or a["labels"].get("job_id")}


def test_metrics_and_alerts_name_who_is_on_each_gpu(tmp_path: Path) -> None:
    (tmp_path / "r.yml").write_text(RULES)
    config = tmp_path / "gpumon.yaml"
    with WebhookReceiver() as hook, attributed_host(tmp_path) as attribution:
        config.write_text(f"""
rules: {{files: ["r.yml"], evaluation_interval: 500ms}}
metrics: {{process_pids: true}}
notify:
  receivers: [{{name: team, webhook: {{url: "{hook.url}"}}}}]
  route: {{receiver: team, group_by: [alertname, gpu], group_wait: 200ms, group_interval: 1s}}
{attribution}""")
        with Gpumon(tmp_path, "--config", str(config), "--fast-interval", "500ms", backend=BACKEND) as g:
            deadline = time.monotonic() + 20
            # The kubelet answers on its own task: the first alerts may come before it, ownerless.
            while len(owned(hook.received)) < 2:
                assert time.monotonic() < deadline, g.log
                time.sleep(0.2)
            _, body = g.get("/metrics")
            log = g.log
    owners = info(body, "gpumon_gpu_owner_info")
    assert [(o["gpu"], o["owner_namespace"], o["owner_pod"], o["owner_container"]) for o in owners] == [
        ("0", "ml", "trainer-0", "train")]
    jobs = {(j["gpu"], j["job_id"], j["user"], j["origin"]) for j in info(body, "gpumon_gpu_job_info")}
    assert ("1", JOB, "alice", "mapping") in jobs
    assert not [j for j in jobs if j[0] == "1" and j[3] == "cgroup"]  # the mapping wins over its workers' job
    processes = {(p["gpu"], p["pid"]): p for p in info(body, "gpumon_process_info")}
    trainer = processes[("0", str(generate.TRAINER))]
    assert (trainer["name"], trainer["owner_namespace"], trainer["owner_pod"], trainer["owner_container"]) == (
        "python3", "ml", "trainer-0", "train")
    assert processes[("1", "4105")]["job_id"] == "77"  # GPU 1 plays half a trace ahead: busy, with workers
    assert processes[("0", str(generate.DISPLAY))]["name"] == "Xorg"
    by_gpu = owned(hook.received)
    assert (by_gpu["0"]["owner_namespace"], by_gpu["0"]["owner_pod"], by_gpu["0"]["owner_container"]) == (
        "ml", "trainer-0", "train")
    assert (by_gpu["1"]["job_id"], by_gpu["1"]["user"]) == (JOB, "alice")
    assert '"level": "error"' not in log, log
    assert POD.uid not in log  # owners are labels, not log noise
