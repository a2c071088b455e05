"""The kubelet source against a real PodResources gRPC server on a unix socket: whole GPUs by UUID,
time-sliced replicas, GKE's `nvidiaN`, MIG resources, a pod leaving; and a kubelet that hangs,
refuses, answers garbage or more than the receive limit — each a state, the last answer kept."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import structlog

from gpumon.attribution.owners import Owners
from gpumon.attribution.procfs import ProcessFacts
from gpumon.config import KubernetesConfig
from gpumon.model import Sample, Tier
from gpumon.sources.base import Unit
from gpumon.sources.kubelet import KubeletSource, read_log_dirs
from gpumon.sources.nvml import NvmlSource
from tests.support.kubelet import Kubelet, Pod, log_dirs, serving
from tests.support.nvml import CaptureFake

UNIT = Unit("kubelet")
GPU_RESOURCE = "nvidia.com/gpu"


@pytest.fixture
def gpus() -> NvmlSource:
    source = NvmlSource(CaptureFake().start(gpus=4, at=1.0))
    source.open()
    return source


def pods_for(gpus: NvmlSource) -> list[Pod]:
    uuid = [d.uuid for d in gpus.devices]
    return [
        Pod("ml", "trainer-0", "0f1e2d3c-4b5a-4697-8a8b-9c0d1e2f3a4b",
            {"train": {GPU_RESOURCE: [uuid[0]], "cpu": ["ignored"]}, "sidecar": {}},
            {"train": "a" * 64, "sidecar": "b" * 64}),
        # Time-slicing: two pods on replicas of GPU 1.
        Pod("inference", "web-1", "11111111-2222-4333-8444-555555555555", {"serve": {GPU_RESOURCE: [f"{uuid[1]}::0"]}}),
        Pod("inference", "web-2", "21111111-2222-4333-8444-555555555555", {"serve": {GPU_RESOURCE: [f"{uuid[1]}::3"]}}),
        # GKE names GPUs nvidia<index>.
        Pod("gke", "notebook", "31111111-2222-4333-8444-555555555555", {"jupyter": {GPU_RESOURCE: ["nvidia2"]}}),
        # MIG (mixed strategy): kept in the view, not tied to a GPU yet.
        Pod("mig", "small", "41111111-2222-4333-8444-555555555555",
            {"c": {"nvidia.com/mig-1g.18gb": ["MIG-4f3e2d1c-0000-5000-8000-000000000001"]}}),
        # A resource gpumon is not told to follow.
        Pod("other", "fpga", "51111111-2222-4333-8444-555555555555", {"x": {"xilinx.com/fpga": ["0"]}}),
    ]


def made(tmp_path: Path, gpus: NvmlSource, pods: list[Pod], **settings: object) -> tuple[KubeletSource, Owners]:
    pod_logs, container_logs = log_dirs(tmp_path / "log", pods)
    config = KubernetesConfig(socket=tmp_path / "kubelet.sock", pod_logs_dir=pod_logs,
                              container_logs_dir=container_logs, timeout=1.0, **settings)  # type: ignore[arg-type]
    owners = Owners()
    return KubeletSource(config, gpus, owners), owners


def owner_info(sample: Sample) -> set[tuple[str, str, str, str, str]]:
    return {(d["gpu"], d["owner_namespace"], d["owner_pod"], d["owner_container"], d["resource"])
            for name, labels, _ in sample.values if name == "gpumon_gpu_owner_info" and (d := dict(labels))}


def value(sample: Sample, name: str, labels: tuple[tuple[str, str], ...] = ()) -> float | None:
    return next((v for n, ls, v in sample.values if n == name and ls == labels), None)


async def poll(source: KubeletSource) -> Sample:
    """The source's samples (one per GPU, one of its own) merged, for assertions."""
    samples = await source.poll(UNIT, Tier.SLOW)
    assert [s.gpu for s in samples] == [*range(len(source.gpus.devices)), None]
    return Sample("all", "slow", 0.0, [v for s in samples for v in s.values])


