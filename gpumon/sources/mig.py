"""MIG: every GPU instance of a MIG-enabled GPU, measured like a GPU.

One unit per GPU, each in its own thread like the nvml source's, through that source's NVML object
and handles. The layout (MIG mode; each MIG device, i.e. compute instance, with its GPU instance,
UUID and profile) is read in the slow tier (`nvmlDeviceGetMigMode` alone takes ~135 µs on the
H200) and again at once whenever a MIG handle stops answering: instances destroyed and created while
gpumon runs (`nvidia-smi mig`, the GPU Operator's MIG manager) are followed without a restart, their
GPM samples re-seeded.

Per fast poll, per GPU instance: its memory (through its first compute instance's handle: every
compute instance of a GPU instance reports the same memory, so summing them double-counts), GPM
through `nvmlGpmMigSampleGet` on the parent's handle (as DCGM does; two samples ≥ 100 ms apart, NaN
dropped) and its compute processes. On a MIG-enabled GPU NVML refuses util.gpu, per-process
utilisation and row remapping (nvml.h): the per-instance series are what stays true.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from gpumon import catalog
from gpumon.model import Labels, Sample, Tier
from gpumon.sources.base import Schedule, Unit, UnitHealth, UnitLost
from gpumon.sources.nvml import NvmlSource
from gpumon.sources.nvml_readers import (
    ABSENT_CODES,
    ARGUMENT_VERSION_MISMATCH,
    GPM_METRICS,
    GPM_MIN_INTERVAL_S,
    LOST_CODES,
    code,
    plain_view,
    text,
)
from gpumon.sources.processes import compute_process_count

log = structlog.get_logger("gpumon.mig")

INVALID_ARGUMENT, NOT_FOUND = 2, 6
MIG_ENABLED = 1
# The GPM metrics read per GPU instance: catalog metric by GPM key. NVLink and PCIe are the whole GPU's.
GPM_SERIES = {"sm_util": "gpumon_mig_sm_active_ratio", "sm_occupancy": "gpumon_mig_sm_occupancy_ratio",
              "any_tensor_util": "gpumon_mig_tensor_active_ratio", "dram_bw_util": "gpumon_mig_dram_active_ratio",
              "graphics_util": "gpumon_mig_graphics_engine_active_ratio"}


@dataclass
class _ComputeInstance:
    handle: Any
    uuid: str
    ci: int
    profile: str  # the compute instance's profile, "1c.2g.35gb" when it is a part of its GPU instance
    multiprocessors: str


@dataclass
class _GpuInstance:
    gi: int
    profile: str
    labels: Labels  # gpu, uuid, gpu_instance, mig_profile
    placement: str
    cis: list[_ComputeInstance] = field(default_factory=list)
    gpm_prev: Any = None
    gpm_next: Any = None
    gpm_prev_t: float | None = None
    gpm_get: Any = None
    gpm_keys: list[str] = field(default_factory=list)  # GPM keys in request order
    gpm_results: Any = None


@dataclass
class _Gpu:
    index: int
    mode: tuple[int, int] | None = None  # (current, pending); None before the first read or without MIG
    supported: bool = True
    instances: dict[int, _GpuInstance] = field(default_factory=dict)
    stale: bool = True  # read the layout at the next poll
    layout_sample: Sample | None = None
    absent: set[str] = field(default_factory=set)  # per-instance readings NVML refused


def profile_of(name: str) -> tuple[str, str]:
    """(GPU instance profile, compute instance profile) from a MIG device's name: "NVIDIA H200 MIG
    1c.2g.35gb" -> ("2g.35gb", "1c.2g.35gb"); "NVIDIA H200 MIG 3g.71gb" -> ("3g.71gb", "3g.71gb")."""
    compute = name.rsplit(" MIG ", 1)[-1].strip() if " MIG " in name else ""
    gpu = compute.split(".", 1)[1] if compute[:1].isdigit() and compute.split(".", 1)[0].endswith("c") else compute
    return gpu, compute


