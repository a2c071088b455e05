"""One host's worth of attribution for daemon tests: the synthetic shared-GPU capture
(tests/fixtures/procs) on two GPUs, a /proc naming its processes, a kubelet giving GPU 0 to a pod,
and a job mapping directory giving GPU 1 to a Slurm job."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.fixtures.procs import generate
from tests.support.kubelet import Kubelet, Pod, log_dirs, serving
from tools.procfs import FakeProc, kube_cgroup, slurm_cgroup

GPU0 = "GPU-5d0c1a2e-0000-4000-8000-00000000c0de"  # the recorded GPU; GPU 1 is its fanned-out copy
POD = Pod("ml", "trainer-0", "0f1e2d3c-4b5a-4697-8a8b-9c0d1e2f3a4b", {"train": {"nvidia.com/gpu": [GPU0]}},
          {"train": "a" * 64})
JOB = "4242"


@contextmanager
def attributed_host(tmp: Path) -> Iterator[str]:
    """The files and the kubelet; yields the `attribution:` section of a gpumon config for them."""
    proc = FakeProc(tmp / "proc")
    proc.add(generate.TRAINER, "python3", cgroup=kube_cgroup(POD.uid, POD.container_ids["train"]), uid=0)
    for pid in generate.WORKERS:
        proc.add(pid, f"worker-{pid}", cgroup=slurm_cgroup(77, 1001, version=2), uid=1001)
    proc.add(generate.DISPLAY, "Xorg", uid=0)
    jobs = tmp / "jobs"
    jobs.mkdir()
    (jobs / "1").write_text(f"{JOB} alice\n")
    pod_logs, container_logs = log_dirs(tmp / "log", [POD])
    socket = tmp / "kubelet.sock"
    with serving(socket, Kubelet([POD])):
        yield f"""
attribution:
  processes: {{proc_root: "{tmp / 'proc'}", utilization: true}}
  kubernetes:
    enabled: true
    socket: "{socket}"
    refresh_interval: 1s
    pod_logs_dir: "{pod_logs}"
    container_logs_dir: "{container_logs}"
  jobs: {{mapping_dir: "{jobs}"}}
"""


BACKEND = f"replay:{generate.OUT_DIR},loop,gpus=2"
