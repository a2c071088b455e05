"""What the NVML source reads, reading by reading: the per-GPU state the readers work on and the
registry of readers, each named as the catalog's `reading` column names it (a test checks that every
catalog reading has one) with the NVML call its errors are counted under.

Every reader runs in its GPU's worker thread and yields (catalog key, extra label values, raw value);
`NvmlSource.poll` scales and labels them.
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gpumon import catalog
from gpumon.catalog import Metric
from gpumon.model import Device, Labels

# NVML return codes the source treats specially.
NOT_SUPPORTED, NO_PERMISSION, TIMEOUT, FUNCTION_NOT_FOUND, GPU_IS_LOST, UNKNOWN = 3, 4, 10, 13, 15, 999
ABSENT_CODES = {NOT_SUPPORTED, FUNCTION_NOT_FOUND, NO_PERMISSION}
ARGUMENT_VERSION_MISMATCH = 25  # an older driver refusing a versioned struct (nvmlMemory_v2)
LOST_CODES = {GPU_IS_LOST, UNKNOWN}

ARCHITECTURES = {2: "kepler", 3: "maxwell", 4: "pascal", 5: "volta", 6: "turing", 7: "ampere",
                 8: "ada", 9: "hopper", 10: "blackwell", 13: "rubin"}

# GPM metric ids (NVML_GPM_METRIC_*) keyed as the catalog's `key`.
GPM_METRICS = {"graphics_util": 1, "sm_util": 2, "sm_occupancy": 3, "any_tensor_util": 5,
               "dram_bw_util": 10, "fp64_util": 11, "fp32_util": 12, "fp16_util": 13,
               "pcie_tx": 20, "pcie_rx": 21, "nvlink_rx_total": 60, "nvlink_tx_total": 61}
GPM_MIN_INTERVAL_S = 0.1  # NVML needs two GPM samples at least this far apart
NVLINK_MAX_LINKS = 36
LABEL_CACHE_MAX = 4096
NVLINK_ERRORS = {0: "replay", 1: "recovery", 2: "crc_flit", 3: "crc_data", 4: "ecc_data"}
# NVLink 4.0 and later (nvmlDeviceGetNvLinkVersion >= NVML_NVLINK_VERSION_4_0) protect data with ECC
# and count no data CRC errors: crc_data does not exist there and is not asked for (not an error).
NVLINK_VERSION_4_0 = 6
NVLINK_COUNTERS_BEFORE_4 = frozenset({"replay", "recovery", "crc_flit", "crc_data", "ecc_data"})
NVLINK_COUNTERS_FROM_4 = frozenset({"replay", "recovery", "crc_flit", "ecc_data"})
# Fields that take a link in scopeId; UINT_MAX sums all links (NVML_FI_DEV_NVLINK_THROUGHPUT_*).
ALL_LINKS = 0xFFFFFFFF
NVLINK_SUMMED_FIELDS = frozenset({138, 139, 140, 141})
NVLINK_SPEED_FIELD = 90  # NVML_FI_DEV_NVLINK_SPEED_MBPS_COMMON: MB/s per active link and direction
# What a GPU without an active NVLink lacks, as `GpuState.absent` names it: every gpumon_nvlink_* metric
# (GPM answers its NVLink ids with 0 on such a GPU, so asking is not enough).
NVLINK_ABSENT = frozenset(f"{m.reading}:{m.key}" if m.key else m.reading for m in catalog.METRICS
                          if m.source == "nvml" and m.name.startswith("gpumon_nvlink_"))


def gpm_nvlink_ids(link: int) -> tuple[int, int]:
    """NVML_GPM_METRIC_NVLINK_L<n>_{RX,TX}_PER_SEC: links 0-17 from id 62, links 18-35 from id 212."""
    base = 62 + 2 * link if link < 18 else 212 + 2 * (link - 18)
    return base, base + 1

CLOCK_EVENT_REASONS = {0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap",
                       0x8: "hw_slowdown", 0x10: "sync_boost", 0x20: "sw_thermal_slowdown",
                       0x40: "hw_thermal_slowdown", 0x80: "hw_power_brake_slowdown",
                       0x100: "display_clock_setting",
                       # nvmlClocksThrottleReasonBoardLimit / Reliability in nvidia-ml-py: the same
                       # bits as the board_limit and reliability violation counters
                       0x200: "board_limit", 0x400: "reliability"}
VIOLATION_POLICIES = {0: "power", 1: "thermal", 2: "sync_boost", 3: "board_limit", 4: "low_utilization",
                      5: "reliability", 10: "total_app_clocks", 11: "total_base_clocks"}
TEMPERATURE_THRESHOLDS = {0: "shutdown", 1: "slowdown", 2: "mem_max", 3: "gpu_max"}
ECC_SEVERITIES = {0: "corrected", 1: "uncorrected"}
FABRIC_NOT_SUPPORTED, FABRIC_COMPLETED = 0, 3  # nvmlGpuFabricState_t
# healthMask's 2-bit fields that say whether a problem is present: 0 not reported, 1 true, 2 false.
FABRIC_HEALTH = {"degraded_bandwidth": 0, "route_recovery": 2, "route_unhealthy": 4,
                 "access_timeout_recovery": 6}
# Its other fields (nvml.h, NVML_GPU_FABRIC_HEALTH_MASK_*): a 4-bit incorrect configuration at bit 8 (0 not
# reported, 1 none, else the reason), the partition assigned at bit 12 (1 true, 2 false), the global
# fabric manager's state at bit 14 (1 connected, 2 disconnected).
FABRIC_CONFIG_SHIFT, FABRIC_PARTITION_SHIFT, FABRIC_GFM_SHIFT = 8, 12, 14
FABRIC_CONFIG_REASONS = {2: "incorrect_sysguid", 3: "incorrect_chassis_sn", 4: "no_partition",
                         5: "insufficient_nvlinks", 6: "incompatible_gpu_fw", 7: "invalid_location",
                         8: "gpu_state_invalid"}
XID_EVENT = 0x8  # nvmlEventTypeXidCriticalError
EVENT_WAIT_MS = 500

Reading = Iterable[tuple[str, tuple[str, ...], float]]
Reader = Callable[[Any, "GpuState", "Plan"], Reading]
READERS: dict[str, tuple[str, Reader]] = {}  # catalog reading -> (NVML call, reader)
_R = TypeVar("_R", bound=Callable[..., Reading])


def reads(reading: str, call: str) -> Callable[[_R], _R]:
    """Register a reader for a catalog `reading`; `call` names the NVML function in error counts."""
    def register(fn: _R) -> _R:
        READERS[reading] = (call, fn)
        return fn
    return register


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def code(exc: Exception) -> int:
    return int(getattr(exc, "value", UNKNOWN))



@dataclass
class Plan:
    """What one tier reads: reader name -> {catalog key -> metric}."""

    readings: dict[str, dict[str, Metric]]
    field_ids: list[int]


@dataclass
class GpuState:
    index: int
    handle: Any
    device: Device
    labels: Labels
    absent: set[str] = field(default_factory=set)  # "reading" or "reading:key" found unsupported
    reasons_supported: int = 0
    reasons_legacy: bool = False  # driver older than 535: only the "ThrottleReasons" names exist
    gpm_prev: Any = None
    gpm_next: Any = None
    gpm_prev_t: float | None = None
    gpm_get: Any = None
    gpm_results: Any = None  # gpm_get.metrics, read through plain ctypes (see _plain_view)
    # (catalog key, label values, GPM metric id, utilisation label values or None) per requested metric
    gpm_wanted: list[tuple[str, tuple[str, ...], int, tuple[str, ...] | None]] = field(default_factory=list)
    gpm_wanted_for: tuple[int, int] = (-1, -1)  # (id of the plan, len(absent)) gpm_wanted was made for
    memory_v2: bool = True
    fabric_v3: bool = True  # nvmlGpuFabricInfo_v3 until the driver refuses it (then v2, until re-init)
    nvlinks: tuple[int, ...] = ()  # links active at (re)initialisation
    nvlink_counters: dict[int, frozenset[str]] = field(default_factory=dict)  # link -> error kinds it has
    nvlink_ratio: float = 0.0  # GPM MiB/s -> fraction of link speed; 0 while the speed is unknown
    label_cache: dict[tuple[str, tuple[str, ...]], Labels] = field(default_factory=dict)




def fabric_health(mask: int, summary: int) -> list[tuple[str, tuple[str, ...], float]]:
    """healthMask's fields and v3's healthSummary as (catalog key, label values, value); what the driver
    does not report has no series."""
    out: list[tuple[str, tuple[str, ...], float]] = []
    for problem, shift in FABRIC_HEALTH.items():
        bits = (mask >> shift) & 0x3
        if bits in (1, 2):
            out.append(("health", (problem,), 1.0 if bits == 1 else 0.0))
    config = (mask >> FABRIC_CONFIG_SHIFT) & 0xF
    if config:
        out.append(("health", ("incorrect_configuration",), 0.0 if config == 1 else 1.0))
        if config != 1:
            out.append(("config", (FABRIC_CONFIG_REASONS.get(config, f"unknown_{config}"),), 1.0))
    gfm = (mask >> FABRIC_GFM_SHIFT) & 0x3
    if gfm in (1, 2):
        out.append(("health", ("gfm_disconnected",), 1.0 if gfm == 2 else 0.0))
    partition = (mask >> FABRIC_PARTITION_SHIFT) & 0x3
    if partition in (1, 2):
        out.append(("partition", (), 1.0 if partition == 1 else 0.0))
    if summary in (1, 2, 3):  # NVML_GPU_FABRIC_HEALTH_SUMMARY_*; 0: not supported (or a v2 struct)
        out.append(("summary", (), float(summary)))
    return out


class Readers:
    """The readers, as methods of the source (they need its NVML object, clock and error handling)."""

    nvml: Any
    _clock: Callable[[], float]

    def _failed(self, gpu: GpuState, what: str, call: str, exc: Exception) -> None:
        raise NotImplementedError

    def _mark_absent(self, gpu: GpuState, what: str, exc: Exception) -> None:
        raise NotImplementedError

    # --- readers: each yields (catalog key, extra label values, raw value) ----------------------

    @reads("utilization", "nvmlDeviceGetUtilizationRates")
    def _read_utilization(self, gpu: GpuState, plan: Plan) -> Reading:
        u = self.nvml.nvmlDeviceGetUtilizationRates(gpu.handle)
        return (("gpu", (), u.gpu), ("memory", (), u.memory))

    @reads("memory", "nvmlDeviceGetMemoryInfo")
    def _read_memory(self, gpu: GpuState, plan: Plan) -> Reading:
        n = self.nvml
        if gpu.memory_v2:
            try:
                m = n.nvmlDeviceGetMemoryInfo(gpu.handle, version=n.nvmlMemory_v2)
                return (("used", (), m.used), ("free", (), m.free), ("total", (), m.total),
                        ("reserved", (), m.reserved))
            except Exception as exc:
                if code(exc) not in ABSENT_CODES | {ARGUMENT_VERSION_MISMATCH}:
                    raise
                gpu.memory_v2 = False  # refused after all: v1 from now on (gpumon_gpu_info says v2 until re-init)
        m = n.nvmlDeviceGetMemoryInfo(gpu.handle)
        return (("used", (), m.used), ("free", (), m.free), ("total", (), m.total))

    @reads("temperature", "nvmlDeviceGetTemperature")
    def _read_temperature(self, gpu: GpuState, plan: Plan) -> Reading:
        return (("", (), self.nvml.nvmlDeviceGetTemperature(gpu.handle, 0)),)

    @reads("power_usage", "nvmlDeviceGetPowerUsage")
    def _read_power_usage(self, gpu: GpuState, plan: Plan) -> Reading:
        return (("", (), self.nvml.nvmlDeviceGetPowerUsage(gpu.handle)),)

    @reads("power_limit", "nvmlDeviceGetEnforcedPowerLimit")
    def _read_power_limit(self, gpu: GpuState, plan: Plan) -> Reading:
        return (("", (), self.nvml.nvmlDeviceGetEnforcedPowerLimit(gpu.handle)),)

    @reads("power_constraints", "nvmlDeviceGetPowerManagementLimitConstraints")
    def _read_power_constraints(self, gpu: GpuState, plan: Plan) -> Reading:
        low, high = self.nvml.nvmlDeviceGetPowerManagementLimitConstraints(gpu.handle)
        return (("min", (), low), ("max", (), high))

    @reads("energy", "nvmlDeviceGetTotalEnergyConsumption")
    def _read_energy(self, gpu: GpuState, plan: Plan) -> Reading:
        return (("", (), self.nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle)),)

    @reads("clocks", "nvmlDeviceGetClockInfo")
    def _read_clocks(self, gpu: GpuState, plan: Plan) -> Reading:
        n = self.nvml
        return (("sm", (), n.nvmlDeviceGetClockInfo(gpu.handle, n.NVML_CLOCK_SM)),
                ("mem", (), n.nvmlDeviceGetClockInfo(gpu.handle, n.NVML_CLOCK_MEM)))

    @reads("clocks_max", "nvmlDeviceGetMaxClockInfo")
    def _read_clocks_max(self, gpu: GpuState, plan: Plan) -> Reading:
        n = self.nvml
        return (("sm", (), n.nvmlDeviceGetMaxClockInfo(gpu.handle, n.NVML_CLOCK_SM)),
                ("mem", (), n.nvmlDeviceGetMaxClockInfo(gpu.handle, n.NVML_CLOCK_MEM)))

    @reads("pstate", "nvmlDeviceGetPerformanceState")
    def _read_pstate(self, gpu: GpuState, plan: Plan) -> Reading:
        return (("", (), self.nvml.nvmlDeviceGetPerformanceState(gpu.handle)),)

    @reads("clock_event_reasons", "nvmlDeviceGetCurrentClocksEventReasons")
    def _read_clock_event_reasons(self, gpu: GpuState, plan: Plan) -> Reading:
        n = self.nvml
        if gpu.reasons_legacy:
            active = int(n.nvmlDeviceGetCurrentClocksThrottleReasons(gpu.handle))
        else:
            active = int(n.nvmlDeviceGetCurrentClocksEventReasons(gpu.handle))
        supported = gpu.reasons_supported or active
        return [("", (name,), 1.0 if active & bit else 0.0)
                for bit, name in CLOCK_EVENT_REASONS.items() if supported & bit]

    @reads("pcie_link", "nvmlDeviceGetCurrPcieLinkGeneration")
    def _read_pcie_link(self, gpu: GpuState, plan: Plan) -> Reading:
        n = self.nvml
        return (("generation", (), n.nvmlDeviceGetCurrPcieLinkGeneration(gpu.handle)),
                ("width", (), n.nvmlDeviceGetCurrPcieLinkWidth(gpu.handle)))

    @reads("pcie_link_max", "nvmlDeviceGetMaxPcieLinkGeneration")
    def _read_pcie_link_max(self, gpu: GpuState, plan: Plan) -> Reading:
        n = self.nvml
        return (("generation", (), n.nvmlDeviceGetMaxPcieLinkGeneration(gpu.handle)),
                ("width", (), n.nvmlDeviceGetMaxPcieLinkWidth(gpu.handle)))

    @reads("pcie_replay", "nvmlDeviceGetPcieReplayCounter")
    def _read_pcie_replay(self, gpu: GpuState, plan: Plan) -> Reading:
        return (("", (), self.nvml.nvmlDeviceGetPcieReplayCounter(gpu.handle)),)

    @reads("persistence_mode", "nvmlDeviceGetPersistenceMode")
    def _read_persistence_mode(self, gpu: GpuState, plan: Plan) -> Reading:
        return (("", (), int(self.nvml.nvmlDeviceGetPersistenceMode(gpu.handle))),)

    @reads("fabric", "nvmlDeviceGetGpuFabricInfoV")
    def _read_fabric(self, gpu: GpuState, plan: Plan) -> Reading:
        n = self.nvml
        info: Any = None
        if gpu.fabric_v3:  # v3 adds the health summary
            info = n.c_nvmlGpuFabricInfo_v3_t()
            try:
                n.nvmlDeviceGetGpuFabricInfoV(gpu.handle, ctypes.byref(info))
            except Exception as exc:
                if code(exc) != ARGUMENT_VERSION_MISMATCH:
                    raise
                gpu.fabric_v3 = False  # a driver before v3: v2 from now on, not asked again each round
                info = None
        if info is None:
            info = n.c_nvmlGpuFabricInfo_v2_t()
            n.nvmlDeviceGetGpuFabricInfoV(gpu.handle, ctypes.byref(info))
        # nvml.h declares the state an unsigned char, pynvml a 4-byte int: the padding after it is not
        # NVML's to clear.
        state = int(info.state) & 0xFF
        if state == FABRIC_NOT_SUPPORTED:  # not on an NVSwitch fabric (a PCIe H200, a single HGX board)
            return ()
        out: list[tuple[str, tuple[str, ...], float]] = [("state", (), state)]
        if state == FABRIC_COMPLETED:
            out.append(("status", (), info.status))
        return out + fabric_health(int(info.healthMask), int(getattr(info, "healthSummary", 0)) & 0xFF)

    @reads("remapped_rows", "nvmlDeviceGetRemappedRows")
    def _read_remapped_rows(self, gpu: GpuState, plan: Plan) -> Reading:
        corr, unc, pending, failure = self.nvml.nvmlDeviceGetRemappedRows(gpu.handle)
        return (("", ("correctable",), corr), ("", ("uncorrectable",), unc),
                ("pending", (), pending), ("failure", (), failure))

    @reads("ecc_volatile", "nvmlDeviceGetTotalEccErrors")
    def _read_ecc_volatile(self, gpu: GpuState, plan: Plan) -> Reading:
        return self._ecc(gpu, 0)

    @reads("ecc_aggregate", "nvmlDeviceGetTotalEccErrors")
    def _read_ecc_aggregate(self, gpu: GpuState, plan: Plan) -> Reading:
        return self._ecc(gpu, 1)

    def _ecc(self, gpu: GpuState, counter: int) -> Reading:
        get = self.nvml.nvmlDeviceGetTotalEccErrors
        return [("", (sev,), get(gpu.handle, code, counter)) for code, sev in ECC_SEVERITIES.items()]

    @reads("temperature_thresholds", "nvmlDeviceGetTemperatureThreshold")
    def _read_temperature_thresholds(self, gpu: GpuState, plan: Plan) -> Reading:
        return self._per_key(gpu, "temperature_thresholds", TEMPERATURE_THRESHOLDS,
                             lambda code: self.nvml.nvmlDeviceGetTemperatureThreshold(gpu.handle, code))

    @reads("violations", "nvmlDeviceGetViolationStatus")
    def _read_violations(self, gpu: GpuState, plan: Plan) -> Reading:
        return self._per_key(gpu, "violations", VIOLATION_POLICIES,
                             lambda code: self.nvml.nvmlDeviceGetViolationStatus(gpu.handle, code).violationTime)

    def _per_key(self, gpu: GpuState, reading: str, keys: dict[int, str], read: Callable[[int], Any]) -> Reading:
        """Readings made of one call per label value, each of which may be unsupported on its own."""
        out = []
        for arg, name in keys.items():
            if f"{reading}:{name}" in gpu.absent:
                continue
            try:
                out.append(("", (name,), read(arg)))
            except Exception as exc:
                self._failed(gpu, f"{reading}:{name}", READERS[reading][0], exc)
        return out

    @reads("nvlink_state", "nvmlDeviceGetNvLinkState")
    def _read_nvlink_state(self, gpu: GpuState, plan: Plan) -> Reading:
        state = self.nvml.nvmlDeviceGetNvLinkState
        return [("", (str(link),), 1.0 if int(state(gpu.handle, link)) == 1 else 0.0) for link in gpu.nvlinks]

    @reads("nvlink_errors", "nvmlDeviceGetNvLinkErrorCounter")
    def _read_nvlink_errors(self, gpu: GpuState, plan: Plan) -> Reading:
        # Counter by counter: a driver may refuse one kind (CRC data on newer NVLink generations)
        # and still count the others.
        get = self.nvml.nvmlDeviceGetNvLinkErrorCounter
        out: list[tuple[str, tuple[str, ...], float]] = []
        for code, name in NVLINK_ERRORS.items():
            if f"nvlink_errors:{name}" in gpu.absent:
                continue
            links = [link for link in gpu.nvlinks if name in gpu.nvlink_counters.get(link, NVLINK_COUNTERS_BEFORE_4)]
            try:
                out.extend([("", (str(link), name), get(gpu.handle, link, code)) for link in links])
            except Exception as exc:
                self._failed(gpu, f"nvlink_errors:{name}", READERS["nvlink_errors"][0], exc)
        return out

    @reads("nvlink_speed", "nvmlDeviceGetFieldValues")
    def _read_nvlink_speed(self, gpu: GpuState, plan: Plan) -> Reading:
        # Its own call rather than a row of `fields`: the value is also kept for the utilisation ratio.
        (v,) = plain_view(self.nvml.nvmlDeviceGetFieldValues(gpu.handle, [NVLINK_SPEED_FIELD]))
        if v.nvmlReturn != 0:
            err = self.nvml.NVMLError(v.nvmlReturn)
            if code(err) in ABSENT_CODES:  # no speed, no ratio: both count as unsupported
                self._mark_absent(gpu, "gpm:nvlink_utilization", err)
            raise err
        speed = _field_value(v)
        if not (math.isfinite(speed) and speed > 0):
            gpu.nvlink_ratio = 0.0
            return ()
        gpu.nvlink_ratio = catalog.MIB / (speed * catalog.MEGA)
        return (("", (), speed),)

    @reads("fields", "nvmlDeviceGetFieldValues")
    def _read_fields(self, gpu: GpuState, plan: Plan) -> Reading:
        ids = [i for i in plan.field_ids if f"fields:{i}" not in gpu.absent]
        if not ids:
            return ()
        out = []
        # NVLink throughput fields read one link per scopeId (scope 0 is link 0 alone): ask for the sum.
        request = [(i, ALL_LINKS) if i in NVLINK_SUMMED_FIELDS else i for i in ids]
        for fid, v in zip(ids, plain_view(self.nvml.nvmlDeviceGetFieldValues(gpu.handle, request)), strict=True):
            if v.nvmlReturn != 0:
                err = self.nvml.NVMLError(v.nvmlReturn)
                self._failed(gpu, f"fields:{fid}", READERS["fields"][0], err)
                continue
            out.append((str(fid), (), _field_value(v)))
        return out

    @reads("gpm", "nvmlGpmMetricsGet")
    def _read_gpm(self, gpu: GpuState, plan: Plan) -> Reading:
        n = self.nvml
        now = self._clock()
        n.nvmlGpmSampleGet(gpu.handle, gpu.gpm_next)
        if gpu.gpm_prev_t is None:
            gpu.gpm_prev, gpu.gpm_next, gpu.gpm_prev_t = gpu.gpm_next, gpu.gpm_prev, now
            return ()
        if now - gpu.gpm_prev_t < GPM_MIN_INTERVAL_S:
            return ()  # keep the older sample; the next poll measures over a longer window
        mg = gpu.gpm_get
        if gpu.gpm_wanted_for != (id(plan), len(gpu.absent)):  # absent only grows: its size tells
            self._plan_gpm(gpu, plan)
        wanted, results = gpu.gpm_wanted, gpu.gpm_results
        mg.sample1, mg.sample2 = gpu.gpm_prev, gpu.gpm_next
        n.nvmlGpmMetricsGet(mg)
        gpu.gpm_prev, gpu.gpm_next, gpu.gpm_prev_t = gpu.gpm_next, gpu.gpm_prev, now
        out = []
        isfinite = math.isfinite
        ratio = gpu.nvlink_ratio
        for j, (key, label_values, _, ratio_labels) in enumerate(wanted):
            metric = results[j]
            if metric.nvmlReturn != 0:
                self._failed(gpu, f"gpm:{key}", "nvmlGpmMetricsGet", n.NVMLError(metric.nvmlReturn))
            elif isfinite(value := metric.value):  # NVML can return NaN with success
                out.append((key, label_values, value))
                if ratio_labels is not None and ratio:
                    out.append(("nvlink_utilization", ratio_labels, value * ratio))
        return out

    def _plan_gpm(self, gpu: GpuState, plan: Plan) -> None:
        """Which GPM metrics to ask for, written into the request once: NVML leaves the ids alone."""
        # One entry per metric, per link for NVLink rates; a per-link rate also carries the labels of
        # its utilisation ratio (computed from it in `_read_gpm`), or None when that is not exported.
        wanted: list[tuple[str, tuple[str, ...], int, tuple[str, ...] | None]] = []
        ratios = "nvlink_utilization" in plan.readings["gpm"] and "gpm:nvlink_utilization" not in gpu.absent
        for key in plan.readings["gpm"]:
            if f"gpm:{key}" in gpu.absent or key == "nvlink_utilization":
                continue
            if key in ("nvlink_rx", "nvlink_tx"):
                direction = key.removeprefix("nvlink_")
                wanted.extend((key, (str(link),), gpm_nvlink_ids(link)[key == "nvlink_tx"],
                               (str(link), direction) if ratios else None) for link in gpu.nvlinks)
            else:
                wanted.append((key, (), GPM_METRICS[key], None))
        mg = gpu.gpm_get
        mg.version = self.nvml.NVML_GPM_METRICS_GET_VERSION
        mg.numMetrics = len(wanted)
        for j, (_, _, metric_id, _) in enumerate(wanted):
            gpu.gpm_results[j].metricId = metric_id
        gpu.gpm_wanted, gpu.gpm_wanted_for = wanted, (id(plan), len(gpu.absent))



@functools.cache
def _plain_type(cls: type[ctypes.Structure]) -> type[ctypes.Structure] | None:
    """`cls`'s layout as a plain ctypes structure, or None if it would not be the same layout."""
    attrs: dict[str, Any] = {"_fields_": cls._fields_}
    if hasattr(cls, "_pack_"):
        attrs["_pack_"] = cls._pack_
    plain = type(f"Plain{cls.__name__}", (ctypes.Structure,), attrs)
    return plain if ctypes.sizeof(plain) == ctypes.sizeof(cls) else None


def plain_view(array: Any) -> Any:
    """The same memory as a ctypes array of pynvml structures, read without pynvml's per-attribute
    hook: `_PrintableStructure.__getattribute__` is Python code run on every field read, and
    reading GPM results and field values through it was a quarter of a poll's Python time."""
    if not isinstance(array, ctypes.Array) or not issubclass(array._type_, ctypes.Structure):
        return array  # not ctypes (a test double): read it as it is
    plain = _plain_type(array._type_)
    return array if plain is None else (plain * len(array)).from_buffer(array)


def _field_value(v: Any) -> float:
    kind = int(v.valueType)
    u = v.value
    return float((u.dVal, u.uiVal, u.ulVal, u.ullVal, u.sllVal, u.siVal, u.usVal)[kind]) if kind <= 6 else math.nan
