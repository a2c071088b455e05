"""The NVML source: static facts, tiered readings, self-metrics and XID events from nvidia-ml-py.

It talks to NVML only through the `nvml` object it is given: the real `pynvml` module in
production, or `gpumon.sources.capture_nvml.CaptureNvml` (a recorded capture behind the same API) in
demo mode and tests. Errors become values here, in one place: NotSupported makes a metric absent
and is logged once; GpuIsLost/Unknown raise `UnitLost`; anything else is counted and skipped. What
each reading calls is in `gpumon.sources.nvml_readers`.

Its units are the GPUs, each polled in its own worker thread owned by the sampler, so the state of
one GPU (`GpuState`) is only ever touched by one thread at a time.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import structlog

from gpumon import __version__, catalog
from gpumon.catalog import Metric
from gpumon.model import BackendUnavailable, Device, Sample, Tier
from gpumon.sources.base import Schedule, Unit, UnitHealth, UnitLost
from gpumon.sources.nvml_readers import (
    ABSENT_CODES,
    ARCHITECTURES,
    ARGUMENT_VERSION_MISMATCH,
    EVENT_WAIT_MS,
    FUNCTION_NOT_FOUND,
    LABEL_CACHE_MAX,
    LOST_CODES,
    NO_PERMISSION,
    NVLINK_ABSENT,
    NVLINK_COUNTERS_BEFORE_4,
    NVLINK_COUNTERS_FROM_4,
    NVLINK_MAX_LINKS,
    NVLINK_VERSION_4_0,
    READERS,
    TIMEOUT,
    XID_EVENT,
    GpuState,
    Plan,
    Readers,
    code,
    plain_view,
    text,
)

log = structlog.get_logger("gpumon.nvml")

class NvmlSource(Readers):
    """Reads GPUs through an NVML API object (real `pynvml` or a capture-backed fake)."""

    name = "nvml"
    schedule = Schedule.THREAD_PER_UNIT
    essential = True  # readiness waits for the GPUs

    def __init__(self, nvml: Any, *, backend: str = "nvml", capture: str = "", opt_ins: frozenset[str] = frozenset(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.nvml = nvml
        self._clock = clock  # for the GPM sample spacing; injectable for tests
        self.backend = backend
        self.capture = capture  # the replayed capture's name, "" for real GPUs (gpumon_build_info)
        self._xids: list[Counter[int]] = []  # per GPU, XID events since start (the event thread adds)
        self._last_xid: list[float | None] = []
        self._changed: Callable[[], None] | None = None
        self._plans = {tier: self._plan(tier, opt_ins) for tier in Tier}
        self._gpus: list[GpuState] = []
        self._errors: Counter[tuple[str, str]] = Counter()
        self._errors_lock = threading.Lock()
        self._driver_version = ""
        self._cuda_version = ""
        self._events_stop = threading.Event()
        self._events_thread: threading.Thread | None = None
        self._event_set: Any = None

    # --- lifecycle -----------------------------------------------------------------------------

    def open(self) -> list[Unit]:
        """Initialise NVML and read every GPU's static facts; the units are the GPUs. Raises
        BackendUnavailable."""
        try:
            self.nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            raise BackendUnavailable(self._init_failure(exc)) from None
        self._driver_version = self._system(self.nvml.nvmlSystemGetDriverVersion, text)
        self._cuda_version = self._system(
            self.nvml.nvmlSystemGetCudaDriverVersion, lambda v: f"{int(v) // 1000}.{int(v) % 1000 // 10}")
        count = self.nvml.nvmlDeviceGetCount()
        self._gpus = [self._open_gpu(i, self.nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
        self._xids = [Counter() for _ in self._gpus]
        self._last_xid = [None for _ in self._gpus]
        return [Unit(f"gpu{g.index}", gpu=g.index) for g in self._gpus]

    def start(self, changed: Callable[[], None]) -> None:
        """Start the XID event thread; each event is counted here and `changed()` asked for."""
        self._changed = changed
        self.start_events(self._count_xid)

    def close(self) -> None:
        self.stop_events()
        try:
            self.nvml.nvmlShutdown()
        except Exception as exc:
            log.debug("nvml shutdown failed", error=str(exc))

    def reopen(self, unit: Unit) -> None:
        """Re-acquire a lost GPU by UUID and re-read its static facts. Raises UnitLost."""
        assert unit.gpu is not None
        index = unit.gpu
        old = self._gpus[index]
        try:
            handle = self.nvml.nvmlDeviceGetHandleByUUID(old.device.uuid)
            gpu = self._open_gpu(index, handle)
        except Exception as exc:
            raise UnitLost(unit, str(exc)) from None
        self._free_gpm(old)  # GPM samples are the caller's to free; each re-initialisation allocates two
        self._gpus[index] = gpu
        if self._event_set is not None:
            self._register_events(gpu)

    def configure(self, opt_ins: frozenset[str]) -> None:
        """Switch opt-in metrics on or off; takes effect at the next poll."""
        self._plans = {tier: self._plan(tier, opt_ins) for tier in Tier}

    @property
    def devices(self) -> list[Device]:
        return [g.device for g in self._gpus]

    def handle(self, index: int) -> Any:
        """GPU `index`'s NVML handle (a new one after the GPU is re-acquired)."""
        return self._gpus[index].handle

    def check_answers(self, unit: Unit) -> None:
        """Raise UnitLost while the GPU of another source's `unit` does not answer: such a source is
        re-opened after this one has re-acquired the GPU."""
        assert unit.gpu is not None
        try:
            self.nvml.nvmlDeviceGetIndex(self.handle(unit.gpu))
        except Exception as exc:
            raise UnitLost(unit, str(exc)) from None

    def count_error(self, call: str, exc: Exception) -> None:
        """Count a failed NVML call in gpumon_nvml_errors_total (other sources on these GPUs too)."""
        self._count_error(call, exc)

    def error_counts(self) -> dict[tuple[str, str], int]:
        with self._errors_lock:
            return dict(self._errors)

    def unsupported_count(self, index: int) -> int:
        """How many catalog metrics the GPU lacks because NVML said NotSupported."""
        absent = self._gpus[index].absent
        return sum(1 for m in catalog.METRICS if m.source == "nvml"
                   and (m.reading in absent or f"{m.reading}:{m.key}" in absent))

    # --- self-metrics ----------------------------------------------------------------------------

    def health(self, units: dict[Unit, UnitHealth]) -> Sample:
        """Identity, up, re-initialisations, poll times, deadline misses, XIDs and NVML errors."""
        s = Sample("self", "self", time.time())
        s.add("gpumon_build_info", (("version", __version__), ("backend", self.backend),
                                    ("capture", self.capture)), 1.0)
        for (call, error), count in sorted(self.error_counts().items()):
            s.add("gpumon_nvml_errors_total", (("call", call), ("error", error)), count)
        for unit, h in units.items():
            assert unit.gpu is not None
            d = self._gpus[unit.gpu].device
            ids = d.labels
            s.add("gpumon_gpu_info", (*ids, ("name", d.name), ("pci_bus_id", d.pci_bus_id),
                                      ("architecture", d.architecture), ("driver_version", d.driver_version),
                                      ("cuda_driver_version", d.cuda_driver_version),
                                      ("gpm", "true" if d.gpm_supported else "false"),
                                      ("sm_activity_source", "gpm" if d.gpm_supported else "none"),
                                      ("memory_info", d.memory_info)), 1.0)
            s.add("gpumon_gpu_up", ids, 1.0 if h.up else 0.0)
            s.add("gpumon_unsupported_metrics", ids, self.unsupported_count(unit.gpu))
            s.add("gpumon_gpu_reinit_total", ids, h.reopens)
            for tier, duration in h.durations.items():
                s.add("gpumon_gpu_poll_duration_seconds", (*ids, ("tier", tier)), duration)
            for tier in (Tier.FAST.value, Tier.SLOW.value):
                s.add("gpumon_poll_deadline_exceeded_total", (*ids, ("tier", tier)), h.deadline_misses[tier])
            for xid, count in sorted(self._xids[unit.gpu].items()):
                s.add("gpumon_xid_errors_total", (*ids, ("xid", str(xid))), count)
            if (last := self._last_xid[unit.gpu]) is not None:
                s.add("gpumon_last_xid_timestamp_seconds", ids, last)
        return s

    def _count_xid(self, index: int, xid: int, at: float) -> None:
        """From the event thread: one more XID (a Counter update is atomic under the GIL)."""
        self._xids[index][xid] += 1
        self._last_xid[index] = at
        log.error("XID error", gpu=index, uuid=self._gpus[index].device.uuid, xid=xid)
        if self._changed is not None:
            self._changed()

    # --- polling -------------------------------------------------------------------------------

    def poll(self, unit: Unit, tier: Tier) -> list[Sample]:
        """Read one tier of one GPU. Runs in that GPU's worker thread. Raises UnitLost."""
        assert unit.gpu is not None
        return [self.read(unit.gpu, tier)]

    def read(self, index: int, tier: Tier) -> Sample:
        """One tier of GPU `index` as one Sample. Raises UnitLost."""
        gpu = self._gpus[index]
        sample = Sample(f"gpu{index}", tier.value, time.time(), gpu=index)
        plan = self._plans[tier]
        for reading, metrics in plan.readings.items():
            if reading in gpu.absent:
                continue
            try:
                call, read = READERS[reading]
                for key, label_values, raw in read(self, gpu, plan):
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
                self._failed(gpu, reading, call, exc)
        return sample

    def _failed(self, gpu: GpuState, what: str, call: str, exc: Exception) -> None:
        rc = code(exc)
        if rc in LOST_CODES:
            raise UnitLost(Unit(f"gpu{gpu.index}", gpu=gpu.index), f"{call}: {type(exc).__name__}") from None
        if rc in ABSENT_CODES:
            self._mark_absent(gpu, what, exc)
            return
        self._count_error(call, exc)

    def _mark_absent(self, gpu: GpuState, what: str, exc: Exception) -> None:
        if what in gpu.absent:
            return
        gpu.absent.add(what)
        level = log.warning if code(exc) == NO_PERMISSION else log.info
        metrics = [m.name for m in catalog.METRICS if m.source == "nvml"
                   and (what == m.reading or what == f"{m.reading}:{m.key}")]
        level("metric not available on this GPU; no series will be exported", gpu=gpu.index,
              reading=what, error=type(exc).__name__, metrics=metrics)

    def _count_error(self, call: str, exc: Exception) -> None:
        with self._errors_lock:
            self._errors[(call, type(exc).__name__)] += 1

    # --- static facts --------------------------------------------------------------------------

    def _open_gpu(self, index: int, handle: Any) -> GpuState:
        n = self.nvml
        uuid = text(n.nvmlDeviceGetUUID(handle))
        device = Device(
            index=index,
            uuid=uuid,
            name=self._static(lambda: text(n.nvmlDeviceGetName(handle)), "unknown"),
            pci_bus_id=self._static(lambda: text(n.nvmlDeviceGetPciInfo(handle).busId), ""),
            architecture=self._static(
                lambda: ARCHITECTURES.get(int(n.nvmlDeviceGetArchitecture(handle)), "unknown"), "unknown"),
            gpm_supported=self._static(
                lambda: bool(n.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice), False),
            driver_version=self._driver_version,
            cuda_driver_version=self._cuda_version,
            memory_info="v2" if self._has_memory_v2(handle) else "v1",
        )
        gpu = GpuState(index, handle, device, device.labels, memory_v2=device.memory_info == "v2")
        gpu.nvlinks = self._active_nvlinks(handle)
        gpu.nvlink_counters = {link: self._nvlink_counters(handle, link) for link in gpu.nvlinks}
        try:
            gpu.reasons_supported = int(n.nvmlDeviceGetSupportedClocksEventReasons(handle))
        except Exception as exc:
            if code(exc) in LOST_CODES:
                raise
            gpu.reasons_legacy = code(exc) == FUNCTION_NOT_FOUND
            gpu.reasons_supported = self._static(lambda: int(n.nvmlDeviceGetSupportedClocksThrottleReasons(handle)), 0)
        if not gpu.nvlinks:  # no NVLink (or none active): those metrics are simply absent
            gpu.absent.update(NVLINK_ABSENT)
        if device.gpm_supported:
            try:
                gpu.gpm_prev, gpu.gpm_next = n.nvmlGpmSampleAlloc(), n.nvmlGpmSampleAlloc()
                gpu.gpm_get = n.c_nvmlGpmMetricsGet_t()
                gpu.gpm_results = plain_view(gpu.gpm_get.metrics)
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
                if code(exc) in LOST_CODES:
                    raise
                break
        return tuple(links)

    def _has_memory_v2(self, handle: Any) -> bool:
        """Whether the driver answers nvmlMemory_v2 (R510 and later); older ones refuse the version."""
        n = self.nvml
        try:
            n.nvmlDeviceGetMemoryInfo(handle, version=n.nvmlMemory_v2)
        except Exception as exc:
            if code(exc) in LOST_CODES:
                raise
            if code(exc) in ABSENT_CODES | {ARGUMENT_VERSION_MISMATCH}:
                log.info("GPU memory is read with nvmlMemory_v1: `used` includes the driver's reserved memory "
                         "and no reserved figure is exported (gpumon_gpu_info{memory_info=\"v1\"})",
                         uuid=text(n.nvmlDeviceGetUUID(handle)))
                return False
        return True

    def _nvlink_counters(self, handle: Any, link: int) -> frozenset[str]:
        """The error counters a link has, by its NVLink version (all of them when it is unknown)."""
        version = self._static(lambda: int(self.nvml.nvmlDeviceGetNvLinkVersion(handle, link)), 0)
        return NVLINK_COUNTERS_FROM_4 if version >= NVLINK_VERSION_4_0 else NVLINK_COUNTERS_BEFORE_4

    def _free_gpm(self, gpu: GpuState) -> None:
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
            if code(exc) in LOST_CODES:
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
    def _plan(tier: Tier, opt_ins: frozenset[str]) -> Plan:
        readings: dict[str, dict[str, Metric]] = {}
        for m in catalog.nvml_metrics(tier, opt_ins):
            readings.setdefault(m.reading, {})[m.key] = m
        field_ids = [int(k) for k in readings.get("fields", {})]
        return Plan(readings, field_ids)

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

    def _register_events(self, gpu: GpuState) -> None:
        try:
            self.nvml.nvmlDeviceRegisterEvents(gpu.handle, XID_EVENT, self._event_set)
        except Exception as exc:
            log.info("GPU does not deliver XID events", gpu=gpu.index, error=type(exc).__name__)

    def _event_loop(self, on_xid: Callable[[int, int, float], None]) -> None:
        while not self._events_stop.is_set():
            try:
                data = self.nvml.nvmlEventSetWait_v2(self._event_set, EVENT_WAIT_MS)
            except Exception as exc:
                if code(exc) != TIMEOUT:
                    self._count_error("nvmlEventSetWait_v2", exc)
                    self._events_stop.wait(EVENT_WAIT_MS / 1000)  # a failing wait must not spin
                continue
            if int(data.eventType) & XID_EVENT:
                index = self._index_of(data.device)
                if index is not None:
                    on_xid(index, int(data.eventData), time.time())

    def _index_of(self, handle: Any) -> int | None:
        key = handle_key(handle)
        return next((g.index for g in self._gpus if handle_key(g.handle) == key), None)


def handle_key(handle: Any) -> int:
    """Compare NVML device handles by address (ctypes pointers) or identity (fakes)."""
    try:
        return int(ctypes.cast(handle, ctypes.c_void_p).value or 0)
    except (ctypes.ArgumentError, TypeError):
        return id(handle)