async def test_each_gpu_is_named_with_the_pods_holding_it(tmp_path: Path, gpus: NvmlSource) -> None:
    pods = pods_for(gpus)
    source, owners = made(tmp_path, gpus, pods)
    with serving(tmp_path / "kubelet.sock", Kubelet(pods)):
        sample = await poll(source)
    await source.close()
    assert owner_info(sample) == {
        ("0", "ml", "trainer-0", "train", GPU_RESOURCE),
        ("1", "inference", "web-1", "serve", GPU_RESOURCE), ("1", "inference", "web-2", "serve", GPU_RESOURCE),
        ("2", "gke", "notebook", "jupyter", GPU_RESOURCE)}
    assert value(sample, "gpumon_kubelet_up") == 1.0
    assert value(sample, "gpumon_kubelet_answer_age_seconds") == pytest.approx(0, abs=2)
    assert owners.kube is not None
    assert owners.kube.devices["MIG-4f3e2d1c-0000-5000-8000-000000000001"][0].resource == "nvidia.com/mig-1g.18gb"
    assert not [k for k in owners.kube.devices if k == "0"]  # the FPGA's device: not followed
    # A process of the trainer's container, as its cgroup names it, is owned through the log directories.
    facts = ProcessFacts(4101, 1, "python3", 0, pods[0].uid, "a" * 64)
    owner = owners.of_process(facts, 0)
    assert (owner.namespace, owner.pod, owner.container) == ("ml", "trainer-0", "train")


async def test_a_pod_that_leaves_leaves_the_gpu(tmp_path: Path, gpus: NvmlSource) -> None:
    pods = pods_for(gpus)
    source, _ = made(tmp_path, gpus, pods)
    kubelet = Kubelet(pods)
    with serving(tmp_path / "kubelet.sock", kubelet):
        await poll(source)
        kubelet.pods = pods[1:]
        sample = await poll(source)
    await source.close()
    assert not [o for o in owner_info(sample) if o[0] == "0"]


@pytest.mark.parametrize("mode", ["hang", "error", "refused", "garbage"])
async def test_a_failing_kubelet_is_a_state_and_the_last_answer_stays(tmp_path: Path, gpus: NvmlSource,
                                                                      mode: str) -> None:
    pods = pods_for(gpus)
    source, owners = made(tmp_path, gpus, pods)
    kubelet = Kubelet(pods)
    with serving(tmp_path / "kubelet.sock", kubelet):
        before = await poll(source)
    await source.close()
    kubelet = Kubelet(pods)
    kubelet.mode = mode if mode in ("hang", "error") else "answer"
    view = owners.kube
    t = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        if mode == "refused":  # no kubelet behind the socket path
            sample = await poll(source)
        else:
            with serving(tmp_path / "kubelet.sock", kubelet, garbage=mode == "garbage"):
                sample = await poll(source)
                again = await poll(source)
    assert time.monotonic() - t < 5.0  # the timeout (1 s) bounds a hung kubelet
    assert value(sample, "gpumon_kubelet_up") == 0.0
    assert owner_info(sample) == owner_info(before)  # no owner lost, none invented
    assert owners.kube is view
    errors = {dict(labels)["error"]: v for n, labels, v in sample.values if n == "gpumon_kubelet_errors_total"}
    assert list(errors.values()) == [1.0], errors
    expected = {"hang": "deadline_exceeded", "error": "internal", "refused": "unavailable", "garbage": "malformed"}
    assert set(errors) == {expected[mode]}
    warnings = [e for e in logs if e["event"].startswith("kubelet PodResources unavailable")]
    assert len(warnings) == 1  # one line per change of state, not per refresh
    if mode != "refused":
        assert value(again, "gpumon_kubelet_up") == 0.0
    await source.close()


