"""`gpumon report`: grouping, totals and the waste share, prices, the three formats, the period, the
state file it reads, and the Prometheus client's settings (auth, TLS, no secret in any message)."""

from __future__ import annotations

import base64
import csv
import io
import json
import time
from pathlib import Path

import pytest

from gpumon import promclient
from gpumon.accounting.cli import parse_time
from gpumon.accounting.db import AccountingDB, Row, open_readonly
from gpumon.accounting.ledger import Amounts, Owner
from gpumon.accounting.report import as_csv, as_json, as_table, build
from gpumon.cli import main
from gpumon.yamlfile import ConfigError

H = 3600.0
ML = Owner("ml", "train-0", "main")
NB = Owner("research", "notebook", "jupyter")
JOB = Owner(job="42", user="alice")


def rows() -> list[tuple[Row, str]]:
    """Host a: GPU 0 held by ml (3 h active, 1 h idle), GPU 1 by a notebook idle 4 h; host b: GPU 0 by
    job 42 (2 h active), free for 2 h."""
    def gpu(host: str, index: int, state: str, hours: float, sm: float = 0.0, kwh: float = 0.0) -> tuple[Row, str]:
        return Row(f"GPU-{host}{index}", index, None, state, "sm_active", hours * H, sm * H, kwh * 3.6e6), host

    def owner(host: str, index: int, who: Owner, state: str, hours: float, sm: float = 0.0,
              kwh: float = 0.0) -> tuple[Row, str]:
        return Row(f"GPU-{host}{index}", index, who, state, "", hours * H, sm * H, kwh * 3.6e6), host
    return [
        gpu("a", 0, "active", 3, sm=2.4, kwh=1.5), gpu("a", 0, "idle_held", 1, kwh=0.1),
        owner("a", 0, ML, "active", 3, sm=2.4, kwh=1.5), owner("a", 0, ML, "idle_held", 1, kwh=0.1),
        gpu("a", 1, "idle_held", 4, kwh=0.4), owner("a", 1, NB, "idle_held", 4, kwh=0.4),
        gpu("b", 0, "active", 2, sm=1.0, kwh=1.0), gpu("b", 0, "idle_free", 2, kwh=0.2),
        owner("b", 0, JOB, "active", 2, sm=1.0, kwh=1.0),
    ]


def test_totals_waste_share_and_the_order_by_waste() -> None:
    report = build(rows(), by="namespace", start=0, end=4 * H, source="test")
    t = report.total
    assert (t.active_h, t.idle_held_h, t.idle_free_h, t.held_h) == (5.0, 5.0, 2.0, 10.0)
    assert report.waste_share == 0.5 and report.idle_share == pytest.approx(7 / 12)
    assert [line.group["namespace"] for line in report.lines] == ["research", "ml", "-"]  # most idle first
    ml = report.lines[1]
    assert (ml.held_h, ml.mean_sm_held) == (4.0, pytest.approx(2.4 / 4))
    assert t.kwh == pytest.approx(3.2)


@pytest.mark.parametrize(("by", "groups"), [
    ("pod", [("research", "notebook"), ("ml", "train-0"), ("-", "-")]),
    ("job", [("-", "-"), ("42", "alice")]),
    ("user", [("-",), ("alice",)]),
    ("gpu", [("a", "1"), ("a", "0"), ("b", "0")]),
    ("host", [("a",), ("b",)]),
])
def test_groupings(by: str, groups: list[tuple[str, ...]]) -> None:
    report = build(rows(), by=by, start=0, end=4 * H, source="test")
    assert [tuple(line.group.values())[:len(groups[0])] for line in report.lines] == groups
    if by in ("gpu", "host"):
        assert sum(line.idle_free_h for line in report.lines) == 2.0


def test_prices() -> None:
    report = build(rows(), by="namespace", start=0, end=4 * H, source="test", price_per_gpu_hour=2.0,
                   price_per_kwh=0.5)
    research = report.lines[0]
    assert research.cost == pytest.approx(4 * 2.0 + 0.4 * 0.5) and research.idle_cost == 8.0
    assert report.total.idle_cost == 10.0
    assert "cost 21.60 (idle 10.00)" in as_table(report)


