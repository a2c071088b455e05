"""MIG answers of a capture: what `CaptureNvml` says about a MIG-enabled GPU's instances.

A trace record's `mig` key holds the layout playing at that moment (MIG mode, the GPU instances with
their profile, placement and GPM readings, and the MIG devices, one per compute instance, with their
memory and processes): a layout that changes between records is a reconfiguration. MIG device
handles are looked up by UUID on every call, so a handle of an instance destroyed since answers
NotFound, as NVML's handles "can become stale" (nvml.h). Format: tests/fixtures/mig/README.md.
"""

from __future__ import annotations

import ctypes
import types
from typing import TYPE_CHECKING, Any, NoReturn

import pynvml

NO_MIG = 0xFFFFFFFF  # nvmlProcessInfo_t's instance ids on a GPU without MIG


class MigHandle:
    """A MIG device (one compute instance) of GPU `parent`, named by its UUID."""

    def __init__(self, parent: Any, uuid: str) -> None:
        self.parent = parent
        self.uuid = uuid


class GpuInstanceHandle:
    def __init__(self, parent: Any, gi: int) -> None:
        self.parent = parent
        self.gi = gi


def _raise(code: int) -> NoReturn:
    raise pynvml.NVMLError(code)


class CaptureMig:
    """The MIG calls of the pynvml API, for `CaptureNvml` (which provides the record lookups)."""

    if TYPE_CHECKING:  # CaptureNvml's
        def _device(self, handle: Any, call: str) -> int: ...
        def _record(self, index: int) -> dict[str, Any]: ...
        def _recorded(self, index: int) -> int: ...
        def _probe(self, index: int, key: str) -> Any: ...

    def _layout(self, index: int) -> dict[str, Any] | None:
        layout = self._record(index).get("mig")
        return layout if isinstance(layout, dict) else None

    def _mig_uuid(self, index: int, recorded: str) -> str:
        """A fanned-out copy's instances get UUIDs of their own (the last digits: the GPU index)."""
        return recorded if index == self._recorded(index) else f"{recorded[:-4]}{index:04x}"

    def _mig_device(self, handle: Any, call: str) -> tuple[int, dict[str, Any]]:
        """The parent index and the recorded MIG device of a MIG handle; NotFound once destroyed."""
        if not isinstance(handle, MigHandle):
            _raise(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        index = self._device(handle.parent, call)
        for device in (self._layout(index) or {}).get("devices", ()):
            if self._mig_uuid(index, device["uuid"]) == handle.uuid:
                return index, device
        _raise(pynvml.NVML_ERROR_NOT_FOUND)

    def _gpu_instance(self, index: int, gi: int) -> dict[str, Any]:
        for inst in (self._layout(index) or {}).get("gpu_instances", ()):
            if inst["gi"] == gi:
                return dict(inst)
        _raise(pynvml.NVML_ERROR_NOT_FOUND)

    # --- mode and enumeration ------------------------------------------------------------------

    def nvmlDeviceGetMigMode(self, handle: Any) -> list[int]:
        index = self._device(handle, "nvmlDeviceGetMigMode")
        layout = self._layout(index)
        return list(layout["mode"]) if layout is not None else list(self._probe(index, "nvmlDeviceGetMigMode"))

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any) -> int:
        index = self._device(handle, "nvmlDeviceGetMaxMigDeviceCount")
        return int(self._probe(index, "nvmlDeviceGetMaxMigDeviceCount"))

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, mig_index: int) -> MigHandle:
        index = self._device(handle, "nvmlDeviceGetMigDeviceHandleByIndex")
        devices = (self._layout(index) or {}).get("devices", [])
        if not 0 <= mig_index < len(devices):
            _raise(pynvml.NVML_ERROR_NOT_FOUND)
        return MigHandle(handle, self._mig_uuid(index, devices[mig_index]["uuid"]))

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: Any) -> Any:
        self._mig_device(handle, "nvmlDeviceGetDeviceHandleFromMigDeviceHandle")
        return handle.parent

    def nvmlDeviceIsMigDeviceHandle(self, handle: Any) -> Any:
        return ctypes.c_uint(1 if isinstance(handle, MigHandle) else 0)  # pynvml returns the raw c_uint

    def nvmlDeviceGetGpuInstanceId(self, handle: Any) -> int:
        return int(self._mig_device(handle, "nvmlDeviceGetGpuInstanceId")[1]["gi"])

    def nvmlDeviceGetComputeInstanceId(self, handle: Any) -> int:
        return int(self._mig_device(handle, "nvmlDeviceGetComputeInstanceId")[1]["ci"])

    def nvmlDeviceGetAttributes(self, handle: Any) -> Any:
        """Only MIG device handles have attributes (nvml.h); a whole GPU answers NotSupported."""
        if not isinstance(handle, MigHandle):
            self._device(handle, "nvmlDeviceGetAttributes")
            _raise(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return types.SimpleNamespace(**self._mig_device(handle, "nvmlDeviceGetAttributes")[1]["attributes"])

    # --- GPU instances (privileged in NVML: a wrapper can refuse them as it would to a user) ----

    def nvmlDeviceGetGpuInstanceById(self, handle: Any, gi: int) -> GpuInstanceHandle:
        index = self._device(handle, "nvmlDeviceGetGpuInstanceById")
        self._gpu_instance(index, gi)
        return GpuInstanceHandle(handle, gi)

    def nvmlGpuInstanceGetInfo(self, handle: Any) -> Any:
        if not isinstance(handle, GpuInstanceHandle):
            _raise(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        inst = self._gpu_instance(self._device(handle.parent, "nvmlGpuInstanceGetInfo"), handle.gi)
        start, size = inst["placement"]
        return types.SimpleNamespace(device=handle.parent, id=inst["gi"], profileId=inst["profile_id"],
                                     placement=types.SimpleNamespace(start=start, size=size))

    # --- per instance --------------------------------------------------------------------------

    def _mig_memory(self, handle: MigHandle, version: int | None) -> Any:
        m = dict(self._mig_device(handle, "nvmlDeviceGetMemoryInfo")[1]["mem"])
        if not version:
            m.pop("reserved", None)
            m["used"] = m["total"] - m["free"]
        return types.SimpleNamespace(**m)

    def _mig_processes(self, handle: MigHandle) -> list[Any]:
        device = self._mig_device(handle, "nvmlDeviceGetComputeRunningProcesses")[1]
        return [types.SimpleNamespace(pid=p["pid"], usedGpuMemory=p.get("used"), gpuInstanceId=device["gi"],
                                      computeInstanceId=device["ci"]) for p in device["procs"]]

    def _mig_gpm(self, index: int, gi: int, records: list[dict[str, Any]], key: str) -> list[Any]:
        """A GPU instance's recorded GPM values of `key` over `records` (NotFound once destroyed)."""
        out = []
        for rec in records:
            layout = rec.get("mig")
            if not isinstance(layout, dict):
                continue
            inst = next((i for i in layout.get("gpu_instances", ()) if i["gi"] == gi), None)
            if inst is not None:
                out.append(inst.get("gpm", {}).get(key))
        return out
