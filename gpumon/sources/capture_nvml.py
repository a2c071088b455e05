"""A recorded NVML capture (capture.py) behind the pynvml API.

`CaptureNvml` answers the pynvml calls gpumon makes from a capture in the format of
`shared/fixtures/nvml/` (`probe.json` for static answers, `trace.jsonl` for values over time), so
the real `NvmlSource` runs unchanged on a machine without a GPU: in demo mode (`--backend replay:`)
and in the tests. Values and errors are returned exactly as recorded; a call the capture knows
nothing about raises `NVMLError_FunctionNotFound`, as an old driver would.

Trace time is mapped to wall-clock from `nvmlInit`, optionally sped up and looped; one recorded GPU
can be fanned out to N GPUs with distinct index, UUID and bus id and a phase offset. A capture
holds no events: an event wait times out. Tests script lost GPUs, failing or hanging calls and XID
events with a wrapper around any NVML object (tests/support/faults.py).
"""

from __future__ import annotations

import bisect
import ctypes
import math
import threading
import time
import types
from collections.abc import Callable
from typing import Any, NoReturn

import pynvml

from gpumon.sources.capture import Capture
from gpumon.sources.capture_mig import NO_MIG, CaptureMig, MigHandle

UTILIZATION_BUFFER_S = 10.0  # how far back per-process utilisation samples are kept, like NVML's buffer

# Trace GPM keys by NVML_GPM_METRIC_* id; ids the trace lacks fall back to probe.json.
TRACE_GPM_KEYS = {1: "graphics_util", 2: "sm_util", 3: "sm_occupancy", 5: "any_tensor_util",
                  7: "hmma_tensor_util", 10: "dram_bw_util", 12: "fp32_util", 13: "fp16_util",
                  20: "pcie_tx_mibps", 21: "pcie_rx_mibps", 60: "nvlink_rx_mibps", 61: "nvlink_tx_mibps"}
# Per-link NVLink rates (NVML_GPM_METRIC_NVLINK_L<n>_{RX,TX}_PER_SEC) are one list per direction in
# the trace's "gpm", element n for link n: 36 named keys per record would bloat multi-GPU traces.
TRACE_GPM_LINK_KEYS = ("nvlink_rx_mibps_per_link", "nvlink_tx_mibps_per_link")
# Trace field names by NVML field id.
TRACE_FIELDS = {186: "power_instant_mw", 83: "energy_mj", 82: "mem_temp_c", 197: "pcie_tx_bytes",
                198: "pcie_rx_bytes", 94: "pcie_replay", 138: "nvlink_tx_kib", 139: "nvlink_rx_kib",
                3: "ecc_sbe_vol", 4: "ecc_dbe_vol"}
CLOCK_NAMES = {0: "GRAPHICS", 1: "SM", 2: "MEM", 3: "VIDEO"}


class _Handle:
    def __init__(self, index: int) -> None:
        self.index = index


STRUCT_PADDING = 0xA5A5A500  # the bytes after a one-byte member, as NVML leaves them (see the fabric call)


def _raise(code: int) -> NoReturn:
    raise pynvml.NVMLError(code)


def _raise_recorded(err: Any) -> NoReturn:
    """Raise the error a capture recorded: "NVMLError_NotSupported(3)", a class name, or a code."""
    _raise(_error_code(err))


def _error_code(err: Any) -> int:
    """The NVML return code of a recorded error: a code, "NVMLError_NotSupported(3)" or a class name."""
    if isinstance(err, int) and not isinstance(err, bool):
        return err
    name, _, rest = str(err).partition("(")
    cls = getattr(pynvml, name.strip(), None)
    if isinstance(cls, type) and issubclass(cls, pynvml.NVMLError) and cls is not pynvml.NVMLError:
        return int(cls().value)
    code = rest.rstrip(")").strip()
    return int(code) if code.isdigit() else pynvml.NVML_ERROR_UNKNOWN


def _scoped(recorded: Any, scope: int) -> Any:
    """A field value for one scopeId. A per-link list (NVLink throughput fields) answers as NVML
    does: element `scope` for a link, the sum for UINT_MAX, InvalidArgument for another scope."""
    if not isinstance(recorded, list):
        return recorded
    if scope == 0xFFFFFFFF:
        return sum(recorded)
    if 0 <= scope < len(recorded):
        return recorded[scope]
    return {"err": pynvml.NVML_ERROR_INVALID_ARGUMENT}


