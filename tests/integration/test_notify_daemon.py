"""Notifications from the running daemon, and Alertmanager's own view of gpumon's fingerprints."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from gpumon.notify.payload import fingerprint
from tests.conftest import free_port
from tests.integration.processes import Alertmanager, Gpumon

pytestmark = pytest.mark.integration


def test_fingerprints_equal_alertmanagers(tmp_path: Path) -> None:
    labelsets = [{"alertname": "GpuLost", "gpu": "0", "uuid": "GPU-5d0c1a2e"},
                 {"alertname": "A", "severity": "critical", "text": 'é "quoted" \n'}, {"alertname": "B"}]
    with Alertmanager(tmp_path) as am:
        body = json.dumps([{"labels": ls} for ls in labelsets]).encode()
        request = urllib.request.Request(f"{am.url}/api/v2/alerts", body, {"Content-Type": "application/json"})
        assert urllib.request.urlopen(request, timeout=5).status == 200
        with urllib.request.urlopen(f"{am.url}/api/v2/alerts", timeout=5) as r:
            got = {json.dumps(a["labels"], sort_keys=True): a["fingerprint"] for a in json.load(r)}
    for ls in labelsets:
        assert got[json.dumps(ls, sort_keys=True)] == fingerprint(ls)


class Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append({"id": self.headers["webhook-id"], **json.loads(body)})
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_daemon_delivers_firing_alerts_to_a_webhook(tmp_path: Path) -> None:
    port = free_port()
    server = HTTPServer(("127.0.0.1", port), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rules = tmp_path / "r.yml"
    rules.write_text("groups:\n  - name: g\n    rules:\n      - alert: Up\n        expr: gpumon_gpu_up == 1\n"
                     "        labels: {severity: info}\n")
    (tmp_path / "url").write_text(f"http://127.0.0.1:{port}/hook\n")
    config = tmp_path / "gpumon.yaml"
    config.write_text("""
rules: {files: ["r.yml"], evaluation_interval: 500ms}
notify:
  receivers:
    - name: ops
      webhook: {url_file: url}
  route: {receiver: ops, group_by: [alertname], group_wait: 500ms, group_interval: 5m, repeat_interval: 4h}
""")
    try:
        with Gpumon(tmp_path, "--config", str(config)) as g:
            deadline = time.monotonic() + 15
            while not Hook.received:
                assert time.monotonic() < deadline, g.log
                time.sleep(0.1)
            time.sleep(1.5)
            _, metrics = g.get("/metrics")
    finally:
        server.shutdown()
    (payload,) = Hook.received  # one group, one notification
    assert payload["version"] == "4" and payload["status"] == "firing" and payload["receiver"] == "ops"
    assert payload["alerts"][0]["labels"] == {"alertname": "Up", "gpu": "0", "severity": "info",
                                              "uuid": "GPU-5d0c1a2e-0000-4000-8000-00000000c0de"}
    assert payload["id"].startswith("msg_")
    assert b'gpumon_notifications_sent_total{receiver="ops"} 1.0' in metrics
    assert f"127.0.0.1:{port}".encode() not in metrics


def test_alerts_pushed_to_a_real_alertmanager_fire_and_resolve(tmp_path: Path) -> None:
    rules = tmp_path / "r.yml"
    rules.write_text("groups:\n  - name: g\n    rules:\n      - alert: PcieCopies\n"
                     "        expr: gpumon_replay_phase{phase=\"pcie\"} == 1\n        labels: {severity: info}\n")
    with Alertmanager(tmp_path) as am:
        config = tmp_path / "gpumon.yaml"
        config.write_text(f'rules: {{files: ["r.yml"], evaluation_interval: 250ms}}\n'
                          f'notify: {{alertmanagers: ["{am.url}"]}}\n')
        with Gpumon(tmp_path, "--config", str(config), "--fast-interval", "250ms",
                    backend="replay:demo,loop,speed=4"):
            seen = wait_for_alertmanager(am.url, present=True)
            assert seen["labels"]["phase"] == "pcie" and seen["labels"]["alertname"] == "PcieCopies"
            assert seen["status"]["state"] == "active"
            wait_for_alertmanager(am.url, present=False)  # the phase ended: gpumon sent the resolution


def wait_for_alertmanager(url: str, present: bool, timeout: float = 25.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=5) as r:
            alerts = [a for a in json.load(r) if a["labels"].get("alertname") == "PcieCopies"]
        if bool(alerts) == present:
            return alerts[0] if alerts else {}
        assert time.monotonic() < deadline, f"alert {'never arrived' if present else 'never resolved'}"
        time.sleep(0.2)


def test_silences_api(tmp_path: Path) -> None:
    with Gpumon(tmp_path) as g:
        def call(method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
            data = json.dumps(body).encode() if body is not None else None
            req = urllib.request.Request(g.url + path, data, {"Content-Type": "application/json"}, method=method)
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return r.status, json.load(r)
            except urllib.error.HTTPError as exc:
                return exc.code, json.load(exc)
        status, created = call("POST", "/api/v1/silences", {"matchers": ['alertname="GpuLost"'], "duration": "2h",
                                                             "comment": "reseating GPU 3", "createdBy": "ops"})
        assert status == 200 and created["data"]["status"]["state"] == "active"
        status, bad = call("POST", "/api/v1/silences", {"matchers": ["x=~("], "duration": "1h", "comment": "c"})
        assert status == 400 and "invalid regular expression" in bad["error"]
        status, listed = call("GET", "/api/v1/silences")
        assert [s["comment"] for s in listed["data"]] == ["reseating GPU 3"]
        assert call("DELETE", f"/api/v1/silences/{created['data']['id']}")[0] == 200
        assert call("GET", "/api/v1/silences")[1]["data"][0]["status"]["state"] == "expired"
        assert call("DELETE", "/api/v1/silences/nope")[0] == 404


def test_kill_9_during_a_receiver_outage_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()  # nothing listens here yet: the receiver is down
    monkeypatch.setenv("GPUMON_TEST_HOOK_URL", f"http://127.0.0.1:{port}/hook")
    (tmp_path / "r.yml").write_text("groups:\n  - name: g\n    rules:\n      - alert: Up\n"
                                    "        expr: gpumon_gpu_up == 1\n")
    config = tmp_path / "gpumon.yaml"
    config.write_text("""
rules: {files: ["r.yml"], evaluation_interval: 500ms}
notify:
  receivers: [{name: ops, webhook: {url_file: "env:GPUMON_TEST_HOOK_URL"}}]
  route: {receiver: ops, group_wait: 200ms}
""")
    with Gpumon(tmp_path, "--config", str(config)) as g:
        deadline = time.monotonic() + 15
        while b'gpumon_notifications_retried_total{receiver="ops"} 0.0' in g.get("/metrics")[1] or \
                b'gpumon_notifications_retried_total{receiver="ops"}' not in g.get("/metrics")[1]:
            assert time.monotonic() < deadline, g.log
            time.sleep(0.2)
        assert g.proc is not None
        g.proc.kill()  # kill -9 with the notification queued and failing
        g.proc.wait()
    Hook.received = []
    server = HTTPServer(("127.0.0.1", port), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (tmp_path / "r.yml").write_text("groups: []\n")  # after the restart nothing new fires
        with Gpumon(tmp_path, "--config", str(config)):
            deadline = time.monotonic() + 20
            while not Hook.received:
                assert time.monotonic() < deadline, "the queued notification was not delivered"
                time.sleep(0.2)
    finally:
        server.shutdown()
    (payload,) = Hook.received
    assert payload["alerts"][0]["labels"]["alertname"] == "Up"
