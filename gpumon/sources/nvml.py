"""The NVML source: static facts, tiered readings and XID events from nvidia-ml-py.

It talks to NVML only through the `nvml` object it is given: the real `pynvml` module in
production, or `gpumon.sources.capture.CaptureNvml` (a recorded capture behind the same API) in
demo mode and tests. Errors become values here, in one place: NotSupported makes a metric absent
and is logged once; GpuIsLost/Unknown raise `DeviceLost`; anything else is counted and skipped.

Every method that calls NVML is meant to run in a worker thread owned by the sampler, one thread
per GPU, so the state of one GPU (`_Gpu`) is only ever touched by one thread at a time.
"""

from __future__ import annotations

import ctypes
import functools
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog

from gpumon import catalog
from gpumon.catalog import Metric
from gpumon.model import BackendUnavailable, Device, DeviceLost, Labels, Sample, Tier

log = structlog.get_logger("gpumon.nvml")

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
# What a GPU without an active NVLink lacks, as `_Gpu.absent` names it: every gpumon_nvlink_* metric
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
XID_EVENT = 0x8  # nvmlEventTypeXidCriticalError
EVENT_WAIT_MS = 500

# Reading -> the NVML function it calls, for error accounting.
READING_CALLS = {
    "gpm": "nvmlGpmMetricsGet", "utilization": "nvmlDeviceGetUtilizationRates",
    "memory": "nvmlDeviceGetMemoryInfo", "temperature": "nvmlDeviceGetTemperature",
    "fields": "nvmlDeviceGetFieldValues", "temperature_thresholds": "nvmlDeviceGetTemperatureThreshold",
    "power_usage": "nvmlDeviceGetPowerUsage", "power_limit": "nvmlDeviceGetEnforcedPowerLimit",
    "power_constraints": "nvmlDeviceGetPowerManagementLimitConstraints",
    "energy": "nvmlDeviceGetTotalEnergyConsumption", "clocks": "nvmlDeviceGetClockInfo",
    "clocks_max": "nvmlDeviceGetMaxClockInfo", "clock_event_reasons": "nvmlDeviceGetCurrentClocksEventReasons",
    "pstate": "nvmlDeviceGetPerformanceState", "violations": "nvmlDeviceGetViolationStatus",
    "pcie_link": "nvmlDeviceGetCurrPcieLinkGeneration", "pcie_link_max": "nvmlDeviceGetMaxPcieLinkGeneration",
    "pcie_replay": "nvmlDeviceGetPcieReplayCounter", "ecc_volatile": "nvmlDeviceGetTotalEccErrors",
    "ecc_aggregate": "nvmlDeviceGetTotalEccErrors", "remapped_rows": "nvmlDeviceGetRemappedRows",
    "processes": "nvmlDeviceGetComputeRunningProcesses",
    "nvlink_state": "nvmlDeviceGetNvLinkState", "nvlink_errors": "nvmlDeviceGetNvLinkErrorCounter",
    "nvlink_speed": "nvmlDeviceGetFieldValues",
}

Reading = Iterable[tuple[str, tuple[str, ...], float]]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _code(exc: Exception) -> int:
    return int(getattr(exc, "value", UNKNOWN))


@dataclass
class _Plan:
    """What one tier reads: reader name -> {catalog key -> metric}."""

    readings: dict[str, dict[str, Metric]]
    field_ids: list[int]


@dataclass
class _Gpu:
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
    nvlinks: tuple[int, ...] = ()  # links active at (re)initialisation
    nvlink_counters: dict[int, frozenset[str]] = field(default_factory=dict)  # link -> error kinds it has
    nvlink_ratio: float = 0.0  # GPM MiB/s -> fraction of link speed; 0 while the speed is unknown
    label_cache: dict[tuple[str, tuple[str, ...]], Labels] = field(default_factory=dict)