async def test_an_answer_beyond_4_mib_is_read_and_beyond_the_limit_is_refused(tmp_path: Path,
                                                                               gpus: NvmlSource) -> None:
    uuid = gpus.devices[0].uuid
    many = [Pod("batch", f"job-{i:05d}-{'x' * 40}", f"{i:08x}-0000-4000-8000-000000000000",
                {"main": {"cpu-only": [f"core-{j}" for j in range(4)]}}) for i in range(40_000)]
    many.append(Pod("ml", "big", "f0000000-0000-4000-8000-000000000000", {"main": {GPU_RESOURCE: [uuid]}}))
    from tests.support.kubelet import answer
    assert answer(many).ByteSize() > 4 * 1024 * 1024  # gRPC's default receive limit
    source, _ = made(tmp_path, gpus, [], max_message_bytes=64 * 1024 * 1024)
    with serving(tmp_path / "kubelet.sock", Kubelet(many)):
        sample = await poll(source)
    await source.close()
    assert ("0", "ml", "big", "main", GPU_RESOURCE) in owner_info(sample)
    small, _ = made(tmp_path, gpus, [], max_message_bytes=4 * 1024 * 1024)
    with serving(tmp_path / "kubelet.sock", Kubelet(many)):
        sample = await poll(small)
    await small.close()
    assert value(sample, "gpumon_kubelet_up") == 0.0
    assert value(sample, "gpumon_kubelet_errors_total", (("error", "resource_exhausted"),)) == 1.0


def test_log_directories_of_other_shapes_are_skipped(tmp_path: Path) -> None:
    pods, containers = tmp_path / "pods", tmp_path / "containers"
    pods.mkdir()
    containers.mkdir()
    (pods / "ml_trainer-0_0f1e2d3c-4b5a-4697-8a8b-9c0d1e2f3a4b").mkdir()
    (pods / "0f1e2d3c-4b5a-4697-8a8b-9c0d1e2f3a4b").mkdir()  # the pre-1.14 layout: a UID, no names
    (pods / "Not_A_pod").mkdir()
    (containers / f"trainer-0_ml_train-{'a' * 64}.log").write_text("")
    (containers / "trainer-0_ml_train-short.log").write_text("")  # cut at 255 bytes: the id is gone
    got_pods, got_containers = read_log_dirs(pods, containers)
    assert got_pods == {"0f1e2d3c-4b5a-4697-8a8b-9c0d1e2f3a4b": ("ml", "trainer-0")}
    assert got_containers == {"a" * 64: "train"}
    with pytest.raises(OSError):
        read_log_dirs(tmp_path / "missing", containers)


def test_the_checked_in_grpc_modules_are_what_the_proto_makes() -> None:
    from gpumon.kubelet import generate

    assert generate.stale() == [], "regenerate: .venv/bin/python -m gpumon.kubelet.generate"


async def test_mig_devices_are_tied_to_their_gpu_instances(tmp_path: Path) -> None:
    from gpumon.sources.capture import load_capture
    from gpumon.sources.capture_nvml import CaptureNvml
    from gpumon.sources.mig import MigSource
    from tests.fixtures.mig.generate import OUT_DIR as MIG

    clock = [1.0]
    gpus = NvmlSource(CaptureNvml(load_capture(MIG), clock=lambda: clock[0]))
    gpus.open()
    mig = MigSource(gpus)
    (unit,) = mig.open()
    mig.poll(unit, Tier.SLOW)
    by_gi = {gi: uuid for uuid, (gi, _) in mig.instances(0).items()}
    pods = [Pod("team-a", "idle-notebook", "61111111-2222-4333-8444-555555555555",
                {"nb": {"nvidia.com/mig-1g.18gb": [by_gi[9]]}}),
            Pod("team-b", "trainer", "71111111-2222-4333-8444-555555555555",
                {"t": {"nvidia.com/mig-3g.71gb": ["nvidia0/gi2"]}}),  # GKE's MIG device ids
            Pod("team-c", "whole", "81111111-2222-4333-8444-555555555555", {"w": {GPU_RESOURCE: ["MIG-unknown"]}})]
    pod_logs, container_logs = log_dirs(tmp_path / "log", pods)
    config = KubernetesConfig(socket=tmp_path / "kubelet.sock", pod_logs_dir=pod_logs,
                              container_logs_dir=container_logs, timeout=1.0)
    source = KubeletSource(config, gpus, Owners(), mig)
    with serving(tmp_path / "kubelet.sock", Kubelet(pods)):
        sample = await poll(source)
    owners = {(d["gpu_instance"], d["owner_namespace"], d["owner_pod"], d["resource"])
              for name, labels, _ in sample.values if name == "gpumon_gpu_owner_info" and (d := dict(labels))}
    assert owners == {("9", "team-a", "idle-notebook", "nvidia.com/mig-1g.18gb"),
                      ("2", "team-b", "trainer", "nvidia.com/mig-3g.71gb")}