class MigSource:
    name = "mig"
    schedule = Schedule.THREAD_PER_UNIT
    essential = False

    def __init__(self, gpus: NvmlSource, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.gpus = gpus
        self._clock = clock
        self._state: list[_Gpu] = []
        self.reconfigurations = 0

    # --- lifecycle -----------------------------------------------------------------------------

    def open(self) -> list[Unit]:
        self._state = [_Gpu(d.index) for d in self.gpus.devices]
        return [Unit(f"mig:gpu{d.index}", gpu=d.index) for d in self.gpus.devices]

    def start(self, changed: Callable[[], None]) -> None:
        return None

    def close(self) -> None:
        for gpu in self._state:
            for inst in gpu.instances.values():
                self._free_gpm(inst)

    def reopen(self, unit: Unit) -> None:
        """The nvml source re-acquires a lost GPU; its layout is read again with it."""
        self.gpus.check_answers(unit)
        assert unit.gpu is not None
        self._forget(self._state[unit.gpu])

    def health(self, units: dict[Unit, UnitHealth]) -> Sample | None:
        return None

    def instances(self, index: int) -> dict[str, tuple[int, int]]:
        """MIG UUID -> (GPU instance, compute instance) of GPU `index` (for owners of MIG devices)."""
        # Read from the event loop while the GPU's worker thread polls: safe without a lock, because the
        # worker never changes a published layout, it replaces `instances` whole (one atomic store).
        gpu = self._state[index] if index < len(self._state) else None
        if gpu is None:
            return {}
        return {ci.uuid: (inst.gi, ci.ci) for inst in gpu.instances.values() for ci in inst.cis}

    # --- polling -------------------------------------------------------------------------------

    def poll(self, unit: Unit, tier: Tier) -> list[Sample]:
        assert unit.gpu is not None
        gpu = self._state[unit.gpu]
        if not gpu.supported or tier is Tier.STATIC:
            return []
        out = []
        if tier is Tier.SLOW or gpu.stale:
            self._discover(unit, gpu)
            assert gpu.layout_sample is not None
            out.append(gpu.layout_sample)
        if tier is Tier.FAST and gpu.mode is not None and gpu.mode[0] != MIG_ENABLED:
            # MIG off: an empty sample, so the series of instances there were end now, not 5 minutes on
            out.append(Sample(unit.key, Tier.FAST.value, time.time(), gpu=gpu.index))
        elif tier is Tier.FAST and gpu.mode is not None:
            out.append(self._measure(unit, gpu))
            if gpu.stale:  # an instance was destroyed: the layout now, its new instances from the next poll
                self._discover(unit, gpu)
                assert gpu.layout_sample is not None
                out.append(gpu.layout_sample)
        return out

    def _call(self, unit: Unit, fn: str, *args: Any) -> Any:
        """An NVML call; a lost GPU raises UnitLost, anything else is the caller's."""
        try:
            return getattr(self.gpus.nvml, fn)(*args)
        except Exception as exc:
            if code(exc) in LOST_CODES:
                raise UnitLost(unit, f"{fn}: {type(exc).__name__}") from None
            raise

    # --- the layout ----------------------------------------------------------------------------

    def _discover(self, unit: Unit, gpu: _Gpu) -> None:
        """Read MIG mode and every MIG device; keep the GPM samples of GPU instances that remain."""
        parent = self.gpus.handle(gpu.index)
        device = self.gpus.devices[gpu.index]
        now = time.time()
        sample = Sample(unit.key, Tier.SLOW.value, now, gpu=gpu.index)
        try:
            current, pending = (int(m) for m in self._call(unit, "nvmlDeviceGetMigMode", parent))
        except UnitLost:
            raise
        except Exception as exc:
            if code(exc) in ABSENT_CODES:
                gpu.supported = False
                log.info("GPU has no MIG", gpu=gpu.index, error=type(exc).__name__)
                gpu.layout_sample = sample
            else:  # a passing failure: the layout read last stays, its series with it
                self.gpus.count_error("nvmlDeviceGetMigMode", exc)
                gpu.layout_sample = gpu.layout_sample or sample
            gpu.stale = False
            return
        gpu.mode = (current, pending)
        sample.add("gpumon_mig_mode", (*device.labels, ("state", "current")), float(current == MIG_ENABLED))
        sample.add("gpumon_mig_mode", (*device.labels, ("state", "pending")), float(pending == MIG_ENABLED))
        found: dict[int, _GpuInstance] = {}
        if current == MIG_ENABLED:
            found = self._enumerate(unit, gpu, parent, device.labels)
        old = gpu.instances
        for gi, inst in found.items():
            kept = old.get(gi)
            if kept is not None and kept.profile == inst.profile:  # the same instance: its GPM goes on
                inst.gpm_prev, inst.gpm_next, inst.gpm_prev_t = kept.gpm_prev, kept.gpm_next, kept.gpm_prev_t
                inst.gpm_get, inst.gpm_keys, inst.gpm_results = kept.gpm_get, kept.gpm_keys, kept.gpm_results
                kept.gpm_prev = kept.gpm_next = None
        for inst in old.values():
            self._free_gpm(inst)
        if old and {(g, i.profile) for g, i in old.items()} != {(g, i.profile) for g, i in found.items()}:
            self.reconfigurations += 1
            log.info("MIG instances changed", gpu=gpu.index, before=sorted(f"{i.gi}:{i.profile}" for i in old.values()),
                     after=sorted(f"{i.gi}:{i.profile}" for i in found.values()))
        gpu.instances = found
        for inst in found.values():
            for ci in inst.cis:
                sample.add("gpumon_mig_instance_info", (
                    *device.labels, ("gpu_instance", str(inst.gi)), ("compute_instance", str(ci.ci)),
                    ("mig_uuid", ci.uuid), ("mig_profile", inst.profile), ("compute_profile", ci.profile),
                    ("multiprocessors", ci.multiprocessors), ("placement", inst.placement)), 1.0)
        gpu.layout_sample, gpu.stale = sample, False

    def _enumerate(self, unit: Unit, gpu: _Gpu, parent: Any, ids: Labels) -> dict[int, _GpuInstance]:
        n = self.gpus.nvml
        found: dict[int, _GpuInstance] = {}
        try:
            count = int(self._call(unit, "nvmlDeviceGetMaxMigDeviceCount", parent))
        except UnitLost:
            raise
        except Exception as exc:
            self.gpus.count_error("nvmlDeviceGetMaxMigDeviceCount", exc)
            return found
        for i in range(count):
            try:
                handle = self._call(unit, "nvmlDeviceGetMigDeviceHandleByIndex", parent, i)
                gi = int(n.nvmlDeviceGetGpuInstanceId(handle))
                ci = int(n.nvmlDeviceGetComputeInstanceId(handle))
                uuid = text(n.nvmlDeviceGetUUID(handle))
                name = text(n.nvmlDeviceGetName(handle))
            except UnitLost:
                raise
            except Exception as exc:
                if code(exc) != NOT_FOUND:  # NotFound: no MIG device at this index (they need not be dense)
                    self.gpus.count_error("nvmlDeviceGetMigDeviceHandleByIndex", exc)
                continue
            gi_profile, ci_profile = profile_of(name)
            inst = found.get(gi)
            if inst is None:
                inst = found[gi] = _GpuInstance(gi, gi_profile, (*ids, ("gpu_instance", str(gi)),
                                                                 ("mig_profile", gi_profile)),
                                                self._placement(gpu, parent, gi))
            inst.cis.append(_ComputeInstance(handle, uuid, ci, ci_profile, self._multiprocessors(handle)))
        for inst in found.values():
            inst.cis.sort(key=lambda c: c.ci)
        return found

    def _placement(self, gpu: _Gpu, parent: Any, gi: int) -> str:
        """"start:size" in memory slices. NVML gives GPU instance handles to privileged users only:
        "" for anyone else (logged once)."""
        if "placement" in gpu.absent:
            return ""
        n = self.gpus.nvml
        try:
            info = n.nvmlGpuInstanceGetInfo(n.nvmlDeviceGetGpuInstanceById(parent, gi))
            return f"{int(info.placement.start)}:{int(info.placement.size)}"
        except Exception as exc:
            if code(exc) in LOST_CODES:
                raise
            gpu.absent.add("placement")
            log.info("MIG placements are not exported: NVML gives GPU instances to privileged users only",
                     gpu=gpu.index, error=type(exc).__name__)
            return ""

    def _multiprocessors(self, handle: Any) -> str:
        try:
            return str(int(self.gpus.nvml.nvmlDeviceGetAttributes(handle).multiprocessorCount))
        except Exception as exc:
            if code(exc) in LOST_CODES:
                raise
            return ""

    def _forget(self, gpu: _Gpu) -> None:
        for inst in gpu.instances.values():
            self._free_gpm(inst)
        gpu.instances = {}
        gpu.stale = True

    # --- per instance --------------------------------------------------------------------------

    def _measure(self, unit: Unit, gpu: _Gpu) -> Sample:
        """Memory, GPM and processes of every GPU instance; one that is gone is left out and the
        layout marked stale."""
        sample = Sample(unit.key, Tier.FAST.value, time.time(), gpu=gpu.index)
        n = self.gpus.nvml
        parent = self.gpus.handle(gpu.index)
        for inst in gpu.instances.values():
            try:  # the memory call on its handle decides whether the instance is still there
                memory = self._memory(gpu, inst.cis[0].handle)
            except Exception as exc:
                self._instance_failed(unit, gpu, inst, exc)
                continue
            sample.add("gpumon_mig_memory_used_bytes", inst.labels, float(memory.used))
            sample.add("gpumon_mig_memory_total_bytes", inst.labels, float(memory.total))
            if "processes" not in gpu.absent:
                try:
                    processes = sum(compute_process_count(n, ci.handle) for ci in inst.cis)
                except Exception as exc:
                    self._read_failed(unit, gpu, "processes", "nvmlDeviceGetComputeRunningProcesses", exc)
                else:
                    sample.add("gpumon_mig_compute_processes", inst.labels, float(processes))
            if "gpm" not in gpu.absent:
                try:
                    for key, value in self._gpm(parent, inst):
                        sample.add(GPM_SERIES[key], inst.labels, value * catalog.PERCENT)
                except Exception as exc:  # never a sign that the instance is gone: its memory said
                    self._read_failed(unit, gpu, "gpm", "nvmlGpmMigSampleGet", exc)
        return sample

    def _memory(self, gpu: _Gpu, handle: Any) -> Any:
        """nvmlMemory_v2, or v1 on a driver before R510 (remembered)."""
        n = self.gpus.nvml
        if "memory_v2" not in gpu.absent:
            try:
                return n.nvmlDeviceGetMemoryInfo(handle, version=n.nvmlMemory_v2)
            except Exception as exc:
                if code(exc) not in ABSENT_CODES | {ARGUMENT_VERSION_MISMATCH}:
                    raise
                gpu.absent.add("memory_v2")
        return n.nvmlDeviceGetMemoryInfo(handle)

    def _read_failed(self, unit: Unit, gpu: _Gpu, what: str, call: str, exc: Exception) -> None:
        """A per-instance reading failed: a lost GPU is lost; one the GPU refuses is left out (logged once)."""
        rc = code(exc)
        if rc in LOST_CODES:
            raise UnitLost(unit, f"{call}: {type(exc).__name__}") from None
        if rc in ABSENT_CODES:
            if what not in gpu.absent:
                gpu.absent.add(what)
                log.info("GPU instances do not give this reading", gpu=gpu.index, reading=what,
                         error=type(exc).__name__)
            return
        self.gpus.count_error(call, exc)

    def _instance_failed(self, unit: Unit, gpu: _Gpu, inst: _GpuInstance, exc: Exception) -> None:
        rc = code(exc)
        if rc in LOST_CODES:
            raise UnitLost(unit, f"MIG instance {inst.gi}: {type(exc).__name__}") from None
        if rc in (NOT_FOUND, INVALID_ARGUMENT):  # a stale handle: the instance is gone
            if not gpu.stale:
                log.info("MIG instance gone; reading the layout again", gpu=gpu.index, gpu_instance=inst.gi,
                         error=type(exc).__name__)
            gpu.stale = True
            return
        self.gpus.count_error("mig", exc)

    def _gpm(self, parent: Any, inst: _GpuInstance) -> list[tuple[str, float]]:
        n = self.gpus.nvml
        now = self._clock()
        if inst.gpm_prev is None:
            inst.gpm_prev, inst.gpm_next = n.nvmlGpmSampleAlloc(), n.nvmlGpmSampleAlloc()
            inst.gpm_get = n.c_nvmlGpmMetricsGet_t()
            inst.gpm_results = plain_view(inst.gpm_get.metrics)
            inst.gpm_keys = list(GPM_SERIES)
            inst.gpm_get.version = n.NVML_GPM_METRICS_GET_VERSION
            inst.gpm_get.numMetrics = len(inst.gpm_keys)
            for j, key in enumerate(inst.gpm_keys):
                inst.gpm_results[j].metricId = GPM_METRICS[key]
            inst.gpm_prev_t = None
        n.nvmlGpmMigSampleGet(parent, inst.gi, inst.gpm_next)
        if inst.gpm_prev_t is None:
            inst.gpm_prev, inst.gpm_next, inst.gpm_prev_t = inst.gpm_next, inst.gpm_prev, now
            return []
        if now - inst.gpm_prev_t < GPM_MIN_INTERVAL_S:
            return []  # keep the older sample; the next poll measures over a longer window
        mg = inst.gpm_get
        mg.sample1, mg.sample2 = inst.gpm_prev, inst.gpm_next
        n.nvmlGpmMetricsGet(mg)
        inst.gpm_prev, inst.gpm_next, inst.gpm_prev_t = inst.gpm_next, inst.gpm_prev, now
        out = []
        for j, key in enumerate(inst.gpm_keys):
            metric = inst.gpm_results[j]
            if metric.nvmlReturn == 0 and math.isfinite(metric.value):
                out.append((key, metric.value))
        return out

    def _free_gpm(self, inst: _GpuInstance) -> None:
        for s in (inst.gpm_prev, inst.gpm_next):
            if s is not None:
                try:
                    self.gpus.nvml.nvmlGpmSampleFree(s)
                except Exception as exc:
                    log.debug("GPM sample free failed", gpu_instance=inst.gi, error=str(exc))
        inst.gpm_prev = inst.gpm_next = inst.gpm_prev_t = None
