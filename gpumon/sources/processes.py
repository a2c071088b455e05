"""Who runs on each GPU: the processes NVML lists (compute, graphics, MPS clients), named from /proc
and owned as `gpumon.attribution.owners` says (pod, container, Slurm job, user).

One unit per GPU, each in its own thread like the nvml source's (a GPU whose driver hangs stalls only
its own reads), through the nvml source's NVML object and handles. Per fast poll: three list calls
(~9 µs each on the H200) and, for a process seen for the first time only, four small /proc reads.
Per slow poll, when opted in: per-process utilisation (`nvmlDeviceGetProcessesUtilizationInfo`,
~2.1 ms a call on the H200, so never in the fast tier) and a check that each cached PID is still the
same process.

Per-process utilisation is NVML's sampled duty cycle (the share of time a kernel of that process was
running), like `gpumon_gpu_utilization_ratio`: a process that only copies host to device can read
70-90 %. It is not SM activity, which NVML does not give per process.
"""

from __future__ import annotations

import ctypes
import threading
import time
import types
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from gpumon.attribution.owners import Owner, Owners
from gpumon.attribution.procfs import ProcessFacts, Procfs, user_name
from gpumon.model import Labels, Sample, Tier
from gpumon.sources.base import Schedule, Unit, UnitHealth, UnitLost
from gpumon.sources.nvml import NvmlSource
from gpumon.sources.nvml_readers import ABSENT_CODES, LOST_CODES, code, plain_view

log = structlog.get_logger("gpumon.processes")

NOT_FOUND = 6  # NVML_ERROR_NOT_FOUND: no utilisation sample newer than the timestamp given
INSUFFICIENT_SIZE = 7
NOT_AVAILABLE = 0xFFFFFFFFFFFFFFFF  # usedGpuMemory when the driver cannot say (Windows WDDM)
NO_INSTANCE = 0xFFFFFFFF  # gpuInstanceId of a process on a GPU without MIG
KINDS = (("nvmlDeviceGetComputeRunningProcesses", "compute"), ("nvmlDeviceGetGraphicsRunningProcesses", "graphics"),
         ("nvmlDeviceGetMPSComputeRunningProcesses", "mps"))
ENGINES = (("smUtil", "gpu"), ("memUtil", "memory"), ("encUtil", "encoder"), ("decUtil", "decoder"))


@dataclass
class _Known:
    """A process seen on the GPU: what /proc said and the labels made of it."""

    facts: ProcessFacts | None
    kind: str = ""
    gpu_instance: str = ""
    owner_version: int = -1
    labels: Labels = ()


@dataclass
class _Gpu:
    index: int
    absent: set[str] = field(default_factory=set)  # NVML calls this GPU refused
    known: dict[int, _Known] = field(default_factory=dict)  # pid -> what was read of it
    dropped: set[int] = field(default_factory=set)  # pids left out by the cap, counted once each
    dropped_total: int = 0
    last_seen_us: int = 0  # utilisation samples up to here were read
    utilization: dict[int, tuple[float, ...]] = field(default_factory=dict)
    info_key: Any = None  # the process lists and owners the cached series below were made from
    info: list[tuple[str, Labels, float]] = field(default_factory=list)
    shown: list[int] = field(default_factory=list)  # the processes within the cap


