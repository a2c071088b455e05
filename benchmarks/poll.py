"""Time gpumon's nvml source polling the fast tier, in this process, through real pynvml.

    LD_LIBRARY_PATH=DIR FAKENVML_GPUS=8 FAKENVML_LATENCY=1 \\
        python -m benchmarks.poll [--rounds 30] [--spacing 0.2] [--mode parallel|serial]

DIR holds the fake library (`python -m tools.fakenvml DIR` builds it). Runs in its own process
because pynvml loads libnvidia-ml.so.1 once per process (the suite starts one per GPU count).
`parallel` polls every GPU in its own thread, as the sampler does; `serial` polls them one after
another in one thread (for the Python overhead: no thread hand-offs, nothing overlapping). Rounds
are `spacing` apart so each poll reads GPM (NVML needs >= 100 ms between two GPM samples; a closer
poll skips nvmlGpmMetricsGet and would look cheaper than it is). With `--processes` the process
source polls too (on the synthetic shared-GPU capture, FAKENVML_CAPTURE=tests/fixtures/procs: 21
processes per GPU while busy), named from a fake /proc of pod and Slurm processes and owned through a
kubelet view, as on a shared Kubernetes node. With `--mig` the MIG source polls too, on an H200
split into seven 1g.18gb instances (FAKENVML_CAPTURE=benchmarks.mig_capture's output): per GPU
instance its memory, processes and GPM. Prints JSON.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.report import percentile
from gpumon.attribution.owners import KubeView, Owners
from gpumon.attribution.procfs import Procfs
from gpumon.model import Tier
from gpumon.sources.mig import GPM_SERIES, MigSource
from gpumon.sources.nvml import NvmlSource
from gpumon.sources.nvml_readers import GPM_METRICS
from gpumon.sources.processes import ProcessSource
from tools.procfs import FakeProc, kube_cgroup, slurm_cgroup

PROCESS_PIDS = range(4101, 4121)  # tests/fixtures/procs: the compute processes while busy
DISPLAY_PID = 2001


class Bare:
    """The fast tier's NVML calls made straight through pynvml, nothing else: what any Python
    exporter reading the same values must spend (the reference for gpumon's own cost)."""

    GPM_IDS = (1, 2, 3, 5, 10, 11, 12, 13, 20, 21)  # the GPM metrics gpumon reads

    def __init__(self, nvml: Any, processes: bool = False, mig: bool = False) -> None:
        self.n = nvml
        self.processes = processes
        self.mig = mig  # MIG on: no util.gpu and no whole-GPU GPM (refused), each instance's calls instead
        nvml.nvmlInit()
        self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        self.gpm = [[nvml.nvmlGpmSampleAlloc(), nvml.nvmlGpmSampleAlloc()] for _ in self.handles]
        if not mig:
            for h, (first, _) in zip(self.handles, self.gpm, strict=True):
                nvml.nvmlGpmSampleGet(h, first)
        self.get = [nvml.c_nvmlGpmMetricsGet_t() for _ in self.handles]
        self.instances: list[list[tuple[int, Any, list[Any], Any]]] = []  # per GPU: (gi, MIG handle, samples, get)
        for h in self.handles if mig else ():
            found = []
            for k in range(nvml.nvmlDeviceGetMaxMigDeviceCount(h)):
                try:
                    handle = nvml.nvmlDeviceGetMigDeviceHandleByIndex(h, k)
                except nvml.NVMLError:
                    continue
                gi = nvml.nvmlDeviceGetGpuInstanceId(handle)
                samples = [nvml.nvmlGpmSampleAlloc(), nvml.nvmlGpmSampleAlloc()]
                nvml.nvmlGpmMigSampleGet(h, gi, samples[0])
                found.append((gi, handle, samples, nvml.c_nvmlGpmMetricsGet_t()))
            self.instances.append(found)

    def _metrics(self, mg: Any, first: Any, second: Any, ids: tuple[int, ...]) -> None:
        n = self.n
        mg.version, mg.numMetrics, mg.sample1, mg.sample2 = n.NVML_GPM_METRICS_GET_VERSION, len(ids), first, second
        for j, metric_id in enumerate(ids):
            mg.metrics[j].metricId = metric_id
        n.nvmlGpmMetricsGet(mg)

    def _poll_instances(self, i: int) -> int:
        n, h = self.n, self.handles[i]
        ids = tuple(GPM_METRICS[k] for k in GPM_SERIES)
        values = 0
        for k, (gi, handle, samples, mg) in enumerate(self.instances[i]):
            n.nvmlDeviceGetMemoryInfo(handle, version=n.nvmlMemory_v2)
            n.nvmlDeviceGetComputeRunningProcesses(handle)
            n.nvmlGpmMigSampleGet(h, gi, samples[1])
            self._metrics(mg, samples[0], samples[1], ids)
            self.instances[i][k] = (gi, handle, [samples[1], samples[0]], mg)
            values += 3 + len(ids)
        return values

    def poll(self, i: int) -> int:
        n, h = self.n, self.handles[i]
        if self.mig:
            values = [n.nvmlDeviceGetMemoryInfo(h, version=n.nvmlMemory_v2), n.nvmlDeviceGetTemperature(h, 0),
                      n.nvmlDeviceGetPowerUsage(h), n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM),
                      n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM), n.nvmlDeviceGetCurrentClocksEventReasons(h),
                      n.nvmlDeviceGetPerformanceState(h), n.nvmlDeviceGetComputeRunningProcesses(h),
                      n.nvmlDeviceGetFieldValues(h, [82])]
            return len(values) + self._poll_instances(i)
        values = [n.nvmlDeviceGetUtilizationRates(h), n.nvmlDeviceGetMemoryInfo(h, version=n.nvmlMemory_v2),
                  n.nvmlDeviceGetTemperature(h, 0), n.nvmlDeviceGetPowerUsage(h),
                  n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM), n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM),
                  n.nvmlDeviceGetCurrentClocksEventReasons(h), n.nvmlDeviceGetPerformanceState(h),
                  n.nvmlDeviceGetComputeRunningProcesses(h), n.nvmlDeviceGetFieldValues(h, [82])]
        if self.processes:
            values += [n.nvmlDeviceGetGraphicsRunningProcesses(h), n.nvmlDeviceGetMPSComputeRunningProcesses(h)]
        prev, nxt = self.gpm[i]
        n.nvmlGpmSampleGet(h, nxt)
        self._metrics(self.get[i], prev, nxt, self.GPM_IDS)
        self.gpm[i] = [nxt, prev]
        return len(values) + len(self.GPM_IDS)

    def close(self) -> None:
        self.n.nvmlShutdown()


