"""`gpumon doctor --fleet` against answers a Prometheus gives: the straggler query checked by promtool on
a GPU that carries two jobs (MIG instances, Slurm GPU sharing), which Prometheus refused as
many-to-many and took the whole table with it; a failing straggler query marks only that check
unavailable; the straggler column only on hosts where a job was compared across hosts."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gpumon.cli import main
from gpumon.doctor import fleet
from gpumon.doctor.checks import Verdict

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "doctor-fleet.schema.json").read_text())

# Job 77 on host a (busy) and on host b (nearly idle, a straggler); host b's GPU 1 carries jobs 77 and 78
# in two MIG instances, host c's GPU 0 job 78 alone with 79 beside it (Slurm sharing); host d runs job
# 80 alone, compared with no other host.
SERIES = """
      - series: 'gpumon_sm_active_ratio{instance="a",gpu="0"}'
        values: '0.9x10'
      - series: 'gpumon_sm_active_ratio{instance="b",gpu="0"}'
        values: '0.1x10'
      - series: 'gpumon_sm_active_ratio{instance="b",gpu="1"}'
        values: '0.6x10'
      - series: 'gpumon_sm_active_ratio{instance="c",gpu="0"}'
        values: '0.05x10'
      - series: 'gpumon_sm_active_ratio{instance="d",gpu="0"}'
        values: '0.2x10'
      - series: 'gpumon_gpu_job_info{instance="a",gpu="0",job_id="77",origin="mapping"}'
        values: '1x10'
      - series: 'gpumon_gpu_job_info{instance="b",gpu="0",job_id="77",origin="mapping"}'
        values: '1x10'
      - series: 'gpumon_gpu_job_info{instance="b",gpu="1",gpu_instance="1",job_id="77",origin="mapping"}'
        values: '1x10'
      - series: 'gpumon_gpu_job_info{instance="b",gpu="1",gpu_instance="2",job_id="78",origin="mapping"}'
        values: '1x10'
      - series: 'gpumon_gpu_job_info{instance="c",gpu="0",job_id="78",origin="mapping"}'
        values: '1x10'
      - series: 'gpumon_gpu_job_info{instance="c",gpu="0",job_id="79",origin="cgroup"}'
        values: '1x10'
      - series: 'gpumon_gpu_job_info{instance="d",gpu="0",job_id="80",origin="mapping"}'
        values: '1x10'