class ProcessSource:
    name = "processes"
    schedule = Schedule.THREAD_PER_UNIT
    essential = False  # the GPUs' own metrics make a round complete

    def __init__(self, gpus: NvmlSource, owners: Owners, *, procfs: Procfs | None, max_per_gpu: int = 64,
                 per_process: bool = False, utilization: bool = False) -> None:
        """`procfs` None: processes are listed but not read in /proc (a replayed capture's PIDs)."""
        self.gpus = gpus
        self.owners = owners
        self.procfs = procfs
        self.max_per_gpu = max_per_gpu
        self.per_process = per_process  # memory (and utilisation) series per pid: opt-in, cardinality
        self.utilization = utilization
        self.host_pids: bool | None = None
        # pynvml's process-list functions build an object per process through its struct hooks (48 µs for
        # 20 processes on this VM, most of the process source's poll); reading NVML's array directly
        # costs a few µs. Only through the pynvml module itself: another NVML object (CaptureNvml, a
        # test's wrapper) is asked through its API.
        self._raw = isinstance(gpus.nvml, types.ModuleType) and hasattr(gpus.nvml, "_nvmlGetFunctionPointer")
        self._state: list[_Gpu] = []
        self._lock = threading.Lock()

    # --- lifecycle -----------------------------------------------------------------------------

    def open(self) -> list[Unit]:
        self.host_pids = self.procfs.host_pid_namespace() if self.procfs is not None else None
        if self.procfs is not None and not self.host_pids:
            log.warning("processes on the GPUs cannot be named or owned: this /proc does not show the host's "
                        "PID namespace (in a container, run with hostPID: true)", proc=str(self.procfs.root))
        self._state = [_Gpu(d.index) for d in self.gpus.devices]
        return [Unit(f"processes:gpu{d.index}", gpu=d.index) for d in self.gpus.devices]

    def start(self, changed: Callable[[], None]) -> None:
        return None

    def close(self) -> None:
        return None

    def reopen(self, unit: Unit) -> None:
        """The nvml source re-acquires a lost GPU; its processes come back with it."""
        self.gpus.check_answers(unit)
        assert unit.gpu is not None
        self._state[unit.gpu] = _Gpu(unit.gpu)

    # --- polling -------------------------------------------------------------------------------

    def poll(self, unit: Unit, tier: Tier) -> list[Sample]:
        assert unit.gpu is not None
        gpu = self._state[unit.gpu]
        if tier is Tier.FAST:
            return [self._processes(unit, gpu)]
        if tier is Tier.SLOW:
            self._forget_replaced(gpu)
            if self.utilization:
                self._read_utilization(unit, gpu)
        return []

    def _call(self, unit: Unit, gpu: _Gpu, name: str, *args: Any) -> Any:
        """An NVML call on this GPU; None when the GPU refuses it (remembered) or it failed."""
        if name in gpu.absent:
            return None
        try:
            if self._raw and name in dict(KINDS):
                return _processes_raw(self.gpus.nvml, self.gpus.handle(gpu.index), name)
            return getattr(self.gpus.nvml, name)(self.gpus.handle(gpu.index), *args)
        except Exception as exc:
            rc = code(exc)
            if rc in LOST_CODES:
                raise UnitLost(unit, f"{name}: {type(exc).__name__}") from None
            if rc in ABSENT_CODES:
                gpu.absent.add(name)
                log.info("process list not available on this GPU", gpu=gpu.index, call=name,
                         error=type(exc).__name__)
            elif rc != NOT_FOUND:
                self.gpus.count_error(name, exc)
            return None

    def _processes(self, unit: Unit, gpu: _Gpu) -> Sample:
        ids = self.gpus.devices[gpu.index].labels
        sample = Sample(unit.key, Tier.FAST.value, time.time(), gpu=gpu.index)
        kinds: dict[int, str] = {}
        memory: dict[int, int] = {}
        instances: dict[int, str] = {}  # pid -> its MIG GPU instance, on a MIG-enabled GPU
        compute_memory, compute_count = 0, 0
        for call, kind in KINDS:
            listed = self._call(unit, gpu, call)
            if listed is None:
                continue
            for p in listed:
                pid, used, gi = (p if isinstance(p, tuple)
                                 else (int(p.pid), p.usedGpuMemory, getattr(p, "gpuInstanceId", NO_INSTANCE)))
                kinds[pid] = f"{kinds[pid]}+{kind}" if pid in kinds else kind
                if gi != NO_INSTANCE:
                    instances[pid] = str(gi)
                if used is not None:
                    memory[pid] = max(memory.get(pid, 0), int(used))
                if kind == "compute":
                    compute_count += 1
                    compute_memory += int(used or 0)
        if "nvmlDeviceGetComputeRunningProcesses" not in gpu.absent:
            sample.add("gpumon_compute_processes", ids, compute_count)
            sample.add("gpumon_compute_processes_memory_bytes", ids, compute_memory)
        # Who is on the GPU changes far less often than it is polled: the same processes in the same
        # lists, owned as before, give the same series as last time (a third of this poll's Python).
        key = (tuple(kinds.items()), tuple(instances.items()), self.owners.version)
        if key != gpu.info_key or len(kinds) > self.max_per_gpu:
            gpu.info = self._info(gpu, kinds, instances, memory, ids)
            gpu.info_key = key
        sample.values.extend(gpu.info)
        if self.per_process:
            for pid in gpu.shown:
                pid_labels = (*ids, ("pid", str(pid)))
                if pid in memory:
                    sample.add("gpumon_process_memory_bytes", pid_labels, memory[pid])
                for engine, value in zip((e for _, e in ENGINES), gpu.utilization.get(pid, ()), strict=False):
                    sample.add("gpumon_process_utilization_ratio", (*pid_labels, ("engine", engine)), value)
        return sample

    def _info(self, gpu: _Gpu, kinds: dict[int, str], instances: dict[int, str], memory: dict[int, int],
              ids: Labels) -> list[tuple[str, Labels, float]]:
        """The GPU's process info, dropped count and process-derived job info."""
        for pid in [p for p in gpu.known if p not in kinds]:  # exited, or left the GPU
            del gpu.known[pid]
            gpu.utilization.pop(pid, None)
        gpu.dropped &= kinds.keys()
        shown = list(kinds)
        if len(kinds) > self.max_per_gpu:
            # The cap keeps the processes holding the most memory (then the lowest pids): stable, and
            # the ones an operator asks about first.
            ranked = sorted(kinds, key=lambda p: (-memory.get(p, 0), p))
            shown = ranked[:self.max_per_gpu]
            for pid in ranked[self.max_per_gpu:]:
                if pid not in gpu.dropped:
                    gpu.dropped.add(pid)
                    gpu.dropped_total += 1
        gpu.shown = shown
        out: list[tuple[str, Labels, float]] = [
            ("gpumon_process_info", self._labels(gpu, pid, kinds[pid], instances.get(pid, ""), ids), 1.0)
            for pid in shown]
        out.append(("gpumon_process_series_dropped_total", ids, gpu.dropped_total))
        if not self.owners.gpu_jobs(gpu.index):  # the mapping directory, where it names a job, wins
            jobs = {(k.facts.job_id, user_name(k.facts.uid)) for k in gpu.known.values()
                    if k.facts is not None and k.facts.job_id}
            out.extend(("gpumon_gpu_job_info", (*ids, ("gpu_instance", ""), ("job_id", job), ("user", user),
                                                ("origin", "cgroup")), 1.0) for job, user in sorted(jobs))
        return out

    def _labels(self, gpu: _Gpu, pid: int, kind: str, gpu_instance: str, ids: Labels) -> Labels:
        known = gpu.known.get(pid)
        if known is None:
            facts = self.procfs.facts(pid) if self.procfs is not None and self.host_pids else None
            known = gpu.known[pid] = _Known(facts)
        version = self.owners.version
        if known.owner_version != version or known.kind != kind or known.gpu_instance != gpu_instance:
            facts = known.facts
            owner = self.owners.of_process(facts, gpu.index) if facts is not None else Owner()
            name = facts.name if facts is not None else ""
            known.labels = (*ids, ("pid", str(pid)), ("gpu_instance", gpu_instance), ("kind", kind), ("name", name),
                            *owner.labels())
            known.owner_version, known.kind, known.gpu_instance = version, kind, gpu_instance
        return known.labels

    def _forget_replaced(self, gpu: _Gpu) -> None:
        """A cached PID whose process changed (exited, and the PID was taken) is read again."""
        if self.procfs is None:
            return
        for pid, known in list(gpu.known.items()):
            if known.facts is not None and not self.procfs.alive(pid, known.facts.start_time):
                del gpu.known[pid]
                gpu.info_key = None

    def _read_utilization(self, unit: Unit, gpu: _Gpu) -> None:
        """Each process's mean utilisation over the samples NVML took since the last read; a process
        with none ran no kernel in that time: 0."""
        samples = self._call(unit, gpu, "nvmlDeviceGetProcessesUtilizationInfo", gpu.last_seen_us)
        if samples is None and "nvmlDeviceGetProcessesUtilizationInfo" in gpu.absent:
            samples = self._call(unit, gpu, "nvmlDeviceGetProcessUtilization", gpu.last_seen_us)
        sums: dict[int, list[float]] = {}
        counts: Counter[int] = Counter()
        for s in samples or ():
            pid = int(s.pid)
            gpu.last_seen_us = max(gpu.last_seen_us, int(s.timeStamp))
            values = [float(getattr(s, attr)) / 100 for attr, _ in ENGINES]
            total = sums.setdefault(pid, [0.0] * len(ENGINES))
            for i, v in enumerate(values):
                total[i] += v
            counts[pid] += 1
        gpu.utilization = {pid: tuple(v / counts[pid] for v in sums[pid]) if pid in sums else (0.0,) * len(ENGINES)
                           for pid in gpu.known}

    # --- self-metrics ----------------------------------------------------------------------------

    def health(self, units: dict[Unit, UnitHealth]) -> Sample:
        s = Sample("self:processes", "self", time.time())
        s.add("gpumon_process_attribution_available", (), 1.0 if self.host_pids else 0.0)
        return s


