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
from tests.support.net import free_port
from tests.support.processes import Alertmanager, Gpumon

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
        assert status == 400 and "error parsing regexp: missing closing )" in bad["error"]
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


def test_reload_changes_receivers_and_routes_without_renotifying(tmp_path: Path) -> None:
    """SIGHUP: a new receiver on a new route gets its alerts; the unchanged route's group is not
    notified again; a reload whose secret file is missing keeps the running receivers."""
    import signal

    received: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}

    def hook(name: str) -> type[BaseHTTPRequestHandler]:
        class One(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received[name].append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass
        return One

    servers = {n: HTTPServer(("127.0.0.1", free_port()), hook(n)) for n in received}
    for server in servers.values():
        threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp_path / "r.yml").write_text(
        "groups:\n  - name: g\n    rules:\n      - alert: Up\n        expr: gpumon_gpu_up == 1\n"
        "      - alert: Hot\n        expr: gpumon_gpu_temperature_celsius > 0\n")
    (tmp_path / "a").write_text(f"http://127.0.0.1:{servers['a'].server_port}/\n")
    (tmp_path / "b").write_text(f"http://127.0.0.1:{servers['b'].server_port}/\n")
    config = tmp_path / "gpumon.yaml"
    common = ('rules: {files: ["r.yml"], evaluation_interval: 250ms}\nnotify:\n  receivers:\n'
              '    - {name: a, webhook: {url_file: a}}\n')
    config.write_text(common + "  route: {receiver: a, group_by: [alertname], group_wait: 100ms, "
                               "group_interval: 200ms, repeat_interval: 4h}\n")

    def wait(name: str, count: int, g: Gpumon) -> None:
        deadline = time.monotonic() + 15
        while len(received[name]) < count:
            assert time.monotonic() < deadline, (received, g.log)
            time.sleep(0.1)

    try:
        with Gpumon(tmp_path, "--config", str(config)) as g:
            wait("a", 2, g)  # Up and Hot, a group each
            assert {p["groupLabels"]["alertname"] for p in received["a"]} == {"Up", "Hot"}
            config.write_text(common + "    - {name: b, webhook: {url_file: b}}\n"
                              "  route:\n    receiver: a\n    group_by: [alertname]\n    group_wait: 100ms\n"
                              "    group_interval: 200ms\n    repeat_interval: 4h\n"
                              '    routes: [{receiver: b, matchers: [alertname="Hot"]}]\n')
            g.signal(signal.SIGHUP)
            wait("b", 1, g)  # Hot now goes to b
            assert received["b"][0]["groupLabels"] == {"alertname": "Hot"}
            (tmp_path / "b").unlink()
            g.signal(signal.SIGHUP)  # b's URL file is gone: the reload fails, b stays
            deadline = time.monotonic() + 10
            while "reload failed" not in g.log:
                assert time.monotonic() < deadline, g.log
                time.sleep(0.1)
            time.sleep(1.0)  # several group intervals
            _, metrics = g.get("/metrics")
    finally:
        for server in servers.values():
            server.shutdown()
    assert len(received["a"]) == 2  # Up's group kept its state across both reloads: not notified again
    assert len(received["b"]) == 1
    assert b'gpumon_notifications_sent_total{receiver="b"} 1.0' in metrics
