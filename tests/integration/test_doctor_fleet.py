"""`gpumon doctor --fleet` against a real Prometheus scraping three replaying gpumons, one of them on a
capture whose GPU runs at its slowdown temperature, another whose GPU two jobs share: one table, the
failing host first, and the exit status of the worst; the JSON the same; an unreachable server is a
sentence and exit 3."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from tests.support.nvml import edited_capture
from tests.support.processes import Gpumon, Prometheus, http_get

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpumon", "doctor", *args], capture_output=True, text=True,
                          timeout=60)


def test_the_fleet_in_one_table_worst_first(tmp_path: Path) -> None:
    # One Slurm job, 77, on GPU 0 of two hosts: busy on the healthy one, nearly idle on the hot one. On a
    # third host jobs 77 and 78 share GPU 0 (Slurm GPU sharing): Prometheus refused the straggler query
    # as many-to-many, and with it the whole table went.
    busy = edited_capture(tmp_path / "busy", lambda probe, records: [r["gpm"].update(sm_util=90.0) for r in records])
    hot = edited_capture(tmp_path / "hot", lambda probe, records: [(r.update(temp_c=92), r["gpm"].update(sm_util=5.0))
                                                                    for r in records])
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "0").write_text("77\n")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "0").write_text("77\n78\n")
    for name in "abc":
        (tmp_path / name).mkdir()
    with Gpumon(tmp_path / "a", "--slow-interval", "1s", "--hpc-job-mapping-dir", str(jobs),
                backend=f"replay:{busy},loop") as healthy, \
            Gpumon(tmp_path / "b", "--slow-interval", "1s", "--hpc-job-mapping-dir", str(jobs),
                   backend=f"replay:{hot},loop") as sick, \
            Gpumon(tmp_path / "c", "--slow-interval", "1s", "--hpc-job-mapping-dir", str(shared),
                   backend=f"replay:{busy},loop") as sharing:
        scrape = f"""
global: {{scrape_interval: 500ms, scrape_timeout: 500ms}}
scrape_configs:
  - job_name: gpumon
    static_configs: [{{targets: ["127.0.0.1:{healthy.port}", "127.0.0.1:{sick.port}", "127.0.0.1:{sharing.port}"]}}]
"""
        with Prometheus(tmp_path, scrape) as prom:
            deadline = time.time() + 20
            while time.time() < deadline:  # every target scraped with its checks and jobs
                status, body = http_get(f"{prom.url}/api/v1/query?query=count(count%20by%20(instance,job_id)"
                                        "(gpumon_gpu_job_info)%20*%20on(instance)%20group_left%20count%20by%20"
                                        "(instance)(gpumon_health_check_status))")
                result = json.loads(body)["data"]["result"]
                if status == 200 and result and result[0]["value"][1] == "4":
                    break
                time.sleep(0.3)
            table = doctor("--fleet", prom.url)
            as_json = doctor("--fleet", prom.url, "--json")
            only = doctor("--fleet", prom.url, "--only", "driver")
        unreachable = doctor("--fleet", "http://user:secret@127.0.0.1:1")

    assert table.returncode == 2, table.stdout + table.stderr

    lines = table.stdout.splitlines()
    assert lines[0].endswith("3 hosts, 1 failing, 0 warning")
    header, first = lines[1].split(), lines[2].split()
    assert first[0] == f"127.0.0.1:{sick.port}" and first[1] == "fail"
    assert first[header.index("hardware.temperature")] == "fail"  # the cell names the GPU too: "fail (GPU 0)"
    assert "fail (GPU 0)" in lines[2]
    rows = {line.split()[0]: line.split() for line in lines[3:5]}
    assert rows[f"127.0.0.1:{healthy.port}"][1] == "ok"
    # The shared GPU's activity is neither job's: the host was not compared, its cell is empty.
    assert rows[f"127.0.0.1:{sharing.port}"][-1] == "-" and rows[f"127.0.0.1:{sharing.port}"][1] == "ok"
    # Job 77's rank on the hot host trails its rank on the other by 85 points of SM activity.
    assert f"job 77 on 2 hosts: 127.0.0.1:{sick.port} GPU 0 at 5% SM activity" in table.stdout
    doc = json.loads(as_json.stdout)
    jsonschema.validate(doc, json.loads((ROOT / "docs" / "doctor-fleet.schema.json").read_text()))
    assert doc["stragglers"] == [{"job_id": "77", "instance": f"127.0.0.1:{sick.port}", "gpu": "0",
                                  "sm_active": 0.05, "job_busiest_sm_active": 0.9, "hosts": 2}]
    assert doc["hosts"][0]["checks"]["workload.straggler_across_hosts"] == {"verdict": "warn", "gpus": ["0"]}
    by_instance = {h["instance"]: h for h in doc["hosts"]}
    assert by_instance[f"127.0.0.1:{healthy.port}"]["checks"]["workload.straggler_across_hosts"]["verdict"] == "ok"
    assert "workload.straggler_across_hosts" not in by_instance[f"127.0.0.1:{sharing.port}"]["checks"]
    assert doc["unavailable"] == {}
    assert as_json.returncode == 2 and doc["hosts"][0]["checks"]["hardware.temperature"] == {"verdict": "fail",
                                                                                            "gpus": ["0"]}
    assert by_instance[f"127.0.0.1:{healthy.port}"]["worst"] == "ok"
    assert only.returncode == 0 and "hardware.temperature" not in only.stdout
    assert unreachable.returncode == 3 and "secret" not in unreachable.stderr + unreachable.stdout
    assert unreachable.stderr.startswith("gpumon: cannot query Prometheus at http://127.0.0.1:1")