def _processes_raw(nvml: Any, handle: Any, name: str) -> list[tuple[int, int | None, int]]:
    """(pid, used memory or None, GPU instance) of a process list, by NVML's two-call protocol on its
    _v3 function, read from the C array (what pynvml's own function does, without an object per
    process)."""
    fn = nvml._nvmlGetFunctionPointer(f"{name}_v3")  # FunctionNotFound on a driver without it
    count = ctypes.c_uint(0)
    ret = fn(handle, ctypes.byref(count), None)
    if ret == 0:
        return []
    if ret != INSUFFICIENT_SIZE:
        raise nvml.NVMLError(ret)
    count.value = count.value * 2 + 5  # room for processes that start in between, as pynvml leaves
    infos = (nvml.c_nvmlProcessInfo_v3_t * count.value)()
    ret = fn(handle, ctypes.byref(count), infos)
    if ret != 0:
        raise nvml.NVMLError(ret)
    return [(int(p.pid), None if p.usedGpuMemory == NOT_AVAILABLE else int(p.usedGpuMemory), int(p.gpuInstanceId))
            for p in plain_view(infos)[:count.value]]


def compute_process_count(nvml: Any, handle: Any) -> int:
    """How many compute processes a GPU (or MIG device) runs: the first call of NVML's two-call
    protocol alone, which answers the count without the list, through pynvml's function pointer
    where `nvml` is pynvml (no object per process), else through the API."""
    if not (isinstance(nvml, types.ModuleType) and hasattr(nvml, "_nvmlGetFunctionPointer")):
        return len(nvml.nvmlDeviceGetComputeRunningProcesses(handle))
    count = ctypes.c_uint(0)  # FunctionNotFound on a driver without _v3, as pynvml's own call
    ret = nvml._nvmlGetFunctionPointer("nvmlDeviceGetComputeRunningProcesses_v3")(handle, ctypes.byref(count), None)
    if ret == 0:
        return 0
    if ret != INSUFFICIENT_SIZE:
        raise nvml.NVMLError(ret)
    return int(count.value)
