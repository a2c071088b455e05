"""Who is on each GPU in `gpumon snapshot` (table and JSON) and in MQTT telemetry: owners, jobs and
processes as records, not as metrics whose value is always 1."""

from __future__ import annotations

import json
from pathlib import Path

from gpumon.config import load_config
from gpumon.notify.mqtt import telemetry
from gpumon.snapshot import as_json, as_table, take_snapshot
from tests.fixtures.procs import generate
from tests.support.attribution import BACKEND, JOB, attributed_host


async def test_snapshot_and_telemetry_show_who_is_on_each_gpu(tmp_path: Path) -> None:
    with attributed_host(tmp_path) as attribution:
        path = tmp_path / "gpumon.yaml"
        path.write_text(attribution)
        snap = await take_snapshot(load_config(path, {"backend": BACKEND}))
    doc = json.loads(as_json(snap))
    gpu0, gpu1 = doc["gpus"]
    assert gpu0["owners"] == [{"gpu_instance": "", "owner_namespace": "ml", "owner_pod": "trainer-0",
                               "owner_container": "train", "resource": "nvidia.com/gpu"}]
    assert {"job_id": JOB, "user": "alice", "origin": "mapping", "gpu_instance": ""} in gpu1["jobs"]
    trainer = next(p for p in gpu0["processes"] if p["pid"] == str(generate.TRAINER))
    assert (trainer["name"], trainer["owner_pod"]) == ("python3", "trainer-0")
    assert "gpumon_process_info" not in gpu0["metrics"] and "gpumon_gpu_owner_info" not in gpu0["metrics"]
    table = as_table(snap)
    assert "GPU 0 held by: pod ml/trainer-0/train" in table
    assert f"GPU 1 held by: job {JOB} (alice)" in table
    assert any(line.split()[:4] == ["0", str(generate.TRAINER), "compute", "python3"] and "ml/trainer-0" in line
               for line in table.splitlines())
    mqtt = telemetry(snap.store)
    assert mqtt["0"]["owners"] == gpu0["owners"] and mqtt["1"]["jobs"] == gpu1["jobs"]
    assert mqtt["0"]["processes"] == gpu0["processes"]
    assert "gpumon_process_info" not in mqtt["0"]["metrics"]


async def test_snapshot_names_the_mig_instance_an_owner_holds(tmp_path: Path) -> None:
    from tests.fixtures.mig.generate import OUT_DIR as MIG

    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "0.9").write_text("4242 alice\n")  # dcgm-exporter's `<gpu>.<gpu instance>`
    path = tmp_path / "gpumon.yaml"
    path.write_text(f'attribution: {{jobs: {{mapping_dir: "{jobs}"}}}}\n')
    snap = await take_snapshot(load_config(path, {"backend": f"replay:{MIG}"}))
    assert "GPU 0 held by: job 4242 (alice) in MIG instance 9" in as_table(snap)
