"""The process source on both fake NVMLs, with the synthetic capture of a shared GPU
(tests/fixtures/procs) and a fake /proc: every process named and owned, the cap and what it drops,
utilisation in the slow tier, and no owner where nothing says (another PID namespace, a PID that
changed hands, a replayed capture)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pynvml
import pytest

from gpumon.attribution.owners import Holder, Job, KubeView, Owners
from gpumon.attribution.procfs import Procfs
from gpumon.model import Sample, Tier
from gpumon.sources.base import Unit, UnitLost
from gpumon.sources.capture import load_capture
from gpumon.sources.nvml import NvmlSource
from gpumon.sources.processes import ProcessSource
from tests.fixtures.procs import generate
from tests.support.faults import Faults, FaultyNvml
from tests.support.nvml import NvmlFake, middle_of, record_at
from tools.procfs import FakeProc, kube_cgroup, slurm_cgroup

CAPTURE = load_capture(generate.OUT_DIR)
POD_UID = "0f1e2d3c-4b5a-4697-8a8b-9c0d1e2f3a4b"
CONTAINER_ID = "c" * 64
UNIT = Unit("processes:gpu0", gpu=0)
Info = dict[str, dict[str, str]]  # pid -> labels of its gpumon_process_info


def test_the_committed_capture_is_what_the_generator_makes() -> None:
    assert generate.stale() == [], "regenerate: .venv/bin/python -m tests.fixtures.procs.generate"
    assert "NOT RECORDED ON HARDWARE" in CAPTURE.probe["synthetic"]


def fake_proc(root: Path, *, host: bool = True) -> FakeProc:
    """The processes of the capture: the trainer in a pod, the workers in Slurm job 77, the
    display server on the host."""
    proc = FakeProc(root, host=host)
    proc.add(generate.TRAINER, "python3", cgroup=kube_cgroup(POD_UID, CONTAINER_ID), uid=0, start_time=100)
    for pid in generate.WORKERS:
        proc.add(pid, f"worker-{pid}", cgroup=slurm_cgroup(77, 1001, version=1), uid=1001)
    proc.add(generate.DISPLAY, "Xorg", uid=0)
    return proc


def owners_with_pod() -> Owners:
    owners = Owners()
    owners.set_kube(KubeView(devices={}, pods={POD_UID: ("ml", "trainer-0")},
                             containers={CONTAINER_ID: "train"}, at=0.0))
    return owners


def opened(fake: NvmlFake, tmp_path: Path, *, phase: str = "compute", owners: Owners | None = None,
           procfs: Procfs | None = None, faults: Faults | None = None, **kw: Any) -> tuple[ProcessSource, NvmlSource]:
    nvml = fake.start(generate.OUT_DIR, at=middle_of(CAPTURE, phase))
    if faults is not None:
        nvml = FaultyNvml(nvml, faults)
    gpus = NvmlSource(nvml)
    gpus.open()
    if procfs is None:
        fake_proc(tmp_path / "proc")
        procfs = Procfs(tmp_path / "proc")
    source = ProcessSource(gpus, owners or owners_with_pod(), procfs=procfs, **kw)
    assert source.open() == [UNIT]
    return source, gpus


def info(sample: Sample) -> Info:
    return {dict(labels)["pid"]: dict(labels) for name, labels, _ in sample.values if name == "gpumon_process_info"}


def value(sample: Sample, name: str) -> float:
    (v,) = [v for n, _, v in sample.values if n == name]
    return v


def test_every_process_is_named_and_owned(nvml_fake: NvmlFake, tmp_path: Path) -> None:
    source, gpus = opened(nvml_fake, tmp_path)
    (sample,) = source.poll(UNIT, Tier.FAST)
    got = info(sample)
    assert len(got) == 20 + 1  # compute processes, and the display server from the graphics list
    trainer = got[str(generate.TRAINER)]
    assert (trainer["name"], trainer["kind"], trainer["owner_namespace"], trainer["owner_pod"],
            trainer["owner_container"], trainer["job_id"], trainer["user"]) == (
        "python3", "compute", "ml", "trainer-0", "train", "", "root")
    worker = got["4105"]
    assert (worker["name"], worker["job_id"], worker["user"], worker["owner_pod"]) == ("worker-4105", "77", "1001", "")
    assert got[str(generate.BOTH)]["kind"] == "compute+graphics"
    assert (got[str(generate.DISPLAY)]["kind"], got[str(generate.DISPLAY)]["name"]) == ("graphics", "Xorg")
    assert trainer["uuid"] == gpus.devices[0].uuid and trainer["gpu"] == "0"
    rec = record_at(CAPTURE, middle_of(CAPTURE, "compute"))
    assert value(sample, "gpumon_compute_processes") == 20
    assert value(sample, "gpumon_compute_processes_memory_bytes") == sum(p["used"] for p in rec["procs"])
    assert value(sample, "gpumon_process_series_dropped_total") == 0
    assert not [n for n, _, _ in sample.values if n == "gpumon_process_memory_bytes"]  # opt-in
    assert source.health({}).values == [("gpumon_process_attribution_available", (), 1.0)]


def test_mps_clients_are_listed(nvml_fake: NvmlFake, tmp_path: Path) -> None:
    source, _ = opened(nvml_fake, tmp_path, phase="bursty")
    (sample,) = source.poll(UNIT, Tier.FAST)
    kinds = {pid: labels["kind"] for pid, labels in info(sample).items()}
    assert {kinds[str(p)] for p in generate.MPS_CLIENTS} == {"compute+mps"}


def test_the_cap_keeps_the_biggest_and_counts_the_rest_once(nvml_fake: NvmlFake, tmp_path: Path) -> None:
    source, _ = opened(nvml_fake, tmp_path, max_per_gpu=5)
    for _ in range(3):
        (sample,) = source.poll(UNIT, Tier.FAST)
    got = info(sample)
    assert len(got) == 5 and str(generate.TRAINER) in got  # it holds the most memory
    assert value(sample, "gpumon_process_series_dropped_total") == 21 - 5  # once per process, not per poll


def test_per_process_memory_and_utilisation_when_opted_in(nvml_fake: NvmlFake, tmp_path: Path) -> None:
    source, _ = opened(nvml_fake, tmp_path, per_process=True, utilization=True)
    source.poll(UNIT, Tier.FAST)
    assert source.poll(UNIT, Tier.SLOW) == []  # the slow tier reads utilisation for the fast one
    (sample,) = source.poll(UNIT, Tier.FAST)
    memory = {dict(labels)["pid"]: v for n, labels, v in sample.values if n == "gpumon_process_memory_bytes"}
    rec = record_at(CAPTURE, middle_of(CAPTURE, "compute"))
    assert memory[str(generate.TRAINER)] == rec["procs"][0]["used"]
    util = {(dict(labels)["pid"], dict(labels)["engine"]): v
            for n, labels, v in sample.values if n == "gpumon_process_utilization_ratio"}
    trainer_samples = [u["sm"] for r in CAPTURE.traces[0]
                       if middle_of(CAPTURE, "compute") - 10 < r["t"] - CAPTURE.traces[0][0]["t"]
                       <= middle_of(CAPTURE, "compute") for u in r["proc_util"] if u["pid"] == generate.TRAINER]
    assert util[(str(generate.TRAINER), "gpu")] == pytest.approx(
        (sum(trainer_samples) // len(trainer_samples)) / 100, abs=0.011)  # means of whole percents
    assert util[(str(generate.DISPLAY), "gpu")] == 0.0  # ran no kernel: 0, not absent
    assert {e for (_, e) in util} == {"gpu", "memory", "encoder", "decoder"}
    source.poll(UNIT, Tier.SLOW)  # nothing new since (the trace is held still): all 0
    (sample,) = source.poll(UNIT, Tier.FAST)
    assert {v for n, _, v in sample.values if n == "gpumon_process_utilization_ratio"} == {0.0}


def test_in_another_pid_namespace_processes_have_no_names_or_owners(nvml_fake: NvmlFake, tmp_path: Path) -> None:
    fake_proc(tmp_path / "container", host=False)
    source, _ = opened(nvml_fake, tmp_path, procfs=Procfs(tmp_path / "container"))
    (sample,) = source.poll(UNIT, Tier.FAST)
    got = {(labels["name"], labels["owner_pod"], labels["job_id"]) for labels in info(sample).values()}
    assert got == {("", "", "")}
    assert source.health({}).values == [("gpumon_process_attribution_available", (), 0.0)]


def test_a_pid_that_changes_hands_is_read_again(nvml_fake: NvmlFake, tmp_path: Path) -> None:
    source, _ = opened(nvml_fake, tmp_path)
    (sample,) = source.poll(UNIT, Tier.FAST)
    assert info(sample)[str(generate.TRAINER)]["owner_pod"] == "trainer-0"
    proc = FakeProc(tmp_path / "proc")  # the trainer exits; a new process takes its PID
    proc.add(generate.TRAINER, "intruder", cgroup=slurm_cgroup(5, 2000), start_time=999)
    (sample,) = source.poll(UNIT, Tier.FAST)
    assert info(sample)[str(generate.TRAINER)]["owner_pod"] == "trainer-0"  # cached until the slow check
    source.poll(UNIT, Tier.SLOW)
    (sample,) = source.poll(UNIT, Tier.FAST)
    trainer = info(sample)[str(generate.TRAINER)]
    assert (trainer["name"], trainer["owner_pod"], trainer["job_id"]) == ("intruder", "", "5")


def test_owners_that_change_relabel_the_processes(nvml_fake: NvmlFake, tmp_path: Path) -> None:
    owners = Owners()
    source, _ = opened(nvml_fake, tmp_path, owners=owners)
    (sample,) = source.poll(UNIT, Tier.FAST)
    assert info(sample)[str(generate.TRAINER)]["owner_pod"] == ""  # the kubelet has not answered yet
    owners.set_kube(KubeView({"GPU-x": (Holder("ml", "trainer-0", "train", "nvidia.com/gpu"),)},
                             {POD_UID: ("ml", "trainer-0")}, {}, 0.0))
    owners.set_jobs({"0": (Job("313", "alice"),)})
    (sample,) = source.poll(UNIT, Tier.FAST)
    trainer = info(sample)[str(generate.TRAINER)]
    assert (trainer["owner_pod"], trainer["owner_container"], trainer["job_id"], trainer["user"]) == (
        "trainer-0", "", "313", "root")  # no container name known; the GPU's one mapped job
    assert info(sample)["4105"]["job_id"] == "77"  # its own cgroup's job wins


def test_a_list_the_gpu_refuses_is_not_asked_again(nvml_fake: NvmlFake, tmp_path: Path) -> None:
    faults = Faults(errors=[("nvmlDeviceGetMPSComputeRunningProcesses", None, pynvml.NVML_ERROR_NOT_SUPPORTED)])
    source, gpus = opened(nvml_fake, tmp_path, faults=faults)
    for _ in range(3):
        (sample,) = source.poll(UNIT, Tier.FAST)
    assert isinstance(gpus.nvml, FaultyNvml) and gpus.nvml.calls["nvmlDeviceGetMPSComputeRunningProcesses"] == 1
    assert len(info(sample)) == 21
    assert gpus.error_counts() == {}


def test_a_lost_gpu_loses_its_processes_until_it_is_back(nvml_fake: NvmlFake, tmp_path: Path) -> None:
    faults = Faults(errors=[("nvmlDeviceGetComputeRunningProcesses", 0, pynvml.NVML_ERROR_GPU_IS_LOST)])
    source, _ = opened(nvml_fake, tmp_path, faults=faults)
    with pytest.raises(UnitLost):
        source.poll(UNIT, Tier.FAST)
    faults.errors.clear()
    source.reopen(UNIT)
    (sample,) = source.poll(UNIT, Tier.FAST)
    assert len(info(sample)) == 21


def test_a_replayed_capture_is_not_looked_up_in_this_hosts_proc(nvml_fake: NvmlFake, tmp_path: Path) -> None:
    source, _ = opened(nvml_fake, tmp_path, procfs=None)
    source.procfs = None  # as build_backend makes it for replay:
    source.open()
    (sample,) = source.poll(UNIT, Tier.FAST)
    assert {labels["name"] for labels in info(sample).values()} == {""}


def job_info(sample: Sample) -> set[tuple[str, str, str]]:
    return {(d["job_id"], d["user"], d["origin"]) for name, labels, _ in sample.values
            if name == "gpumon_gpu_job_info" and (d := dict(labels))}


def test_the_gpus_jobs_come_from_its_processes_unless_the_mapping_names_them(nvml_fake: NvmlFake,
                                                                              tmp_path: Path) -> None:
    owners = owners_with_pod()
    source, _ = opened(nvml_fake, tmp_path, owners=owners)
    (sample,) = source.poll(UNIT, Tier.FAST)
    assert job_info(sample) == {("77", "1001", "cgroup")}  # the workers' Slurm job
    owners.set_jobs({"0": (Job("900", "bob"),)})  # the scheduler's allocation wins
    (sample,) = source.poll(UNIT, Tier.FAST)
    assert job_info(sample) == set()