def _is_error(entry: Any) -> bool:
    """A recorded whole-call error: {"err": ...} with nothing but latency beside it."""
    return isinstance(entry, dict) and "err" in entry and "ok" not in entry and len(entry) <= 5


def _answer(entry: Any) -> Any:
    """Value of a probe/trace entry, raising its recorded error."""
    if _is_error(entry):
        _raise_recorded(entry["err"])
    if isinstance(entry, dict) and "ok" in entry:
        return entry["ok"]
    return entry


class CaptureNvml(CaptureMig):
    """The subset of the pynvml API gpumon uses, answered from a `Capture`.

    Attribute lookups that are not NVML functions (constants, structs, exception classes) are the
    real pynvml's, so code written against pynvml runs unchanged against this object.
    """

    def __init__(self, capture: Capture, *, gpus: int | None = None, speed: float = 1.0, loop: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if gpus is not None and gpus < 1:
            raise ValueError(f"gpus must be at least 1, not {gpus}")
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed must be a positive number, not {speed}")
        self.capture = capture
        self.gpu_count = gpus or len(capture.traces)
        self.speed = speed
        self.loop = loop
        self._clock = clock
        self._start: float | None = None
        self._handles = [_Handle(i) for i in range(self.gpu_count)]
        self._gpm_samples: dict[int, float] = {}
        self._gpm_lock = threading.Lock()
        self._uuids, self._bus_ids = self._identities()

    # --- plumbing ------------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        real = getattr(pynvml, name)
        if isinstance(real, types.FunctionType) and name.startswith("nvml"):
            getter = self._probe_getter(name)
            if getter is not None:
                return getter
            return lambda *a, **k: _raise(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        return real

    def elapsed(self) -> float:
        if self._start is None:
            _raise(pynvml.NVML_ERROR_UNINITIALIZED)
        return self._clock() - self._start

    def _recorded(self, index: int) -> int:
        return index % len(self.capture.traces)

    def _probe_device(self, index: int) -> dict[str, Any]:
        devices = self.capture.devices
        return devices[self._recorded(index) % len(devices)] if devices else {}

    def _record(self, index: int) -> dict[str, Any]:
        """The trace record playing now on GPU `index`."""
        return self._record_at(index, self._position(index))

    def _position(self, index: int) -> float:
        """Seconds into the recorded trace for GPU `index` (phase-shifted per fanned-out GPU)."""
        return self._wrap(index, self._play_time(index))

    def _play_time(self, index: int) -> float:
        """Trace seconds GPU `index` has played since nvmlInit, phase offset included, not wrapped."""
        n = len(self.capture.traces)
        copies = -(-self.gpu_count // n)  # ceil: every copy of a recorded GPU gets its own offset
        offset = (index // n) * self.capture.duration(self._recorded(index)) / copies
        return self.elapsed() * self.speed + offset

    def _wrap(self, index: int, play: float) -> float:
        duration = self.capture.duration(self._recorded(index))
        return play % duration if self.loop else min(play, duration)

    def _record_at(self, index: int, pos: float) -> dict[str, Any]:
        return self.capture.traces[self._recorded(index)][self._index_at(index, pos)]

    def phase(self, index: int) -> str | None:
        """The labelled load phase (phases.json) GPU `index` is replaying now, if any."""
        t = self._record(index)["t"]
        return next((str(p["name"]) for p in self.capture.phases
                     if isinstance(p, dict) and p.get("start", 0) <= t < p.get("end", 0)), None)

    def _index_at(self, index: int, pos: float) -> int:
        trace = self.capture.traces[self._recorded(index)]
        t = trace[0]["t"] + pos
        return max(0, bisect.bisect_right(trace, t, key=lambda r: r["t"]) - 1)

    def _device(self, handle: Any, call: str) -> int:
        """The GPU index of a handle (`call` names the asker, for subclasses that misbehave)."""
        if not isinstance(handle, _Handle):
            _raise(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self.elapsed()
        return handle.index

    def _value(self, handle: Any, call: str, trace_key: str, probe_key: str) -> Any:
        """A time-varying answer from the trace, else the static one from probe.json."""
        index = self._device(handle, call)
        rec = self._record(index)
        if trace_key in rec:
            return _answer(rec[trace_key])
        return self._probe(index, probe_key)

    def _probe(self, index: int, key: str) -> Any:
        dev = self._probe_device(index)
        entry = dev.get("getters", {}).get(key) or dev.get("parametrized", {}).get(key)
        if entry is None:
            _raise(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return _answer(entry)

    def _probe_getter(self, name: str) -> Callable[..., Any] | None:
        """Any single-argument getter probe.json recorded answers as recorded."""
        if not any(name in d.get("getters", {}) for d in self.capture.devices):
            return None

        def getter(handle: Any) -> Any:
            return _plain(self._probe(self._device(handle, name), name))
        return getter

    # --- system --------------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self._start = self._clock()

    def nvmlShutdown(self) -> None:
        self._start = None

    def _system(self, key: str, default: Any) -> Any:
        self.elapsed()
        return _answer(self.capture.probe.get("system", {}).get(key, default))

    def nvmlSystemGetDriverVersion(self) -> str:
        return str(self._system("driver", "replay"))

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return int(self._system("cuda", 0))

    def nvmlDeviceGetCount(self) -> int:
        self.elapsed()
        return self.gpu_count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self.elapsed()
        if not 0 <= index < self.gpu_count:
            _raise(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._handles[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> _Handle:
        self.elapsed()
        wanted = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
        for handle in self._handles:
            if self._uuids[handle.index] == wanted:
                # Only the GPU asked for answers (or is lost): another lost GPU does not matter.
                self._device(handle, "nvmlDeviceGetHandleByUUID")
                return handle
        _raise(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetHandleByPciBusId(self, bus_id: str | bytes) -> _Handle:
        """Either spelling of the bus id (8- or 4-digit domain, any case) names the same GPU."""
        self.elapsed()
        try:
            wanted = _parse_bus_id(bus_id.decode() if isinstance(bus_id, bytes) else str(bus_id))
        except ValueError:
            _raise(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        for handle in self._handles:
            if _parse_bus_id(self._bus_ids[handle.index]) == wanted:
                self._device(handle, "nvmlDeviceGetHandleByPciBusId")
                return handle
        _raise(pynvml.NVML_ERROR_NOT_FOUND)

    # --- identity: fanned-out GPUs get distinct UUIDs and bus ids ------------------------------

    def _identities(self) -> tuple[list[str], list[str]]:
        """UUID and PCI bus id of every GPU. Recorded GPUs keep theirs; a fanned-out copy gets the
        recorded UUID with its index as the last digits and a bus of its own, never one in use."""
        n = len(self.capture.traces)
        uuids, bus_ids = [], []
        for index in range(min(n, self.gpu_count)):
            uuids.append(self._recorded_uuid(index))
            bus_ids.append(str(self._recorded_pci(index).get("busId", f"00000000:{index:02X}:00.0")))
        used_uuids, used_buses = set(uuids), set(bus_ids)
        for index in range(n, self.gpu_count):
            base = self._recorded_uuid(index)
            serial = index
            while (uuid := f"{base[:-4]}{serial:04x}") in used_uuids:
                serial += self.gpu_count
            domain = _pci_domain(str(self._recorded_pci(index).get("busId", "")))
            bus = 0x10 + index
            while (bus_id := f"{domain + (bus >> 8):08X}:{bus & 0xFF:02X}:00.0") in used_buses:
                bus += 1
            uuids.append(uuid)
            bus_ids.append(bus_id)
            used_uuids.add(uuid)
            used_buses.add(bus_id)
        return uuids, bus_ids

    def _recorded_uuid(self, index: int) -> str:
        try:
            return str(self._probe(index, "nvmlDeviceGetUUID"))
        except pynvml.NVMLError:
            return f"GPU-00000000-0000-4000-8000-00000000{self._recorded(index):04x}"

    def _recorded_pci(self, index: int) -> dict[str, Any]:
        try:
            info = self._probe(index, "nvmlDeviceGetPciInfo")
        except pynvml.NVMLError:
            return {}
        return dict(info) if isinstance(info, dict) else {}

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        if isinstance(handle, MigHandle):
            self._mig_device(handle, "nvmlDeviceGetUUID")
            return handle.uuid
        return self._uuids[self._device(handle, "nvmlDeviceGetUUID")]

    def nvmlDeviceGetName(self, handle: Any) -> str:
        if isinstance(handle, MigHandle):
            return str(self._mig_device(handle, "nvmlDeviceGetName")[1]["name"])
        return str(self._probe(self._device(handle, "nvmlDeviceGetName"), "nvmlDeviceGetName"))

    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any:
        index = self._device(handle, "nvmlDeviceGetPciInfo")
        info = self._recorded_pci(index)
        bus_id = self._bus_ids[index]
        if info.get("busId") != bus_id:  # a fanned-out copy: its own domain and bus, device 0
            domain, bus, device = _parse_bus_id(bus_id)
            legacy = f"{domain:04X}:{bus:02X}:{device:02X}.0"
            info.update(busId=bus_id, busIdLegacy=legacy, domain=domain, bus=bus, device=device)
        return types.SimpleNamespace(**info)

    def nvmlDeviceGetIndex(self, handle: Any) -> int:
        return self._device(handle, "nvmlDeviceGetIndex")

    # --- time-varying values -------------------------------------------------------------------

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        u = self._value(handle, "nvmlDeviceGetUtilizationRates", "util", "nvmlDeviceGetUtilizationRates")
        return types.SimpleNamespace(**u)

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Any:
        if isinstance(handle, MigHandle):
            return self._mig_memory(handle, version)
        key = "nvmlDeviceGetMemoryInfo(v2)" if version else "nvmlDeviceGetMemoryInfo"
        m = dict(self._value(handle, "nvmlDeviceGetMemoryInfo", "mem", key))
        if not version:  # v1 counts reserved memory as used, as the driver does (see probe.json)
            m.pop("reserved", None)
            m["used"] = m["total"] - m["free"]
        return types.SimpleNamespace(**m)

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        if sensor != 0:
            _raise(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return int(self._value(handle, "nvmlDeviceGetTemperature", "temp_c", "nvmlDeviceGetTemperature(GPU)"))

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        return int(self._value(handle, "nvmlDeviceGetPowerUsage", "power_mw", "nvmlDeviceGetPowerUsage"))

    def nvmlDeviceGetGpuFabricInfoV(self, handle: Any, info: Any) -> int:
        """Fills the caller's struct, v2 or v3 (v3 adds healthSummary), as NVML does; the probe may record
        its fields as a dict ({"state": 3, "status": 0, "healthMask": ..., "healthSummary": 1}) and the
        struct versions the recorded driver accepted ({"versions": [2]}: one before v3). A capture
        without it answers as the captured H200 does (nvidia-smi -q: "Fabric State: N/A"): success, state
        NVML_GPU_FABRIC_STATE_NOT_SUPPORTED. A struct with no version, or another, is refused."""
        key = "nvmlDeviceGetGpuFabricInfoV"
        index = self._device(handle, key)
        target = getattr(info, "_obj", info)  # ctypes.byref(struct) or the struct itself
        fields = {f[0] for f in getattr(type(target), "_fields_", ())}
        version = getattr(target, "version", None) if "version" in fields else None
        if version not in (pynvml.nvmlGpuFabricInfo_v2, pynvml.nvmlGpuFabricInfo_v3):
            _raise(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        recorded = {"state": pynvml.NVML_GPU_FABRIC_STATE_NOT_SUPPORTED}
        if key in self._probe_device(index).get("getters", {}):
            recorded = self._probe(index, key)
        if version >> 24 not in recorded.get("versions", (2, 3)):
            _raise(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        for name in ("status", "cliqueId", "healthMask"):
            setattr(target, name, int(recorded.get(name, 0)))
        # nvml.h's state is one byte; pynvml reads four. The three after it are padding NVML does not
        # clear: filled here, so that a reader that does not mask them reads nonsense in the tests too.
        target.state = (int(recorded.get("state", 0)) & 0xFF) | STRUCT_PADDING
        if version == pynvml.nvmlGpuFabricInfo_v3:  # absent from the record: 0, not supported
            target.healthSummary = int(recorded.get("healthSummary", 0))
        return int(pynvml.NVML_SUCCESS)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        return int(self._value(handle, "nvmlDeviceGetTotalEnergyConsumption", "energy_mj_call",
                               "nvmlDeviceGetTotalEnergyConsumption"))

    def nvmlDeviceGetClockInfo(self, handle: Any, clock: int) -> int:
        trace_key = {1: "sm_clock_mhz", 2: "mem_clock_mhz"}.get(clock, "")
        return int(self._value(handle, "nvmlDeviceGetClockInfo", trace_key,
                               f"nvmlDeviceGetClockInfo({CLOCK_NAMES.get(clock, clock)})"))

    def nvmlDeviceGetMaxClockInfo(self, handle: Any, clock: int) -> int:
        index = self._device(handle, "nvmlDeviceGetMaxClockInfo")
        return int(self._probe(index, f"nvmlDeviceGetMaxClockInfo({CLOCK_NAMES.get(clock, clock)})"))

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:
        return int(self._value(handle, "nvmlDeviceGetCurrentClocksEventReasons", "clocks_event_reasons",
                               "nvmlDeviceGetCurrentClocksEventReasons"))

    def nvmlDeviceGetPerformanceState(self, handle: Any) -> int:
        return int(self._value(handle, "nvmlDeviceGetPerformanceState", "pstate",
                               "nvmlDeviceGetPerformanceState"))

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:
        if isinstance(handle, MigHandle):
            return self._mig_processes(handle)
        return self._processes(handle, "nvmlDeviceGetComputeRunningProcesses", "procs")

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: Any) -> list[Any]:
        return self._processes(handle, "nvmlDeviceGetGraphicsRunningProcesses", "procs_graphics")

    def nvmlDeviceGetMPSComputeRunningProcesses(self, handle: Any) -> list[Any]:
        return self._processes(handle, "nvmlDeviceGetMPSComputeRunningProcesses", "procs_mps")

    def _processes(self, handle: Any, call: str, trace_key: str) -> list[Any]:
        procs = self._value(handle, call, trace_key, call)
        return [types.SimpleNamespace(pid=p["pid"], usedGpuMemory=p.get("used"), gpuInstanceId=p.get("gi", NO_MIG),
                                      computeInstanceId=p.get("ci", NO_MIG)) for p in procs]

    def nvmlDeviceGetProcessesUtilizationInfo(self, handle: Any, last_seen_us: int) -> list[Any]:
        """One entry per process: its mean over the samples (whole percent, as the driver rounds),
        stamped with the newest."""
        merged: dict[int, list[Any]] = {}
        for s in self._utilization(handle, "nvmlDeviceGetProcessesUtilizationInfo", last_seen_us):
            merged.setdefault(s.pid, []).append(s)
        return [types.SimpleNamespace(
            pid=pid, timeStamp=max(s.timeStamp for s in group), jpgUtil=0, ofaUtil=0,
            **{k: sum(getattr(s, k) for s in group) // len(group) for k in ("smUtil", "memUtil", "encUtil", "decUtil")})
            for pid, group in merged.items()]

    def nvmlDeviceGetProcessUtilization(self, handle: Any, last_seen_us: int) -> list[Any]:
        """Every sample, several per process when it ran in several records."""
        return self._utilization(handle, "nvmlDeviceGetProcessUtilization", last_seen_us)

    def _utilization(self, handle: Any, call: str, last_seen_us: int) -> list[Any]:
        """The trace's per-process samples (`proc_util`) of the records played in the last
        UTILIZATION_BUFFER_S, newer than `last_seen_us`, each stamped with the record's Unix time
        (plus a lap's length per loop, so stamps keep rising); NotFound when there is none, as NVML
        answers. A capture without `proc_util` answers as its probe.json recorded."""
        index = self._device(handle, call)
        recorded = self._recorded(index)
        trace = self.capture.traces[recorded]
        if not any("proc_util" in r for r in trace):
            _answer(self._probe_device(index).get("parametrized", {}).get(f"{call}(0)", {"err": 3}))
        duration, t0 = self.capture.duration(recorded), trace[0]["t"]
        play = self._play_time(index)
        if not self.loop:
            play = min(play, duration)
        out: list[Any] = []
        first_lap = max(0, int((play - UTILIZATION_BUFFER_S) // duration))
        for lap in range(first_lap, int(play // duration) + 1):
            for rec in trace:
                at = lap * duration + rec["t"] - t0  # when this record played
                stamp = int((rec["t"] + lap * duration) * 1e6)  # truncated, as C converts
                if play - UTILIZATION_BUFFER_S < at <= play and stamp > last_seen_us:
                    out.extend(types.SimpleNamespace(
                        pid=int(u["pid"]), timeStamp=stamp, smUtil=int(u.get("sm", 0)), memUtil=int(u.get("mem", 0)),
                        encUtil=int(u.get("enc", 0)), decUtil=int(u.get("dec", 0)))
                        for u in rec.get("proc_util") or ())
        if not out:
            _raise(pynvml.NVML_ERROR_NOT_FOUND)
        return out

    def nvmlDeviceGetFieldValues(self, handle: Any, field_ids: list[int | tuple[int, int]]) -> Any:
        index = self._device(handle, "nvmlDeviceGetFieldValues")
        rec_fields = self._record(index).get("fields")
        if isinstance(rec_fields, dict) and "err" in rec_fields and len(rec_fields) == 1:
            _raise_recorded(rec_fields["err"])
        by_id = self._probe_device(index).get("fields", {}).get("by_id", {})
        values = (pynvml.c_nvmlFieldValue_t * len(field_ids))()
        for v, requested in zip(values, field_ids, strict=True):
            fid, scope = requested if isinstance(requested, tuple) else (requested, 0)  # as pynvml takes them
            v.fieldId, v.scopeId = fid, scope
            recorded = _scoped((rec_fields or {}).get(TRACE_FIELDS.get(fid, "")), scope)
            probe = by_id.get(str(fid), {"ret": pynvml.NVML_ERROR_NOT_SUPPORTED})
            if recorded is None:
                v.nvmlReturn = int(probe.get("ret", pynvml.NVML_ERROR_NOT_SUPPORTED))
                _set_field(v, int(probe.get("type", 3)), probe.get("value"))
            elif isinstance(recorded, dict):
                v.nvmlReturn = _error_code(recorded.get("err", pynvml.NVML_ERROR_UNKNOWN))
            else:
                v.nvmlReturn = 0
                _set_field(v, int(probe.get("type", 0 if isinstance(recorded, float) else 3)), recorded)
        return values

    # --- parametrised static answers -----------------------------------------------------------

    def nvmlDeviceGetTemperatureThreshold(self, handle: Any, threshold: int) -> int:
        index = self._device(handle, "nvmlDeviceGetTemperatureThreshold")
        return int(self._probe(index, f"nvmlDeviceGetTemperatureThreshold({threshold})"))

    def nvmlDeviceGetTotalEccErrors(self, handle: Any, error_type: int, counter_type: int) -> int:
        index = self._device(handle, "nvmlDeviceGetTotalEccErrors")
        return int(self._probe(index, f"nvmlDeviceGetTotalEccErrors({error_type},{counter_type})"))

    def nvmlDeviceGetViolationStatus(self, handle: Any, policy: int) -> Any:
        index = self._device(handle, "nvmlDeviceGetViolationStatus")
        return types.SimpleNamespace(**self._probe(index, f"nvmlDeviceGetViolationStatus({policy})"))

    def nvmlDeviceGetNvLinkState(self, handle: Any, link: int) -> int:
        index = self._device(handle, "nvmlDeviceGetNvLinkState")
        return int(self._probe(index, f"nvmlDeviceGetNvLinkState({link})"))

    def nvmlDeviceGetNvLinkVersion(self, handle: Any, link: int) -> int:
        index = self._device(handle, "nvmlDeviceGetNvLinkVersion")
        return int(self._probe(index, f"nvmlDeviceGetNvLinkVersion({link})"))

    def nvmlDeviceGetNvLinkErrorCounter(self, handle: Any, link: int, counter: int) -> int:
        index = self._device(handle, "nvmlDeviceGetNvLinkErrorCounter")
        # The trace may carry a link's counters, {"nvlink_errors": {"<link>": [replay, recovery,
        # crc_flit, crc_data]}}, so that they rise during the trace; else the probe's answer.
        counts = (self._record(index).get("nvlink_errors") or {}).get(str(link))
        if isinstance(counts, list) and 0 <= counter < len(counts) and isinstance(counts[counter], (int, float)):
            return int(counts[counter])
        return int(self._probe(index, f"nvmlDeviceGetNvLinkErrorCounter({link},{counter})"))

    # --- GPM -----------------------------------------------------------------------------------

    def nvmlGpmQueryDeviceSupport(self, handle: Any) -> Any:
        index = self._device(handle, "nvmlGpmQueryDeviceSupport")
        support = self._probe_device(index).get("gpm", {}).get("support")
        if not support:
            _raise(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return types.SimpleNamespace(**support)

    def nvmlGpmSampleAlloc(self) -> Any:
        self.elapsed()
        # A real ctypes pointer, so it can be stored in c_nvmlGpmMetricsGet_t like NVML's own.
        cell = ctypes.pointer(ctypes.c_uint64(0))
        return ctypes.cast(cell, pynvml.c_nvmlGpmSample_t)

    def nvmlGpmSampleFree(self, sample: Any) -> None:
        with self._gpm_lock:
            self._gpm_samples.pop(_sample_id(sample), None)

    def nvmlGpmSampleGet(self, handle: Any, sample: Any) -> Any:
        return self._gpm_sample(handle, sample, None)

    def nvmlGpmMigSampleGet(self, handle: Any, gpu_instance: int, sample: Any) -> Any:
        """A GPU instance's sample, taken through its parent GPU's handle (as DCGM does)."""
        return self._gpm_sample(handle, sample, gpu_instance)

    def _gpm_sample(self, handle: Any, sample: Any, gpu_instance: int | None) -> Any:
        call = "nvmlGpmSampleGet" if gpu_instance is None else "nvmlGpmMigSampleGet"
        index = self._device(handle, call)
        if not _sample_id(sample):
            _raise(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if gpu_instance is None:
            recorded: Any = self._record(index).get("gpm_sample")
            if _is_error(recorded):
                _raise_recorded(recorded["err"])
        else:
            self._gpu_instance(index, gpu_instance)  # NotFound: no such instance (now)
        with self._gpm_lock:
            self._gpm_samples[_sample_id(sample)] = self._play_time(index)
            # The sample remembers its GPU, and its GPU instance + 1 above bit 32 (0: the whole GPU).
            tag = index | ((gpu_instance + 1) << 32 if gpu_instance is not None else 0)
            ctypes.cast(sample, ctypes.POINTER(ctypes.c_uint64)).contents.value = tag
        return sample

    def nvmlGpmMetricsGet(self, mg: Any) -> Any:
        self.elapsed()
        with self._gpm_lock:
            t1 = self._gpm_samples.get(_sample_id(mg.sample1))
            t2 = self._gpm_samples.get(_sample_id(mg.sample2))
        if t1 is None or t2 is None or not 0 <= mg.numMetrics <= len(mg.metrics):
            _raise(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        tag = int(ctypes.cast(mg.sample2, ctypes.POINTER(ctypes.c_uint64)).contents.value)
        if tag != int(ctypes.cast(mg.sample1, ctypes.POINTER(ctypes.c_uint64)).contents.value):
            _raise(pynvml.NVML_ERROR_INVALID_ARGUMENT)  # samples of two different GPUs or instances
        index, gpu_instance = tag & 0xFFFFFFFF, (tag >> 32) - 1
        self._device(self._handles[index], "nvmlGpmMetricsGet")
        records = self._records_between(index, t1, t2)
        if gpu_instance >= 0:
            self._gpu_instance(index, gpu_instance)  # destroyed since: NotFound
            return self._mig_metrics(mg, index, gpu_instance, records)
        whole: Any = records[-1].get("gpm")
        if _is_error(whole):  # the recorded nvmlGpmMetricsGet itself failed
            _raise_recorded(whole["err"])
        probe_metrics = self._probe_device(index).get("gpm", {}).get("metrics", {})
        for j in range(mg.numMetrics):
            metric = mg.metrics[j]
            key = TRACE_GPM_KEYS.get(metric.metricId)
            link = _gpm_link(metric.metricId)
            if key:
                values = [r["gpm"].get(key) for r in records if isinstance(r.get("gpm"), dict)]
            elif link is not None:
                lists = [r["gpm"].get(TRACE_GPM_LINK_KEYS[link[1]]) for r in records if isinstance(r.get("gpm"), dict)]
                values = [v[link[0]] if isinstance(v, list) and link[0] < len(v) else None for v in lists]
            else:
                values = []
            numbers = [v for v in values if isinstance(v, (int, float))]
            errors = [v for v in values if isinstance(v, dict)]
            if numbers:
                metric.nvmlReturn, metric.value = 0, sum(numbers) / len(numbers)
            elif errors:
                metric.nvmlReturn = _error_code(errors[-1].get("err", pynvml.NVML_ERROR_UNKNOWN))
            else:
                recorded = probe_metrics.get(str(metric.metricId), {"ret": pynvml.NVML_ERROR_NOT_SUPPORTED})
                metric.nvmlReturn = int(recorded.get("ret", 0))
                metric.value = float(recorded.get("value") or 0.0)
        return mg

    def _mig_metrics(self, mg: Any, index: int, gpu_instance: int, records: list[dict[str, Any]]) -> Any:
        """A GPU instance's metrics: the mean of its recorded values over the records in between;
        an id it has no reading for is NotSupported (NVLink and PCIe are the whole GPU's)."""
        for j in range(mg.numMetrics):
            metric = mg.metrics[j]
            key = TRACE_GPM_KEYS.get(metric.metricId, "")
            numbers = [v for v in self._mig_gpm(index, gpu_instance, records, key) if isinstance(v, (int, float))]
            if numbers:
                metric.nvmlReturn, metric.value = 0, sum(numbers) / len(numbers)
            else:
                metric.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
        return mg

    def _records_between(self, index: int, play1: float, play2: float) -> list[dict[str, Any]]:
        """Trace records whose GPM interval falls in (play1, play2] of play time (a looped trace
        may wrap in between); the latest one if none does."""
        trace = self.capture.traces[self._recorded(index)]
        duration = self.capture.duration(self._recorded(index))
        i1, i2 = self._index_at(index, self._wrap(index, play1)), self._index_at(index, self._wrap(index, play2))
        if self.loop and play2 - play1 >= duration:
            return trace[i2 + 1:] + trace[:i2 + 1]  # a whole cycle or more: every record once
        if i2 > i1:
            return trace[i1 + 1:i2 + 1]
        if self.loop and play2 > play1 and i2 < i1:  # wrapped around the end of the trace
            return trace[i1 + 1:] + trace[:i2 + 1]
        return [trace[i2]]

    # --- events --------------------------------------------------------------------------------

    def nvmlEventSetCreate(self) -> Any:
        self.elapsed()
        return types.SimpleNamespace()

    def nvmlDeviceRegisterEvents(self, handle: Any, event_types: int, event_set: Any) -> None:
        index = self._device(handle, "nvmlDeviceRegisterEvents")
        supported = int(self._probe_device(index).get("events", {}).get("supported_mask", 0))
        if not event_types or event_types & ~supported:  # NVML refuses any type it cannot deliver
            _raise(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlEventSetWait_v2(self, event_set: Any, timeout_ms: int) -> Any:
        """A capture records no events: wait out timeout_ms of real time, as NVML does when nothing
        happens; nvmlShutdown releases the wait."""
        deadline = time.monotonic() + max(0, timeout_ms) / 1000
        while (left := deadline - time.monotonic()) > 0:
            self.elapsed()
            time.sleep(min(left, 0.05))
        _raise(pynvml.NVML_ERROR_TIMEOUT)

    def nvmlEventSetFree(self, event_set: Any) -> None:
        return None


def _pci_domain(bus_id: str) -> int:
    try:
        return _parse_bus_id(bus_id)[0]
    except ValueError:
        return 0


def _parse_bus_id(bus_id: str) -> tuple[int, int, int]:
    """Domain, bus and device of "DDDDDDDD:BB:DD.F"; ValueError if it is not one."""
    domain, bus, rest = bus_id.split(":")
    return int(domain, 16), int(bus, 16), int(rest.split(".")[0], 16)


def _gpm_link(metric_id: int) -> tuple[int, int] | None:
    """(link, 0 for rx or 1 for tx) of NVML_GPM_METRIC_NVLINK_L<n>_{RX,TX}_PER_SEC, else None."""
    if 62 <= metric_id <= 97:  # links 0-17
        offset = metric_id - 62
    elif 212 <= metric_id <= 247:  # links 18-35
        offset = metric_id - 212 + 36
    else:
        return None
    return offset // 2, offset % 2


def _sample_id(sample: Any) -> int:
    return int(ctypes.cast(sample, ctypes.c_void_p).value or 0)


def _set_field(v: Any, kind: int, value: Any) -> None:
    v.valueType = kind
    if value is None:
        return
    attr = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")[kind] if kind <= 6 else "dVal"
    setattr(v.value, attr, float(value) if attr == "dVal" else int(value))


def _plain(value: Any) -> Any:
    """Recorded structs come back as dicts; give them attribute access like pynvml's structs."""
    if isinstance(value, dict):
        return types.SimpleNamespace(**value)
    if isinstance(value, list):
        return tuple(value)
    return value