def test_the_three_formats() -> None:
    report = build(rows(), by="pod", start=0, end=4 * H, source="this host")
    table = as_table(report)
    assert table.splitlines()[1].startswith("Total: 12.000 GPU-hours, 10.000 held, 5.000 active, 5.000 held idle")
    assert "waste (idle share of held) 50.0 %" in table
    assert "notebook" in table.splitlines()[4]  # header, then the biggest waste first
    doc = json.loads(as_json(report))
    assert doc["waste_share"] == 0.5 and doc["groups"][0]["pod"] == "notebook"
    assert doc["groups"][0]["idle_held_h"] == 4.0
    records = list(csv.DictReader(io.StringIO(as_csv(report))))
    assert records[0]["pod"] == "notebook" and float(records[0]["held_h"]) == 4.0


def test_an_empty_period_says_so() -> None:
    assert "(no GPU time accounted in this period)" in as_table(build([], by="namespace", start=0, end=1,
                                                                     source="test"))


def test_times() -> None:
    assert parse_time("1796400000") == 1796400000.0
    assert parse_time("2026-12-01T00:00:00Z") == parse_time("2026-12-01") == 1796083200.0
    with pytest.raises(ValueError, match="not a time"):
        parse_time("last tuesday")


def test_the_local_report_reads_the_state_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = AccountingDB(tmp_path / "accounting.sqlite")
    now = time.time()
    bucket = int(now // 60 * 60) - 120
    db.write({(bucket, ("GPU-a", 0, None, "idle_held", "sm_active")): Amounts(60.0, 0.0, 600.0),
              (bucket, ("GPU-a", 0, NB, "idle_held", "")): Amounts(60.0, 0.0, 600.0)}, {})
    db.close()
    assert main(["report", "--state-dir", str(tmp_path), "--since", "1h", "--by", "pod", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["groups"][0]["pod"] == "notebook" and doc["groups"][0]["idle_held_h"] == pytest.approx(60 / H)
    assert main(["report", "--state-dir", str(tmp_path / "none")]) == 1
    assert "no accounting in" in capsys.readouterr().err
    assert main(["report", "--state-dir", str(tmp_path), "--from", "2026-12-02", "--to", "2026-12-01"]) == 1
    assert "the period is empty" in capsys.readouterr().err


def test_pruning_keeps_the_gpus_totals(tmp_path: Path) -> None:
    db = AccountingDB(tmp_path / "accounting.sqlite")
    db.write({(0, ("GPU-a", 0, None, "active", "sm_active")): Amounts(5, 1, 1),
              (0, ("GPU-a", 0, ML, "active", "")): Amounts(5, 1, 1)},
             {("GPU-a", 0, ML, "active", ""): 100.0})
    db.prune(before=1000.0)
    assert [k[2] for k, _, _ in db.totals(seen_after=0)] == [None]
    assert db.usage(0, 10) == []
    db.close()
    readonly = open_readonly(tmp_path)
    assert readonly is not None and readonly.usage(0, 10) == []


def test_http_settings_as_promtool_reads_them(tmp_path: Path) -> None:
    (tmp_path / "password").write_text("s3cret\n")
    (tmp_path / "http.yml").write_text(f"basic_auth: {{username: ops, password_file: {tmp_path / 'password'}}}\n"
                                       "tls_config: {insecure_skip_verify: true}\n")
    http = promclient.http_settings(tmp_path / "http.yml")
    assert http.headers["Authorization"] == "Basic " + base64.b64encode(b"ops:s3cret").decode()
    assert http.context is not None and not http.context.check_hostname
    (tmp_path / "token").write_text("tok\n")
    (tmp_path / "bearer.yml").write_text(f"authorization: {{credentials_file: {tmp_path / 'token'}}}\n")
    assert promclient.http_settings(tmp_path / "bearer.yml").headers["Authorization"] == "Bearer tok"
    (tmp_path / "bad.yml").write_text("basic_auth: {username: a}\nproxy_url: http://x\n")
    with pytest.raises(ConfigError, match="proxy_url: unknown key"):
        promclient.http_settings(tmp_path / "bad.yml")


def test_a_failing_prometheus_is_a_sentence_without_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.support.net import free_port

    url = f"http://ops:hunter2@127.0.0.1:{free_port()}/"
    assert main(["report", "--prometheus", url, "--since", "1h"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gpumon report: cannot query Prometheus at http://") and "hunter2" not in err