"""
# JOB_SM's answer at 10m, as promtool's test below checks it.
EXPECTED = [("a", "0", "77", 0.9), ("b", "0", "77", 0.1), ("b", "1", "77", 0.6), ("b", "1", "78", 0.6),
            ("c", "0", "78", 0.05), ("c", "0", "79", 0.05), ("d", "0", "80", 0.2)]


def vector(rows: list[tuple[str, str, str, float]]) -> list[dict[str, Any]]:
    return [{"metric": {"instance": i, "gpu": g, "job_id": j}, "value": [600, str(v)]} for i, g, j, v in rows]


def test_the_straggler_query_takes_a_gpu_with_two_jobs_in_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: run the tests with `make test`, which installs it")
    (tmp_path / "none.yml").write_text("groups: []\n")
    samples = "".join(f"\n          - labels: '{{instance=\"{i}\",gpu=\"{g}\",job_id=\"{j}\"}}'\n"
                      f"            value: {v}" for i, g, j, v in EXPECTED)
    (tmp_path / "test.yml").write_text(f"""rule_files: [none.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:{SERIES}
    promql_expr_test:
      - expr: {json.dumps(fleet.JOB_SM)}
        eval_time: 10m
        exp_samples:{samples}
""")
    done = subprocess.run([promtool, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_shared_gpu_is_not_credited_to_either_job() -> None:
    scan = fleet.find_stragglers(vector(EXPECTED))
    # b's GPU 1 (jobs 77 and 78) is left out: job 77's slowest is b's GPU 0, job 78 is on one host (c's
    # GPU 0 carries 79 too, so it is left out as well), job 80 on one host.
    assert [(s.job_id, s.instance, s.gpu, s.fastest) for s in scan.found] == [("77", "b", "0", 0.9)]
    assert scan.compared == {"a", "b"}


def test_the_straggler_column_only_where_a_job_was_compared_across_hosts() -> None:
    hosts = [fleet.Host(i, {"hardware.ecc": Verdict.OK}, exported=True) for i in "abcd"]
    hosts = fleet.add_stragglers(hosts, fleet.find_stragglers(vector(EXPECTED)))
    cells = {h.instance: h.checks.get(fleet.STRAGGLER_CHECK) for h in hosts}
    assert cells == {"a": Verdict.OK, "b": Verdict.WARN, "c": None, "d": None}
    text = fleet.as_text("http://p:9090", hosts, [])
    row_c = next(line for line in text.splitlines() if line.startswith("c "))
    assert row_c.split()[-1] == "-"
    # No job on two hosts, or no SM activity at all: nobody is ok, nobody warns.
    assert all(fleet.STRAGGLER_CHECK not in h.checks
               for h in fleet.add_stragglers([fleet.Host("a", exported=True)], fleet.find_stragglers([])))


class _Prometheus(http.server.BaseHTTPRequestHandler):
    """Answers the fleet's queries as a Prometheus would: build info for hosts a to d, host b failing a
    check; JOB_SM refused with a 422 as Prometheus 2.42 refused it, or answered from EXPECTED."""

    refuse_job_sm = True

    def do_GET(self) -> None:
        expr = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)["query"][0]
        status, body = 200, {"status": "success", "data": {"resultType": "vector", "result": []}}
        if expr == "gpumon_build_info":
            body["data"]["result"] = [{"metric": {"instance": i}, "value": [0, "1"]} for i in "abcd"]
        elif expr == "gpumon_health_check_status":
            body["data"]["result"] = [{"metric": {"instance": i, "gpu": "0", "check": "hardware.ecc"},
                                       "value": [0, "2" if i == "b" else "0"]} for i in "abcd"]
        elif expr == fleet.JOB_SM and self.refuse_job_sm:
            status, body = 422, {"status": "error", "errorType": "execution",
                                 "error": "found duplicate series for the match group {gpu=\"1\", instance=\"b\"} "
                                          "on the right hand-side of the operation; many-to-many matching not "
                                          "allowed: matching labels must be unique on one side"}
        elif expr == fleet.JOB_SM:
            body["data"]["result"] = vector(EXPECTED)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def prometheus() -> Iterator[tuple[str, type[_Prometheus]]]:
    handler = type("Handler", (_Prometheus,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_a_refused_straggler_query_leaves_the_table_standing(prometheus: tuple[str, type[_Prometheus]],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = prometheus
    assert main(["doctor", "--fleet", url]) == 2  # host b's failing check still counts
    out = capsys.readouterr().out
    assert "4 hosts, 1 failing" in out
    assert "workload.straggler_across_hosts: not checked: Prometheus at http://127.0.0.1:" in out
    assert "answered 422 Unprocessable Entity: found duplicate series" in out  # Prometheus's own words
    assert main(["doctor", "--fleet", url, "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    jsonschema.validate(doc, SCHEMA)
    assert [h["instance"] for h in doc["hosts"]] == ["b", "a", "c", "d"]
    assert "many-to-many" in doc["unavailable"][fleet.STRAGGLER_CHECK]
    # The straggler check alone, refused: nothing was checked.
    assert main(["doctor", "--fleet", url, "--only", fleet.STRAGGLER_CHECK]) == 3
    assert "not checked" in capsys.readouterr().out


def test_only_the_straggler_check_names_each_host_it_compared(prometheus: tuple[str, type[_Prometheus]],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    url, handler = prometheus
    handler.refuse_job_sm = False
    assert main(["doctor", "--fleet", url, "--only", fleet.STRAGGLER_CHECK]) == 1
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[2:]
            if line[:1] in "abcd"}
    # a and b ran job 77 together; c and d exported checks, none of which applies: not "no checks".
    assert rows == {"b": ["warn", "warn", "(GPU", "0)"], "a": ["ok", "ok"], "c": ["n/a", "-"], "d": ["n/a", "-"]}
    assert main(["doctor", "--fleet", url, "--only", fleet.STRAGGLER_CHECK, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    jsonschema.validate(doc, SCHEMA)
    assert {h["instance"]: h["worst"] for h in doc["hosts"]} == {"b": "warn", "a": "ok", "c": "not_applicable",
                                                                 "d": "not_applicable"}
    assert doc["unavailable"] == {}