def shared_node(root: Path) -> tuple[Procfs, Owners]:
    """A /proc holding the capture's processes (half in a pod, half in a Slurm job, the display on
    the host) and a kubelet view naming the pod: every process gets a name and an owner."""
    proc = FakeProc(root)
    uid = "0f1e2d3c-4b5a-4697-8a8b-9c0d1e2f3a4b"
    for pid in PROCESS_PIDS:
        cgroup = kube_cgroup(uid, f"{pid:064x}") if pid % 2 else slurm_cgroup(77, 1001)
        proc.add(pid, f"worker-{pid}", cgroup=cgroup, uid=1001)
    proc.add(DISPLAY_PID, "Xorg", uid=0)
    owners = Owners()
    owners.set_kube(KubeView({}, {uid: ("ml", "trainer-0")}, {f"{p:064x}": "train" for p in PROCESS_PIDS}, 0.0))
    return Procfs(root), owners


def measure(nvml: Any, *, rounds: int, spacing_s: float, mode: str, bare: bool = False,
            processes: bool = False, mig: bool = False) -> dict[str, Any]:
    """Poll the fast tier of every GPU `rounds` times (after one warm-up round) and time it; with
    `bare`, make the same NVML calls without gpumon; with `processes`, the process source's too; with
    `mig`, the MIG source's."""
    source: Any = Bare(nvml, processes, mig) if bare else NvmlSource(nvml)
    n = len(source.handles) if bare else len(source.open())
    instances = None
    if mig and not bare:
        instances = MigSource(source)
        mig_units = instances.open()
    pool = concurrent.futures.ThreadPoolExecutor(n) if mode == "parallel" else None
    attribution = None
    if processes and not bare:
        procfs, owners = shared_node(Path(tempfile.mkdtemp(prefix="gpumon-bench-proc-")))
        attribution = ProcessSource(source, owners, procfs=procfs)
        units = attribution.open()

    def timed(i: int) -> tuple[float, int]:
        t0 = time.perf_counter()
        if bare:
            values = source.poll(i)
        else:
            values = len(source.read(i, Tier.FAST).values)
            if attribution is not None:
                values += sum(len(s.values) for s in attribution.poll(units[i], Tier.FAST))
            if instances is not None:
                values += sum(len(s.values) for s in instances.poll(mig_units[i], Tier.FAST))
        return time.perf_counter() - t0, values

    per_gpu: list[float] = []
    walls: list[float] = []
    cpu = 0.0
    values = 0
    try:
        for r in range(rounds + 1):
            c0, t0 = time.process_time(), time.perf_counter()
            results = list(pool.map(timed, range(n))) if pool else [timed(i) for i in range(n)]
            wall = time.perf_counter() - t0
            if r:  # round 0 takes the first GPM sample and warms caches
                walls.append(wall)
                cpu += time.process_time() - c0
                per_gpu.extend(d for d, _ in results)
                values = sum(v for _, v in results)
            time.sleep(max(0.0, spacing_s - wall))
    finally:
        if pool:
            pool.shutdown()
        source.close()
    return {
        "gpus": n, "mode": mode, "client": "bare pynvml" if bare else "gpumon", "rounds": rounds,
        "processes": processes, "mig": mig,
        "values_per_round": values,
        "gpu_poll_us_median": statistics.median(per_gpu) * 1e6,
        "gpu_poll_us_mean": statistics.fmean(per_gpu) * 1e6,
        "gpu_poll_us_p90": percentile(per_gpu, 0.9) * 1e6,
        "round_us_median": statistics.median(walls) * 1e6,
        "round_us_per_gpu": statistics.median(walls) * 1e6 / n,
        "cpu_us_per_gpu_poll": cpu / (rounds * n) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--spacing", type=float, default=0.2, help="seconds between rounds (>= 0.1 for GPM)")
    parser.add_argument("--mode", choices=["parallel", "serial"], default="parallel")
    parser.add_argument("--bare", action="store_true", help="the same NVML calls without gpumon (reference)")
    parser.add_argument("--processes", action="store_true", help="the process source too (shared-GPU capture)")
    parser.add_argument("--mig", action="store_true", help="the MIG source too (seven-instance capture)")
    args = parser.parse_args()
    import pynvml

    print(json.dumps(measure(pynvml, rounds=args.rounds, spacing_s=args.spacing, mode=args.mode, bare=args.bare,
                             processes=args.processes, mig=args.mig)))


if __name__ == "__main__":
    main()
