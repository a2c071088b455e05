"""A recorded NVML capture: the files of `shared/fixtures/nvml/` (`probe.json` for static answers,
`trace.jsonl` for values over time, `phases.json` for the labelled load), loaded and checked.
`CaptureNvml` (capture_nvml.py) plays one behind the pynvml API; every error names file and line.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpumon.model import BackendUnavailable

TRACE_PERIOD_FALLBACK_S = 0.25  # the trace's period when it has one record


class CaptureError(BackendUnavailable):
    """A capture that cannot be read; the message names the file and line."""


@dataclass
class Capture:
    """A loaded capture: per recorded GPU, the probe answers and the time-ordered trace."""

    path: Path
    probe: dict[str, Any]
    traces: list[list[dict[str, Any]]]
    phases: list[dict[str, Any]] = field(default_factory=list)

    @property
    def devices(self) -> list[dict[str, Any]]:
        return list(self.probe.get("devices", []))

    def duration(self, gpu: int) -> float:
        trace = self.traces[gpu]
        if len(trace) < 2:
            return TRACE_PERIOD_FALLBACK_S
        span = float(trace[-1]["t"] - trace[0]["t"])
        if span <= 0:  # every record at the same instant: play them as one
            return TRACE_PERIOD_FALLBACK_S
        return span + span / (len(trace) - 1)


def load_capture(path: str | Path) -> Capture:
    """Read a capture directory (trace.jsonl, probe.json, phases.json optional), or a trace.jsonl
    with its probe.json beside it."""
    p = Path(path)
    if p.is_dir():
        trace_file = p / "trace.jsonl"
        probe_file, phases_file = p / "probe.json", p / "phases.json"
    else:
        trace_file, probe_file, phases_file = p, p.with_name("probe.json"), p.with_name("phases.json")
    if not trace_file.is_file():
        raise CaptureError(f"{trace_file}: capture not found (expected a directory with trace.jsonl, "
                           "or a trace.jsonl file)")
    if not probe_file.is_file():
        # Without it the replayed GPU would have no name and no GPM: SM activity would silently be
        # missing although the trace records it.
        raise CaptureError(f"{probe_file}: not found; a capture needs probe.json beside trace.jsonl (the "
                           "recorder writes both): it holds the GPU's static answers, GPM support among them")
    probe = _read_json(probe_file)
    if (not isinstance(probe, dict) or not isinstance(probe.get("devices", []), list)
            or not all(isinstance(d, dict) for d in probe.get("devices", []))):
        raise CaptureError(f"{probe_file}: expected an object with a 'devices' list of objects")
    phases = _read_json(phases_file) if phases_file.is_file() else []
    if not isinstance(phases, list) or not all(_is_phase(ph) for ph in phases):
        raise CaptureError(f"{phases_file}: expected a list of {{\"name\", \"start\", \"end\"}} objects "
                           "with numeric start and end")
    by_gpu: dict[int, list[dict[str, Any]]] = {}
    try:
        with trace_file.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                rec = _parse_record(trace_file, lineno, line)
                by_gpu.setdefault(rec["gpu"], []).append(rec)
    except (OSError, UnicodeDecodeError) as exc:
        raise CaptureError(f"{trace_file}: cannot read: {exc}") from None
    if not by_gpu:
        raise CaptureError(f"{trace_file}: no samples in the trace")
    if missing := sorted(g for g in by_gpu if g >= len(probe.get("devices", []))):
        raise CaptureError(f"{probe_file}: no device entry for GPU {missing[0]} of the trace (its name, GPM "
                           "support and limits would be unknown)")
    traces = [sorted(by_gpu[g], key=lambda r: r["t"]) for g in sorted(by_gpu)]
    return Capture(p, probe, traces, phases)


def _is_phase(phase: Any) -> bool:
    return (isinstance(phase, dict) and isinstance(phase.get("name"), str)
            and all(_is_number(phase.get(k)) for k in ("start", "end")))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CaptureError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CaptureError(f"{path}: cannot read: {exc}") from None


def _parse_record(path: Path, lineno: int, line: str) -> dict[str, Any]:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CaptureError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(rec, dict):
        raise CaptureError(f"{path}:{lineno}: expected a JSON object per line")
    for key, kind in (("t", (int, float)), ("gpu", int)):
        if not isinstance(rec.get(key), kind) or isinstance(rec.get(key), bool):
            raise CaptureError(f"{path}:{lineno}: field '{key}' missing or not a number")
    try:
        finite = math.isfinite(rec["t"])
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite:
        raise CaptureError(f"{path}:{lineno}: field 't' is not finite")
    if (bad := _first_non_number(rec, ())) is not None:
        where, value = bad
        raise CaptureError(f"{path}:{lineno}: field '{where}' is {json.dumps(value)}, not a number "
                           "(or {\"err\": ...} for a refused call)")
    return rec


# Keys whose values are text: a MIG device's UUID and name and its GPU instance's profile (`mig`).
TEXT_KEYS = frozenset({"uuid", "name", "profile"})


def _first_non_number(value: Any, at: tuple[str, ...]) -> tuple[str, Any] | None:
    """The first value in a record that is not a number, a list or object of them, null, text under
    TEXT_KEYS, or an `err` entry: what NVML can answer. Such a value would otherwise surface mid-run
    as a lost GPU."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in TEXT_KEYS and isinstance(item, str):
                continue
            if key != "err" and (bad := _first_non_number(item, (*at, str(key)))) is not None:
                return bad
        return None
    if isinstance(value, list):
        for i, item in enumerate(value):
            if (bad := _first_non_number(item, (*at, str(i)))) is not None:
                return bad
        return None
    if value is None or _is_number(value):
        return None
    return ".".join(at), value
