"""Attacks on a running gpumon, each one that used to work: a catastrophic regex in a silence, a
cross-site POST, silences with impossible times or sizes, credentials in an Alertmanager URL, slow
connections under a low file limit, a reload that dropped scrapes, a full state disk, and restarts
that re-paged or forgot resolutions. (docs/security.md is the threat model these test.)"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from tests.support.net import free_port
from tests.support.processes import Gpumon, http_get, wait_for
from tests.support.webhook import WebhookReceiver

pytestmark = pytest.mark.integration


def call(url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None,
         raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data, hdrs, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, text = r.status, r.read()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


UP_RULE = "groups:\n  - name: g\n    rules:\n      - alert: Up\n        expr: gpumon_gpu_up == 1\n"
SILENCE = {"matchers": ['alertname="GpuLost"'], "duration": "2h", "comment": "maintenance", "createdBy": "ops"}


def test_a_catastrophic_regex_silence_cannot_hang_the_daemon(tmp_path: Path) -> None:
    """`(.*-?)*Z` against a GPU UUID is exponential for a backtracking engine: this used to pin the
    event loop for good, through restarts."""
    (tmp_path / "r.yml").write_text(UP_RULE)
    config = tmp_path / "gpumon.yaml"
    config.write_text("rules: {files: [r.yml], evaluation_interval: 200ms}\nnotify:\n  receivers: "
                      "[{name: ops, webhook: {url: 'http://127.0.0.1:1/'}}]\n"
                      "  route: {receiver: ops, group_wait: 0s}\n")
    evil = {**SILENCE, "matchers": ['uuid=~"(.*-?)*Z"']}
    with Gpumon(tmp_path, "--config", str(config)) as g:
        status, created = call(g.url + "/api/v1/silences", "POST", evil)
        assert status == 200, created
        time.sleep(1.0)  # several evaluations match every firing alert against it
        for path in ("/metrics", "/-/healthy", "/api/v1/silences"):
            started = time.monotonic()
            assert g.get(path)[0] == 200
            assert time.monotonic() - started < 2
        assert g.proc is not None
        g.signal(signal.SIGTERM)
        g.proc.wait(10)  # SIGTERM is heard
    with Gpumon(tmp_path, "--config", str(config)) as again:  # the silence persists; the restart is fine
        assert again.get("/metrics")[0] == 200


def test_writes_need_json_and_refuse_cross_site_and_rebinding(tmp_path: Path) -> None:
    with Gpumon(tmp_path) as g:
        url = g.url + "/api/v1/silences"
        text = json.dumps(SILENCE).encode()
        # what a web page can send without a CORS preflight: a text/plain "simple" POST
        assert call(url, "POST", raw=text, headers={"Content-Type": "text/plain"})[0] == 415
        assert call(url, "POST", SILENCE, headers={"Origin": "http://evil.example"})[0] == 403
        assert call(url, "POST", SILENCE, headers={"Sec-Fetch-Site": "cross-site"})[0] == 403
        # DNS rebinding: evil.example resolved to 127.0.0.1, so the browser sends its own name as Host
        assert call(url, "POST", SILENCE, headers={"Host": f"evil.example:{g.port}"})[0] == 403
        assert call(url, "POST", SILENCE, headers={"Origin": g.url})[0] == 200  # the console's own origin
        assert call(url + "/nope", "DELETE", headers={"Origin": "http://evil.example"})[0] == 403
        assert len(call(url)[1]["data"]) == 1


def _on_all_interfaces(g: Gpumon) -> Gpumon:
    g.args[g.args.index("--listen") + 1] = f"0.0.0.0:{g.port}"
    return g


def test_writes_are_refused_on_an_open_port_without_auth_and_allowed_with_it(tmp_path: Path) -> None:
    with _on_all_interfaces(Gpumon(tmp_path)) as g:  # listens beyond loopback, no auth
        status, body = call(g.url + "/api/v1/silences", "POST", SILENCE)
        assert status == 403 and "basic auth" in body["error"]
        assert call(g.url + "/api/v1/silences")[0] == 200  # reading stays open
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "web.yml").write_text(f"basic_auth_users:\n  ops: '{hashed}'\n")
    auth = {"Authorization": "Basic b3BzOnB3"}  # ops:pw
    gpumon = _on_all_interfaces(Gpumon(tmp_path, "--web-config", str(tmp_path / "web.yml")))
    with _authed_ready(gpumon, auth):
        assert call(gpumon.url + "/api/v1/silences", "POST", SILENCE, headers=auth)[0] == 200


class _authed_ready:
    """Gpumon behind basic auth: readiness is polled with credentials."""

    def __init__(self, g: Gpumon, auth: dict[str, str]) -> None:
        self.g, self.auth = g, auth

    def __enter__(self) -> Gpumon:
        self.g._log = self.g.log_path.open("wb")
        self.g.proc = subprocess.Popen([sys.executable, "-m", "gpumon", *self.g.args], stdout=self.g._log,
                                       stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if call(self.g.url + "/-/ready", headers=self.auth)[0] == 200:
                    return self.g
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(self.g.log)

    def __exit__(self, *exc: Any) -> None:
        self.g.__exit__(None, None, None)


def test_impossible_times_and_oversized_silences_are_refused_and_listing_survives(tmp_path: Path) -> None:
    config = tmp_path / "gpumon.yaml"
    config.write_text("notify: {silences: {max_silences: 20}}\n")
    with Gpumon(tmp_path, "--config", str(config)) as g:
        url = g.url + "/api/v1/silences"
        for bad in ({"endsAt": "Infinity"}, {"endsAt": 1e308}, {"duration": "99999999999999999999999d"},
                    {"startsAt": -1e20, "duration": "1h"}, {"duration": "30d"}, {"endsAt": 1.0},
                    {"matchers": ['alertname=~".*"']}):
            body = {**SILENCE, **bad}
            body.pop("duration", None) if "endsAt" in bad else None
            status, answer = call(url, "POST", body)
            assert status == 400, (bad, answer)
        raw = b'{"matchers": ["alertname=\\"x\\""], "endsAt": Infinity, "comment": "c"}'  # Python's json takes it
        assert call(url, "POST", raw=raw)[0] == 400
        huge = {**SILENCE, "matchers": ['a="' + "x" * 1_000_000 + '"']}
        assert call(url, "POST", huge)[0] == 413
        assert call(url, "POST", {**SILENCE, "comment": "y" * 5000})[0] == 400
        for _ in range(20):
            assert call(url, "POST", SILENCE)[0] == 200
        status, answer = call(url, "POST", SILENCE)
        assert status == 400 and "max_silences" in answer["error"]
        status, listed = call(url)
        assert status == 200 and len(listed["data"]) == 20


def test_a_bad_silence_row_on_disk_is_skipped_not_served(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    db = sqlite3.connect(state / "silences.sqlite")
    db.execute("CREATE TABLE silences (id TEXT PRIMARY KEY, matchers TEXT NOT NULL, starts_at REAL NOT NULL, "
               "ends_at REAL NOT NULL, comment TEXT NOT NULL, created_by TEXT NOT NULL)")
    db.execute("INSERT INTO silences VALUES ('bad', '[\"alertname=~\\\".+\\\"\"]', 0, 1e308, 'x', 'attacker')")
    db.execute("INSERT INTO silences VALUES ('ok', '[\"gpu=\\\"3\\\"\"]', ?, ?, 'y', 'ops')",
               (time.time(), time.time() + 3600))
    db.commit()
    db.close()
    with Gpumon(tmp_path) as g:
        status, listed = call(g.url + "/api/v1/silences")
    assert status == 200 and [s["id"] for s in listed["data"]] == ["ok"]
    assert "skipping an invalid silence" in g.log


def test_alertmanager_credentials_reach_neither_log_nor_metrics(tmp_path: Path) -> None:
    port = free_port()  # nothing listens: every push fails and is logged
    config = tmp_path / "gpumon.yaml"
    config.write_text(f"rules: {{files: [r.yml], evaluation_interval: 200ms}}\n"
                      f"notify: {{alertmanagers: ['http://admin:hunter2@127.0.0.1:{port}/am?token=s3cret']}}\n")
    (tmp_path / "r.yml").write_text(UP_RULE)
    with Gpumon(tmp_path, "--config", str(config)) as g:
        deadline = time.monotonic() + 15
        while b"gpumon_alertmanager_push_failures_total{" not in (metrics := g.get("/metrics")[1]):
            assert time.monotonic() < deadline, g.log
            time.sleep(0.1)
        assert "push to Alertmanager failed" in g.log
    for secret in ("hunter2", "admin", "s3cret"):
        assert secret not in g.log and secret.encode() not in metrics
    assert f'alertmanager="http://127.0.0.1:{port}/am"'.encode() in metrics


def _low_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def test_slow_connections_under_a_low_file_limit_cannot_lock_out_scrapers(tmp_path: Path) -> None:
    """Slowloris: 400 connections that never finish their headers, against a process that may open
    256 files. This used to make /metrics unreachable and write 86 MB of tracebacks."""
    g = Gpumon(tmp_path)
    g._log = g.log_path.open("wb")
    g.proc = subprocess.Popen([sys.executable, "-m", "gpumon", *g.args], stdout=g._log, stderr=subprocess.STDOUT,
                              preexec_fn=_low_file_limit)
    sockets: list[socket.socket] = []
    try:
        wait_for(f"{g.url}/-/ready", proc=g.proc)
        for _ in range(400):
            s = socket.socket()
            s.settimeout(5)
            try:
                s.connect(("127.0.0.1", g.port))
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            except OSError:
                s.close()
                continue
            sockets.append(s)
        ok = 0
        for _ in range(20):
            try:
                if http_get(g.url + "/metrics", timeout=5)[0] == 200:
                    ok += 1
            except OSError:
                pass
        assert ok == 20
        _, metrics = http_get(g.url + "/metrics")
        assert b'gpumon_http_connections_closed_total{reason="evicted"}' in metrics
    finally:
        for s in sockets:
            s.close()
        g.__exit__(None, None, None)
    log = g.log_path.read_bytes()
    assert len(log) < 200_000 and b"Traceback" not in log
    assert all(line.startswith(b"{") for line in log.splitlines() if line)  # JSON lines, one per message


def test_a_reload_with_the_same_web_config_drops_no_scrape(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "web.yml").write_text(f"basic_auth_users:\n  ops: '{hashed}'\n")
    config = tmp_path / "gpumon.yaml"
    config.write_text("web: {config_file: web.yml}\n")
    auth = {"Authorization": "Basic b3BzOnB3"}
    g = Gpumon(tmp_path, "--config", str(config))
    failures: list[str] = []
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            try:
                with urllib.request.urlopen(urllib.request.Request(g.url + "/metrics", headers=auth), timeout=5):
                    pass
            except (OSError, urllib.error.HTTPError) as exc:
                failures.append(repr(exc))
            time.sleep(0.01)

    with _authed_ready(g, auth):
        scraper = threading.Thread(target=scrape)
        scraper.start()
        for _ in range(5):
            g.signal(signal.SIGHUP)
            time.sleep(0.4)
        done.set()
        scraper.join()
        assert g.log.count("configuration reloaded") == 5
    assert failures == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs for the state directory (mounting needs root)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    path = tmp_path / "state"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


def _until(done: Any, log: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, log()
        time.sleep(0.1)


def test_a_full_state_disk_degrades_and_recovers_without_losing_alerts(tmp_path: Path, small_disk: Path,
                                                                        hook: WebhookReceiver) -> None:
    """Used to stop rule evaluation and delivery for good, silently, with /-/ready at 200."""
    (tmp_path / "r.yml").write_text("groups:\n  - name: g\n    rules:\n"
                                    "      - alert: Tick\n        expr: vector(time() % 4) < 2\n")
    config = tmp_path / "gpumon.yaml"
    config.write_text(f"rules: {{files: [r.yml], evaluation_interval: 200ms}}\nnotify:\n  receivers: "
                      f"[{{name: ops, webhook: {{url: '{hook.url}'}}}}]\n"
                      "  route: {receiver: ops, group_wait: 0s, group_interval: 200ms, repeat_interval: 4h}\n")
    with Gpumon(tmp_path, "--config", str(config), "--state-dir", str(small_disk)) as g:
        filler = small_disk / "filler"
        with filler.open("wb") as f:  # fill the disk to the last block
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        before = len(hook.received)
        _until(lambda: len(hook.received) >= before + 3, lambda: g.log)  # Tick fires and resolves on
        _until(lambda: g.get("/-/ready")[0] == 503, lambda: g.log)
        _, body = g.get("/-/ready")
        assert b"state:" in body and b"full" in body
        _, metrics = g.get("/metrics")
        assert b'gpumon_component_healthy{component="state:' in metrics and b"} 0.0" in metrics
        filler.unlink()
        _until(lambda: g.get("/-/ready")[0] == 200, lambda: g.log)
        count = len(hook.received)
        _until(lambda: len(hook.received) > count, lambda: g.log)  # and delivery goes on
    assert "Traceback" not in g.log


def test_a_restart_neither_re_pages_nor_forgets_a_resolution(tmp_path: Path, hook: WebhookReceiver) -> None:
    """`Up` fires for good; `Tick` fires in the first half of every 8 s. gpumon is killed (-9) after
    both were notified and restarted when Tick's condition has ended: nothing is sent again for Up,
    and Tick's resolution is."""
    (tmp_path / "r.yml").write_text("groups:\n  - name: g\n    rules:\n"
                                    "      - alert: Up\n        expr: gpumon_gpu_up == 1\n"
                                    "      - alert: Tick\n        expr: vector(time() % 8) < 4\n")
    config = tmp_path / "gpumon.yaml"
    config.write_text(f"rules: {{files: [r.yml], evaluation_interval: 200ms}}\nnotify:\n  receivers: "
                      f"[{{name: ops, webhook: {{url: '{hook.url}'}}}}]\n"
                      "  route: {receiver: ops, group_by: [alertname], group_wait: 0s, group_interval: 200ms,"
                      " repeat_interval: 4h}\n")

    def sent(name: str, status: str) -> int:
        return sum(1 for p in hook.received if p["groupLabels"]["alertname"] == name and p["status"] == status)

    while time.time() % 8 > 1:  # start at the beginning of a Tick
        time.sleep(0.05)
    g = Gpumon(tmp_path, "--config", str(config))
    with g:
        _until(lambda: sent("Up", "firing") and sent("Tick", "firing"), lambda: g.log)
        assert g.proc is not None
        g.proc.kill()
        g.proc.wait()
    while time.time() % 8 < 4.2:  # Tick's condition ends while gpumon is down
        time.sleep(0.05)
    with Gpumon(tmp_path, "--config", str(config)) as again:
        _until(lambda: sent("Tick", "resolved") == 1, lambda: again.log, timeout=6)
        time.sleep(1.0)
    assert sent("Up", "firing") == 1
