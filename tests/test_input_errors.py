"""Input that used to mislead: `--check-config` passing what `run` then refused, rule expressions that
crashed the loader, capture values reported as a lost GPU, silences with impossible times, URLs whose
secrets leaked, and library tracebacks in the log."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpumon.cli import main
from gpumon.notify.silences import SilenceError, Silences, parse_request
from gpumon.notify.urls import header_problem, redacted, url_problem
from gpumon.sources.replay import DEMO_CAPTURE


def check(capsys: pytest.CaptureFixture[str], config: Path) -> tuple[int, str]:
    code = main(["run", "--config", str(config), "--check-config"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize(("receiver", "files", "says"), [
    ("{webhook: {url_file: missing}}", {}, "notify.receivers[ops].webhook.url_file: cannot read"),
    ("{webhook: {url_file: url}}", {"url": "not a url at all"},
     "notify.receivers[ops].webhook.url_file: the URL in it contains whitespace"),
    ("{webhook: {url_file: url}}", {"url": "http://[::1"}, "the URL in it is not a valid URL"),
    ("{webhook: {url: 'http://[::1'}}", {},
     "gpumon.yaml:2: notify.receivers.0.webhook.url: the URL is not a valid URL"),
    ("{webhook: {url: 'ftp://host/x'}}", {}, "must start with http:// or https://"),
    ("{webhook: {url: 'http://h/', headers: {X-A: \"a\\r\\nInjected: 1\"}}}", {}, "has a line break"),
    ("{webhook: {url: 'http://h/', headers: {'Bad Name': v}}}", {}, "not a valid HTTP header name"),
    ("{webhook: {url: 'http://h/', signing_secret_file: s}}", {"s": "whsec_!!!notbase64"},
     "notify.receivers[ops].webhook.signing_secret_file: a whsec_ secret must be base64"),
    ("{slack: {url_file: url}}", {"url": "http://"}, "notify.receivers[ops].slack.url_file: the URL in it has no host"),
])
def test_check_config_refuses_what_run_would(tmp_path: Path, capsys: pytest.CaptureFixture[str], receiver: str,
                                             files: dict[str, str], says: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    config = tmp_path / "gpumon.yaml"
    config.write_text(f"notify:\n  receivers: [{{name: ops, {receiver[1:]}]\n  route: {{receiver: ops}}\n")
    code, out = check(capsys, config)
    assert code == 1 and says in out, out
    assert "Traceback" not in out and "internal error" not in out
    if "url" in files:
        assert files["url"] not in out or files["url"] == "http://"  # a URL file is a secret: never echoed


def test_check_config_reads_the_mqtt_password_relative_to_the_file(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    config = conf / "gpumon.yaml"
    config.write_text("notify:\n  mqtt: {broker: 'localhost:1883', password_file: secrets/mqtt}\n")
    code, out = check(capsys, config)
    assert code == 1 and f"notify.mqtt.password_file: cannot read {conf / 'secrets' / 'mqtt'}" in out
    (conf / "secrets").mkdir()
    (conf / "secrets" / "mqtt").write_text("pw\n")
    os.chdir(tmp_path)  # not the config file's directory
    assert check(capsys, config)[0] == 0


def test_check_config_prints_each_routes_grouping(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "gpumon.yaml"
    config.write_text("notify:\n  receivers: [{name: ops, webhook: {url: 'http://h/'}}]\n  route:\n    receiver: ops\n"
                      "    routes: [{matchers: ['severity=\"page\"'], group_by: [alertname, gpu]}]\n")
    code, out = check(capsys, config)
    assert code == 0
    assert "route {} -> ops: all alerts in one group" in out
    assert 'route {}/{severity="page"}/0 -> ops: grouped by alertname, gpu' in out


def test_a_fifo_as_the_configuration_is_refused_not_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "gpumon.yaml"
    os.mkfifo(fifo)
    code, out = check(capsys, fifo)  # reading it would block for ever
    assert code == 1 and "not a regular file" in out


@pytest.mark.parametrize(("rule", "says"), [
    ("  interval: 99999999999999999999999999d\n  rules:\n  - record: x\n    expr: vector(1)\n",
     "groups[0].interval: duration out of range"),
    ("  rules:\n  - alert: x\n    for: 300y\n    expr: vector(1)\n", "groups[0].rules[0].for: duration out of range"),
    ("  rules:\n  - record: x\n    expr: " + "(" * 5000 + "1" + ")" * 5000 + "\n", "nests more than 128 levels"),
    ("  rules:\n  - record: x\n    expr: " + "+".join(["1"] * 3000) + "\n", "nests more than 128 levels"),
])
def test_rule_files_that_crashed_the_loader_get_a_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           rule: str, says: str) -> None:
    path = tmp_path / "r.yml"
    path.write_text("groups:\n- name: g\n" + rule)
    code = main(["rules", "check", str(path)])
    out = "".join(capsys.readouterr())
    assert code == 1 and says in out and "RecursionError" not in out


def test_a_bad_value_in_a_capture_names_record_and_field_and_fails(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("probe.json", "phases.json"):
        (tmp_path / name).write_text((DEMO_CAPTURE / name).read_text())
    lines = (DEMO_CAPTURE / "trace.jsonl").read_text().splitlines()
    record = json.loads(lines[3])
    record["mem"]["used"] = "lots"
    lines[3] = json.dumps(record)
    (tmp_path / "trace.jsonl").write_text("\n".join(lines) + "\n")
    code = main(["snapshot", "--backend", f"replay:{tmp_path}"])
    out = "".join(capsys.readouterr())
    assert code == 2 and f"{tmp_path / 'trace.jsonl'}:4: field 'mem.used' is \"lots\", not a number" in out


@pytest.mark.parametrize("body", [
    {"endsAt": float("inf")}, {"endsAt": 1e308}, {"duration": "99999999999999999999999d"},
    {"startsAt": -1e20, "duration": "1h"}, {"endsAt": "9999999-01-01T00:00:00Z"}, {"endsAt": True},
    {"duration": "8d"}, {"matchers": ['job=~".*"']}, {"matchers": [""]}, {"matchers": ['a="\ud800"']},
    {"comment": "x" * 5000}, {"createdBy": 7},
])
def test_silences_with_impossible_times_or_sizes_are_refused(body: dict[str, object]) -> None:
    request = {"matchers": ['alertname="A"'], "duration": "1h", "comment": "c", **body}
    if "endsAt" in body:
        request.pop("duration")
    with pytest.raises(SilenceError):
        parse_request(request, time.time())


def test_expired_silences_are_purged_after_retention(tmp_path: Path) -> None:
    silences = Silences(tmp_path / "s.sqlite")
    now = time.time()
    old = silences.add(*parse_request({"matchers": ['a="1"'], "duration": "1h", "comment": "c"}, now - 6 * 86400),
                       now=now - 6 * 86400)
    recent = silences.add(*parse_request({"matchers": ['a="1"'], "duration": "1h", "comment": "c"}, now), now=now)
    silences.close()
    again = Silences(tmp_path / "s.sqlite")
    assert [s.id for s in again.all()] == [recent.id] and old.id != recent.id


def test_urls_are_checked_and_shown_without_secrets() -> None:
    assert url_problem("http://[::1") and url_problem("not a url at all") and url_problem("http://h:0/")
    assert url_problem("https://hooks.slack.com/services/T/B/x") is None
    assert header_problem("X-A", "a\r\nb") and header_problem("X A", "v") and header_problem("X-A", "v") is None
    assert redacted("https://u:p@hooks.example:8443/T0/secret?token=x") == "https://hooks.example:8443/..."
    assert redacted("http://u:p@am:9093/base?x=1", keep_path=True) == "http://am:9093/base"


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    """gpumon's logging, writing to this test's captured stderr; everything restored afterwards."""
    import structlog

    from gpumon import logs

    saved, handlers, level = structlog.get_config(), logging.getLogger().handlers, logging.getLogger().level
    logs.configure("info", "json")
    try:
        yield
    finally:
        structlog.configure(**saved)
        logging.getLogger().handlers, logging.getLogger().level = handlers, level
        logs.RATE_LIMIT.reset()


def test_library_errors_are_one_line_and_repeats_are_limited(json_logs: None,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from gpumon import logs

    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("aiohttp.server").exception("Error handling request")
    for _ in range(50):
        logging.getLogger("asyncio").error("socket.accept() out of system resource")
    lines = capsys.readouterr().err.splitlines()
    first = json.loads(lines[0])
    assert first["event"] == "Error handling request" and first["error"] == "ValueError: boom"
    assert len(lines) <= 1 + logs.BURST and all(line.startswith("{") for line in lines)
    assert logs.RATE_LIMIT.suppressed >= 50 - logs.BURST