class NvmlSource:
    """Reads GPUs through an NVML API object (real `pynvml` or a capture-backed fake)."""

    def __init__(self, nvml: Any, *, backend: str = "nvml", opt_ins: frozenset[str] = frozenset(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.nvml = nvml
        self._clock = clock  # for the GPM sample spacing; injectable for tests
        self.backend = backend
        self._plans = {tier: self._plan(tier, opt_ins) for tier in Tier}
        self._gpus: list[_Gpu] = []
        self._errors: Counter[tuple[str, str]] = Counter()
        self._errors_lock = threading.Lock()
        self._driver_version = ""
        self._cuda_version = ""
        self._events_stop = threading.Event()
        self._events_thread: threading.Thread | None = None
        self._event_set: Any = None

    # --- lifecycle -----------------------------------------------------------------------------

    def open(self) -> list[Device]:
        """Initialise NVML and read every GPU's static facts. Raises BackendUnavailable."""
        try:
            self.nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            raise BackendUnavailable(self._init_failure(exc)) from None
        self._driver_version = self._system(self.nvml.nvmlSystemGetDriverVersion, _text)
        self._cuda_version = self._system(
            self.nvml.nvmlSystemGetCudaDriverVersion, lambda v: f"{int(v) // 1000}.{int(v) % 1000 // 10}")
        count = self.nvml.nvmlDeviceGetCount()
        self._gpus = [self._open_gpu(i, self.nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
        return [g.device for g in self._gpus]

    def close(self) -> None:
        self.stop_events()
        try:
            self.nvml.nvmlShutdown()
        except Exception as exc:
            log.debug("nvml shutdown failed", error=str(exc))

    def reopen(self, index: int) -> Device:
        """Re-acquire a lost GPU by UUID and re-read its static facts. Raises DeviceLost."""
        old = self._gpus[index]
        try:
            handle = self.nvml.nvmlDeviceGetHandleByUUID(old.device.uuid)
            gpu = self._open_gpu(index, handle)
        except Exception as exc:
            raise DeviceLost(index, str(exc)) from None
        self._free_gpm(old)  # GPM samples are the caller's to free; each re-initialisation allocates two
        self._gpus[index] = gpu
        if self._event_set is not None:
            self._register_events(gpu)
        return gpu.device

    def configure(self, opt_ins: frozenset[str]) -> None:
        """Switch opt-in metrics on or off; takes effect at the next poll."""
        self._plans = {tier: self._plan(tier, opt_ins) for tier in Tier}

    @property
    def devices(self) -> list[Device]:
        return [g.device for g in self._gpus]

    def error_counts(self) -> dict[tuple[str, str], int]:
        with self._errors_lock:
            return dict(self._errors)

    def unsupported_count(self, index: int) -> int:
        """How many catalog metrics the GPU lacks because NVML said NotSupported."""
        absent = self._gpus[index].absent
        return sum(1 for m in catalog.METRICS if m.source == "nvml"
                   and (m.reading in absent or f"{m.reading}:{m.key}" in absent))

    # --- polling -------------------------------------------------------------------------------

    def poll(self, index: int, tier: Tier) -> Sample:
        """Read one tier of one GPU. Runs in that GPU's worker thread. Raises DeviceLost."""
        gpu = self._gpus[index]
        sample = Sample(f"gpu{index}", tier.value, time.time())
        plan = self._plans[tier]
        for reading, metrics in plan.readings.items():
            if reading in gpu.absent:
                continue
            try:
                for key, label_values, raw in getattr(self, f"_read_{reading}")(gpu, plan):
                    metric = metrics.get(key)
                    if metric is None:
                        continue
                    # Label tuples repeat poll after poll: build each once (a third of a poll's Python time).
                    labels = gpu.label_cache.get((metric.name, label_values))
                    if labels is None:
                        if len(gpu.label_cache) > LABEL_CACHE_MAX:  # per-pid labels come and go
                            gpu.label_cache.clear()
                        labels = gpu.labels + tuple(zip(metric.labels, label_values, strict=True))
                        gpu.label_cache[(metric.name, label_values)] = labels
                    sample.add(metric.name, labels, raw * metric.scale)
            except Exception as exc:
                self._failed(gpu, reading, READING_CALLS[reading], exc)
        return sample

    def _failed(self, gpu: _Gpu, what: str, call: str, exc: Exception) -> None:
        code = _code(exc)
        if code in LOST_CODES:
            raise DeviceLost(gpu.index, f"{call}: {type(exc).__name__}") from None
        if code in ABSENT_CODES:
            self._mark_absent(gpu, what, exc)
            return
        self._count_error(call, exc)

    def _mark_absent(self, gpu: _Gpu, what: str, exc: Exception) -> None:
        if what in gpu.absent:
            return
        gpu.absent.add(what)
        level = log.warning if _code(exc) == NO_PERMISSION else log.info
        metrics = [m.name for m in catalog.METRICS if m.source == "nvml"
                   and (what == m.reading or what == f"{m.reading}:{m.key}")]
        level("metric not available on this GPU; no series will be exported", gpu=gpu.index,
              reading=what, error=type(exc).__name__, metrics=metrics)

    def _count_error(self, call: str, exc: Exception) -> None:
        with self._errors_lock:
            self._errors[(call, type(exc).__name__)] += 1

    # --- static facts --------------------------------------------------------------------------

    def _open_gpu(self, index: int, handle: Any) -> _Gpu:
        n = self.nvml
        uuid = _text(n.nvmlDeviceGetUUID(handle))
        device = Device(
            index=index,
            uuid=uuid,
            name=self._static(lambda: _text(n.nvmlDeviceGetName(handle)), "unknown"),
            pci_bus_id=self._static(lambda: _text(n.nvmlDeviceGetPciInfo(handle).busId), ""),
            architecture=self._static(
                lambda: ARCHITECTURES.get(int(n.nvmlDeviceGetArchitecture(handle)), "unknown"), "unknown"),
            gpm_supported=self._static(
                lambda: bool(n.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice), False),
            driver_version=self._driver_version,
            cuda_driver_version=self._cuda_version,
            memory_info="v2" if self._has_memory_v2(handle) else "v1",
        )
        gpu = _Gpu(index, handle, device, device.labels, memory_v2=device.memory_info == "v2")
        gpu.nvlinks = self._active_nvlinks(handle)
        gpu.nvlink_counters = {link: self._nvlink_counters(handle, link) for link in gpu.nvlinks}
        try:
            gpu.reasons_supported = int(n.nvmlDeviceGetSupportedClocksEventReasons(handle))
        except Exception as exc:
            if _code(exc) in LOST_CODES:
                raise
            gpu.reasons_legacy = _code(exc) == FUNCTION_NOT_FOUND
            gpu.reasons_supported = self._static(lambda: int(n.nvmlDeviceGetSupportedClocksThrottleReasons(handle)), 0)
        if not gpu.nvlinks:  # no NVLink (or none active): those metrics are simply absent
            gpu.absent.update(NVLINK_ABSENT)
        if device.gpm_supported:
            try:
                gpu.gpm_prev, gpu.gpm_next = n.nvmlGpmSampleAlloc(), n.nvmlGpmSampleAlloc()
                gpu.gpm_get = n.c_nvmlGpmMetricsGet_t()
                gpu.gpm_results = _plain_view(gpu.gpm_get.metrics)
                gpu.gpm_wanted_for = (-1, -1)
                n.nvmlGpmSampleGet(handle, gpu.gpm_prev)
                gpu.gpm_prev_t = self._clock()
            except Exception as exc:
                self._failed(gpu, "gpm", "nvmlGpmSampleGet", exc)
        else:
            gpu.absent.add("gpm")
            log.warning("GPU has no GPM: SM activity, occupancy and tensor activity are not exported; "
                        "gpumon_gpu_utilization_ratio (util.gpu) is, and is not SM activity",
                        gpu=index, name=device.name, architecture=device.architecture)
        return gpu

    def _active_nvlinks(self, handle: Any) -> tuple[int, ...]:
        """Links whose state reads active now; the first NotSupported/InvalidArgument ends the scan."""
        links = []
        for link in range(NVLINK_MAX_LINKS):
            try:
                if int(self.nvml.nvmlDeviceGetNvLinkState(handle, link)) == 1:
                    links.append(link)
            except Exception as exc:
                if _code(exc) in LOST_CODES:
                    raise
                break
        return tuple(links)

    def _has_memory_v2(self, handle: Any) -> bool:
        """Whether the driver answers nvmlMemory_v2 (R510 and later); older ones refuse the version."""
        n = self.nvml
        try:
            n.nvmlDeviceGetMemoryInfo(handle, version=n.nvmlMemory_v2)
        except Exception as exc:
            if _code(exc) in LOST_CODES:
                raise
            if _code(exc) in ABSENT_CODES | {ARGUMENT_VERSION_MISMATCH}:
                log.info("GPU memory is read with nvmlMemory_v1: `used` includes the driver's reserved memory "
                         "and no reserved figure is exported (gpumon_gpu_info{memory_info=\"v1\"})",
                         uuid=_text(n.nvmlDeviceGetUUID(handle)))
                return False
        return True

    def _nvlink_counters(self, handle: Any, link: int) -> frozenset[str]:
        """The error counters a link has, by its NVLink version (all of them when it is unknown)."""
        version = self._static(lambda: int(self.nvml.nvmlDeviceGetNvLinkVersion(handle, link)), 0)
        return NVLINK_COUNTERS_FROM_4 if version >= NVLINK_VERSION_4_0 else NVLINK_COUNTERS_BEFORE_4

    def _free_gpm(self, gpu: _Gpu) -> None:
        """Free a GPU's GPM samples. Runs in its worker thread, so no poll is using them."""
        for sample in (gpu.gpm_prev, gpu.gpm_next):
            if sample is not None:
                try:
                    self.nvml.nvmlGpmSampleFree(sample)
                except Exception as exc:
                    log.debug("GPM sample free failed", gpu=gpu.index, error=str(exc))
        gpu.gpm_prev = gpu.gpm_next = gpu.gpm_prev_t = None

    def _static(self, read: Callable[[], Any], default: Any) -> Any:
        try:
            return read()
        except Exception as exc:
            if _code(exc) in LOST_CODES:
                raise
            return default

    def _system(self, read: Callable[[], Any], convert: Callable[[Any], str]) -> str:
        try:
            return convert(read())
        except Exception:
            return ""

    def _init_failure(self, exc: Exception) -> str:
        name = type(exc).__name__
        if "LibraryNotFound" in name or isinstance(exc, OSError):
            return ("NVML (libnvidia-ml.so.1) could not be loaded: is the NVIDIA driver installed? "
                    "Use --backend auto or --backend replay:PATH to run without a GPU.")
        if "DriverNotLoaded" in name:
            return "The NVIDIA kernel driver is not loaded (NVML: Driver Not Loaded)."
        return f"NVML failed to initialise: {exc} ({name})."

    # --- plans ---------------------------------------------------------------------------------

    @staticmethod
    def _plan(tier: Tier, opt_ins: frozenset[str]) -> _Plan:
        readings: dict[str, dict[str, Metric]] = {}
        for m in catalog.nvml_metrics(tier, opt_ins):
            readings.setdefault(m.reading, {})[m.key] = m
        field_ids = [int(k) for k in readings.get("fields", {})]
        return _Plan(readings, field_ids)

    # --- readers: each yields (catalog key, extra label values, raw value) ----------------------

    def _read_utilization(self, gpu: _Gpu, plan: _Plan) -> Reading:
        u = self.nvml.nvmlDeviceGetUtilizationRates(gpu.handle)
        return (("gpu", (), u.gpu), ("memory", (), u.memory))

    def _read_memory(self, gpu: _Gpu, plan: _Plan) -> Reading:
        n = self.nvml
        if gpu.memory_v2:
            try:
                m = n.nvmlDeviceGetMemoryInfo(gpu.handle, version=n.nvmlMemory_v2)
                return (("used", (), m.used), ("free", (), m.free), ("total", (), m.total),
                        ("reserved", (), m.reserved))
            except Exception as exc:
                if _code(exc) not in ABSENT_CODES | {ARGUMENT_VERSION_MISMATCH}:
                    raise
                gpu.memory_v2 = False  # refused after all: v1 from now on (gpumon_gpu_info says v2 until re-init)
        m = n.nvmlDeviceGetMemoryInfo(gpu.handle)
        return (("used", (), m.used), ("free", (), m.free), ("total", (), m.total))

    def _read_temperature(self, gpu: _Gpu, plan: _Plan) -> Reading:
        return (("", (), self.nvml.nvmlDeviceGetTemperature(gpu.handle, 0)),)

    def _read_power_usage(self, gpu: _Gpu, plan: _Plan) -> Reading:
        return (("", (), self.nvml.nvmlDeviceGetPowerUsage(gpu.handle)),)

    def _read_power_limit(self, gpu: _Gpu, plan: _Plan) -> Reading:
        return (("", (), self.nvml.nvmlDeviceGetEnforcedPowerLimit(gpu.handle)),)

    def _read_power_constraints(self, gpu: _Gpu, plan: _Plan) -> Reading:
        low, high = self.nvml.nvmlDeviceGetPowerManagementLimitConstraints(gpu.handle)
        return (("min", (), low), ("max", (), high))

    def _read_energy(self, gpu: _Gpu, plan: _Plan) -> Reading:
        return (("", (), self.nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle)),)

    def _read_clocks(self, gpu: _Gpu, plan: _Plan) -> Reading:
        n = self.nvml
        return (("sm", (), n.nvmlDeviceGetClockInfo(gpu.handle, n.NVML_CLOCK_SM)),
                ("mem", (), n.nvmlDeviceGetClockInfo(gpu.handle, n.NVML_CLOCK_MEM)))

    def _read_clocks_max(self, gpu: _Gpu, plan: _Plan) -> Reading:
        n = self.nvml
        return (("sm", (), n.nvmlDeviceGetMaxClockInfo(gpu.handle, n.NVML_CLOCK_SM)),
                ("mem", (), n.nvmlDeviceGetMaxClockInfo(gpu.handle, n.NVML_CLOCK_MEM)))

    def _read_pstate(self, gpu: _Gpu, plan: _Plan) -> Reading:
        return (("", (), self.nvml.nvmlDeviceGetPerformanceState(gpu.handle)),)

    def _read_clock_event_reasons(self, gpu: _Gpu, plan: _Plan) -> Reading:
        n = self.nvml
        if gpu.reasons_legacy:
            active = int(n.nvmlDeviceGetCurrentClocksThrottleReasons(gpu.handle))
        else:
            active = int(n.nvmlDeviceGetCurrentClocksEventReasons(gpu.handle))
        supported = gpu.reasons_supported or active
        return [("", (name,), 1.0 if active & bit else 0.0)
                for bit, name in CLOCK_EVENT_REASONS.items() if supported & bit]

    def _read_pcie_link(self, gpu: _Gpu, plan: _Plan) -> Reading:
        n = self.nvml
        return (("generation", (), n.nvmlDeviceGetCurrPcieLinkGeneration(gpu.handle)),
                ("width", (), n.nvmlDeviceGetCurrPcieLinkWidth(gpu.handle)))

    def _read_pcie_link_max(self, gpu: _Gpu, plan: _Plan) -> Reading:
        n = self.nvml
        return (("generation", (), n.nvmlDeviceGetMaxPcieLinkGeneration(gpu.handle)),
                ("width", (), n.nvmlDeviceGetMaxPcieLinkWidth(gpu.handle)))

    def _read_pcie_replay(self, gpu: _Gpu, plan: _Plan) -> Reading:
        return (("", (), self.nvml.nvmlDeviceGetPcieReplayCounter(gpu.handle)),)

    def _read_remapped_rows(self, gpu: _Gpu, plan: _Plan) -> Reading:
        corr, unc, pending, failure = self.nvml.nvmlDeviceGetRemappedRows(gpu.handle)
        return (("", ("correctable",), corr), ("", ("uncorrectable",), unc),
                ("pending", (), pending), ("failure", (), failure))

    def _read_ecc_volatile(self, gpu: _Gpu, plan: _Plan) -> Reading:
        return self._ecc(gpu, 0)

    def _read_ecc_aggregate(self, gpu: _Gpu, plan: _Plan) -> Reading:
        return self._ecc(gpu, 1)

    def _ecc(self, gpu: _Gpu, counter: int) -> Reading:
        get = self.nvml.nvmlDeviceGetTotalEccErrors
        return [("", (sev,), get(gpu.handle, code, counter)) for code, sev in ECC_SEVERITIES.items()]

    def _read_temperature_thresholds(self, gpu: _Gpu, plan: _Plan) -> Reading:
        return self._per_key(gpu, "temperature_thresholds", TEMPERATURE_THRESHOLDS,
                             lambda code: self.nvml.nvmlDeviceGetTemperatureThreshold(gpu.handle, code))

    def _read_violations(self, gpu: _Gpu, plan: _Plan) -> Reading:
        return self._per_key(gpu, "violations", VIOLATION_POLICIES,
                             lambda code: self.nvml.nvmlDeviceGetViolationStatus(gpu.handle, code).violationTime)

    def _per_key(self, gpu: _Gpu, reading: str, keys: dict[int, str], read: Callable[[int], Any]) -> Reading:
        """Readings made of one call per label value, each of which may be unsupported on its own."""
        out = []
        for code, name in keys.items():
            if f"{reading}:{name}" in gpu.absent:
                continue
            try:
                out.append(("", (name,), read(code)))
            except Exception as exc:
                self._failed(gpu, f"{reading}:{name}", READING_CALLS[reading], exc)
        return out

    def _read_nvlink_state(self, gpu: _Gpu, plan: _Plan) -> Reading:
        state = self.nvml.nvmlDeviceGetNvLinkState
        return [("", (str(link),), 1.0 if int(state(gpu.handle, link)) == 1 else 0.0) for link in gpu.nvlinks]

    def _read_nvlink_errors(self, gpu: _Gpu, plan: _Plan) -> Reading:
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
                self._failed(gpu, f"nvlink_errors:{name}", READING_CALLS["nvlink_errors"], exc)
        return out

    def _read_nvlink_speed(self, gpu: _Gpu, plan: _Plan) -> Reading:
        # Its own call rather than a row of `fields`: the value is also kept for the utilisation ratio.
        (v,) = _plain_view(self.nvml.nvmlDeviceGetFieldValues(gpu.handle, [NVLINK_SPEED_FIELD]))
        if v.nvmlReturn != 0:
            err = self.nvml.NVMLError(v.nvmlReturn)
            if _code(err) in ABSENT_CODES:  # no speed, no ratio: both count as unsupported
                self._mark_absent(gpu, "gpm:nvlink_utilization", err)
            raise err
        speed = _field_value(v)
        if not (math.isfinite(speed) and speed > 0):
            gpu.nvlink_ratio = 0.0
            return ()
        gpu.nvlink_ratio = catalog.MIB / (speed * catalog.MEGA)
        return (("", (), speed),)

    def _read_processes(self, gpu: _Gpu, plan: _Plan) -> Reading:
        procs = self.nvml.nvmlDeviceGetComputeRunningProcesses(gpu.handle)
        used = [(p.pid, p.usedGpuMemory) for p in procs]
        out: list[tuple[str, tuple[str, ...], float]] = [
            ("count", (), len(used)), ("memory", (), sum(mem or 0 for _, mem in used))]
        if "pid" in plan.readings["processes"]:
            out.extend(("pid", (str(pid),), mem) for pid, mem in used if mem is not None)
        return out

    def _read_fields(self, gpu: _Gpu, plan: _Plan) -> Reading:
        ids = [i for i in plan.field_ids if f"fields:{i}" not in gpu.absent]
        if not ids:
            return ()
        out = []
        # NVLink throughput fields read one link per scopeId (scope 0 is link 0 alone): ask for the sum.
        request = [(i, ALL_LINKS) if i in NVLINK_SUMMED_FIELDS else i for i in ids]
        for fid, v in zip(ids, _plain_view(self.nvml.nvmlDeviceGetFieldValues(gpu.handle, request)), strict=True):
            if v.nvmlReturn != 0:
                err = self.nvml.NVMLError(v.nvmlReturn)
                self._failed(gpu, f"fields:{fid}", READING_CALLS["fields"], err)
                continue
            out.append((str(fid), (), _field_value(v)))
        return out

    def _read_gpm(self, gpu: _Gpu, plan: _Plan) -> Reading:
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

    def _plan_gpm(self, gpu: _Gpu, plan: _Plan) -> None:
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

    # --- XID events ----------------------------------------------------------------------------

    def start_events(self, on_xid: Callable[[int, int, float], None]) -> None:
        """Start the one thread that waits for XID events; `on_xid(gpu, xid, unix_time)` is called
        from that thread, so it must hand over to the event loop itself."""
        try:
            self._event_set = self.nvml.nvmlEventSetCreate()
        except Exception as exc:
            log.info("NVML events unavailable; XID errors will not be counted", error=type(exc).__name__)
            return
        for gpu in self._gpus:
            self._register_events(gpu)
        self._events_stop.clear()
        self._events_thread = threading.Thread(
            target=self._event_loop, args=(on_xid,), name="gpumon-nvml-events", daemon=True)
        self._events_thread.start()

    def stop_events(self) -> None:
        if self._events_thread is None:
            return
        self._events_stop.set()
        self._events_thread.join(timeout=2 * EVENT_WAIT_MS / 1000)
        self._events_thread = None
        try:
            self.nvml.nvmlEventSetFree(self._event_set)
        except Exception as exc:
            log.debug("event set free failed", error=str(exc))
        self._event_set = None

    def _register_events(self, gpu: _Gpu) -> None:
        try:
            self.nvml.nvmlDeviceRegisterEvents(gpu.handle, XID_EVENT, self._event_set)
        except Exception as exc:
            log.info("GPU does not deliver XID events", gpu=gpu.index, error=type(exc).__name__)

    def _event_loop(self, on_xid: Callable[[int, int, float], None]) -> None:
        while not self._events_stop.is_set():
            try:
                data = self.nvml.nvmlEventSetWait_v2(self._event_set, EVENT_WAIT_MS)
            except Exception as exc:
                if _code(exc) != TIMEOUT:
                    self._count_error("nvmlEventSetWait_v2", exc)
                    self._events_stop.wait(EVENT_WAIT_MS / 1000)  # a failing wait must not spin
                continue
            if int(data.eventType) & XID_EVENT:
                index = self._index_of(data.device)
                if index is not None:
                    on_xid(index, int(data.eventData), time.time())

    def _index_of(self, handle: Any) -> int | None:
        key = _handle_key(handle)
        return next((g.index for g in self._gpus if _handle_key(g.handle) == key), None)


def _handle_key(handle: Any) -> int:
    """Compare NVML device handles by address (ctypes pointers) or identity (fakes)."""
    try:
        return int(ctypes.cast(handle, ctypes.c_void_p).value or 0)
    except (ctypes.ArgumentError, TypeError):
        return id(handle)


@functools.cache
def _plain_type(cls: type[ctypes.Structure]) -> type[ctypes.Structure] | None:
    """`cls`'s layout as a plain ctypes structure, or None if it would not be the same layout."""
    attrs: dict[str, Any] = {"_fields_": cls._fields_}
    if hasattr(cls, "_pack_"):
        attrs["_pack_"] = cls._pack_
    plain = type(f"Plain{cls.__name__}", (ctypes.Structure,), attrs)
    return plain if ctypes.sizeof(plain) == ctypes.sizeof(cls) else None


def _plain_view(array: Any) -> Any:
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
