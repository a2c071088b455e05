"""Scripted NVML misbehaviour, for tests: `FaultyNvml` wraps any NVML object (a `CaptureNvml`, or
pynvml bound to the fake library) and makes it fail the way a sick GPU does.

The semantics are the fake library's FAKENVML_FAULTS file (tools/fakenvml/faults.c), so a test
reads the same either way: times are seconds since nvmlInit on the wrapper's clock; a lost GPU
answers GPU_IS_LOST to every call on it (a lookup by UUID or bus id included, by index not); an
error fault on "nvmlDeviceGetMemoryInfo" also matches the versioned call pynvml makes
(nvmlDeviceGetMemoryInfo_v2), and "*" matches every call; a hung call naps until its window ends or
nvmlShutdown releases it; XIDs are delivered once each, to an event set registered for their GPU.
"""

from __future__ import annotations

import re
import threading
import time
import types
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pynvml

from gpumon.sources.nvml import handle_key

# Calls that name a GPU by something other than a handle; a lost GPU fails its own lookup.
_LOOKUPS = ("nvmlDeviceGetHandleByUUID", "nvmlDeviceGetHandleByPciBusId")
_INITS = ("nvmlInit", "nvmlInitWithFlags")
_WAITS = ("nvmlEventSetWait", "nvmlEventSetWait_v2")


@dataclass
class Faults:
    """What goes wrong, and when (seconds since nvmlInit)."""

    lost: list[tuple[int, float, float]] = field(default_factory=list)  # gpu, from, to
    errors: list[tuple[str, int | None, int]] = field(default_factory=list)  # call, gpu or any, code
    hangs: list[tuple[str, int | None, float, float]] = field(default_factory=list)  # call, gpu, at, seconds
    xids: list[tuple[int, float, int]] = field(default_factory=list)  # gpu, at, xid
    init_error: int | None = None


def call_matches(pattern: str, symbol: str) -> bool:
    """As faults.c matches: the name, "*", or the name of a versioned call (`_v2`) without its version."""
    return pattern in ("*", symbol) or re.fullmatch(re.escape(pattern) + r"_v\d+", symbol) is not None


def _symbol(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The C function pynvml calls for `name`: asked for a version, nvmlDeviceGetMemoryInfo calls
    nvmlDeviceGetMemoryInfo_v2 (a driver before 515 lacks it)."""
    if name == "nvmlDeviceGetMemoryInfo" and (kwargs.get("version") or (len(args) > 1 and args[1])):
        return "nvmlDeviceGetMemoryInfo_v2"
    return name


def _raise(code: int) -> None:
    raise pynvml.NVMLError(code)


class FaultyNvml:
    """`nvml`, with `faults` applied; every other attribute is the wrapped object's. `calls` counts
    the NVML functions called through it, by name."""

    def __init__(self, nvml: Any, faults: Faults, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.nvml = nvml
        self.faults = faults
        self.calls: Counter[str] = Counter()
        self._clock = clock
        self._start: float | None = None
        self._handle_type: type | None = None
        self._indices: dict[int, int] = {}
        self._registered: set[int] = set()
        self._xids = sorted(faults.xids, key=lambda x: x[1])
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.nvml, name)
        if not name.startswith("nvml") or isinstance(real, type) or not callable(real):
            return real  # constants, structs and exception classes pass through

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._call(name, real, args, kwargs)
        return call

    def elapsed(self) -> float:
        if self._start is None:
            _raise(pynvml.NVML_ERROR_UNINITIALIZED)
        return self._clock() - self._start  # type: ignore[operator]

    def _call(self, name: str, real: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.calls[name] += 1
        if name in _INITS:
            if self.faults.init_error is not None:
                _raise(self.faults.init_error)
            result = real(*args, **kwargs)
            self._start = self._clock()
            return result
        if name == "nvmlShutdown":
            self._start = None
            return real(*args, **kwargs)
        if name in _WAITS and self._xids:
            return self._wait(*args)
        symbol = _symbol(name, args, kwargs)
        if args and self._handle_type is not None and isinstance(args[0], self._handle_type):
            self._misbehave(symbol, self._index(args[0]))
        result = real(*args, **kwargs)
        if name.startswith("nvmlDeviceGetHandleBy"):
            self._handle_type = type(result)
            if name.startswith(_LOOKUPS):
                self._misbehave(symbol, self._index(result))
        elif name == "nvmlDeviceRegisterEvents":
            self._registered.add(self._index(args[0]))
        return result

    def _index(self, handle: Any) -> int:
        """The GPU a handle is, or for a MIG device handle (which has no index) its parent GPU."""
        key = handle_key(handle)
        if key not in self._indices:
            try:
                self._indices[key] = int(self.nvml.nvmlDeviceGetIndex(handle))
            except pynvml.NVMLError:
                parent = self.nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle)
                self._indices[key] = int(self.nvml.nvmlDeviceGetIndex(parent))
        return self._indices[key]

    def _misbehave(self, symbol: str, gpu: int) -> None:
        now = self.elapsed()
        for lost, start, end in self.faults.lost:
            if lost == gpu and start <= now < end:
                _raise(pynvml.NVML_ERROR_GPU_IS_LOST)
        for pattern, hung, at, seconds in self.faults.hangs:
            if call_matches(pattern, symbol) and hung in (None, gpu) and at <= now < at + seconds:
                while self._start is not None and self.elapsed() < at + seconds:
                    time.sleep(0.02)  # in naps, so that nvmlShutdown releases the call
        for pattern, failing, code in self.faults.errors:
            if call_matches(pattern, symbol) and failing in (None, gpu):
                _raise(code)

    def _wait(self, event_set: Any, timeout_ms: int) -> Any:
        """The next scripted XID that is due on a registered GPU. Times out when the wrapper's clock
        passes the deadline or, so that a clock a test holds still cannot hang the caller, after
        timeout_ms of real time; nvmlShutdown releases it, as it does in NVML."""
        timeout = max(0, timeout_ms) / 1000
        deadline = self.elapsed() + timeout
        real_deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                now = self.elapsed()
                due = next((x for x in self._xids if x[0] in self._registered), None)
                if due is not None and due[1] <= now:
                    self._xids.remove(due)
                    return types.SimpleNamespace(
                        device=self.nvml.nvmlDeviceGetHandleByIndex(due[0]),
                        eventType=pynvml.nvmlEventTypeXidCriticalError, eventData=due[2],
                        gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)
            real_left = real_deadline - time.monotonic()
            if now >= deadline or real_left <= 0:
                _raise(pynvml.NVML_ERROR_TIMEOUT)
            wake = min(deadline, due[1]) if due is not None else deadline
            time.sleep(min(max(wake - now, 0.001), real_left, 0.05))
