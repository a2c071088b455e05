"""The two fake NVMLs gpumon's tests run on, behind one interface, and helpers to read a capture.

`CaptureFake` is gpumon's own `CaptureNvml` (what `--backend replay:` plays); `LibraryFake` is the
fake libnvidia-ml.so.1 (tools/fakenvml) under the real pynvml. Both answer from the same capture, so
a contract test runs once on each (the `nvml_fake` fixture) and checks one against the capture
files, never against the other. `start()` gives an NVML object that is not yet initialised; wrap it
in tests.support.faults.FaultyNvml to make it misbehave.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from gpumon.model import Sample
from gpumon.sources.capture import Capture, load_capture
from gpumon.sources.capture_nvml import CaptureNvml
from gpumon.sources.nvml import NvmlSource
from gpumon.sources.replay import DEMO_CAPTURE
from tests.support.clock import FakeClock, StartAt
from tests.support.faults import Faults, FaultyNvml
from tools.fakenvml import variables

Values = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class NvmlFake(Protocol):
    name: str

    def start(self, capture: Path = DEMO_CAPTURE, *, gpus: int = 1, at: float | None = None,
              speed: float = 1.0, loop: bool = True) -> Any:
        """An NVML object over `capture` (not initialised): held still `at` trace seconds from
        its start if given, else playing in real time at `speed` from nvmlInit."""
        ...


@dataclass
class CaptureFake:
    name: str = "capture"

    def start(self, capture: Path = DEMO_CAPTURE, *, gpus: int = 1, at: float | None = None,
              speed: float = 1.0, loop: bool = True) -> CaptureNvml:
        clock: Callable[[], float] = time.monotonic if at is None else StartAt(at)
        return CaptureNvml(load_capture(capture), gpus=gpus, speed=speed, loop=loop, clock=clock)


@dataclass
class LibraryFake:
    """The fake library, loaded into this process's pynvml (`nvml`) for the test's duration."""

    nvml: Any
    library: Path
    monkeypatch: pytest.MonkeyPatch
    tmp_path: Path
    name: str = "library"

    def configure(self, *, faults: str | None = None, capture: Path = DEMO_CAPTURE, **settings: Any) -> None:
        """Set FAKENVML_* for the next nvmlInit: gpus, speed, start, loop, latency; faults is the
        text of a FAKENVML_FAULTS file (the library's own fault script)."""
        if faults is not None:
            path = self.tmp_path / "faults.txt"
            path.write_text(faults)
            settings["faults"] = path
        for name, value in variables(capture=capture, **settings).items():
            self.monkeypatch.setenv(name, value)

    def start(self, capture: Path = DEMO_CAPTURE, *, gpus: int = 1, at: float | None = None,
              speed: float = 1.0, loop: bool = True) -> Any:
        held = at is not None
        self.configure(capture=capture, gpus=gpus, speed=0 if held else speed, start=at if held else 0, loop=loop)
        return self.nvml


def opened(fake: NvmlFake, *, faults: Faults | None = None, opt_ins: frozenset[str] = frozenset(),
           **start: Any) -> tuple[NvmlSource, FakeClock]:
    """gpumon's nvml source, open on `fake` (with `faults` if given); the returned clock spaces its
    GPM samples, times the faults, and is moved by hand."""
    clock = FakeClock()
    nvml = fake.start(**start)
    if faults is not None:
        nvml = FaultyNvml(nvml, faults, clock=clock)
    source = NvmlSource(nvml, clock=clock, opt_ins=opt_ins)
    source.open()
    return source, clock


# --- reading a capture ---------------------------------------------------------------------------


def values(sample: Sample, *, without: tuple[str, ...] = ()) -> Values:
    """A sample's values by name and labels, less the labels named in `without`."""
    return {(name, tuple(p for p in labels if p[0] not in without)): v for name, labels, v in sample.values}


def names(sample: Sample) -> set[str]:
    return {name for name, _, _ in sample.values}


def record_at(capture: Capture, position: float, gpu: int = 0) -> dict[str, Any]:
    """The record a player `position` seconds into the trace shows: the last one at or before it."""
    trace = capture.traces[gpu]
    return [r for r in trace if r["t"] - trace[0]["t"] <= position][-1]


def middle_of(capture: Capture, phase: str) -> float:
    """Seconds from the start of the trace to the middle of a labelled load phase."""
    p = next(p for p in capture.phases if p["name"] == phase)
    return float((p["start"] + p["end"]) / 2 - capture.traces[0][0]["t"])


def edited_capture(directory: Path, edit: Callable[[dict[str, Any], list[dict[str, Any]]], None],
                   source: Path = DEMO_CAPTURE) -> Path:
    """The capture at `source` (the bundled H200 one) changed by edit(probe, records), written to
    directory the way the recorder writes one (json.dumps: NaN stays NaN)."""
    probe = json.loads((source / "probe.json").read_text())
    records = [json.loads(line) for line in (source / "trace.jsonl").read_text().splitlines() if line]
    edit(probe, records)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "probe.json").write_text(json.dumps(probe))
    (directory / "trace.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if (source / "phases.json").is_file():
        (directory / "phases.json").write_text((source / "phases.json").read_text())
    return directory


def gpm_metrics(n: Any, s1: Any, s2: Any, ids: list[int]) -> list[tuple[int, float]]:
    """(return code, value) of each GPM metric `ids` between samples s1 and s2."""
    mg = n.c_nvmlGpmMetricsGet_t()
    mg.version = n.NVML_GPM_METRICS_GET_VERSION
    mg.numMetrics = len(ids)
    mg.sample1, mg.sample2 = s1, s2
    for j, metric in enumerate(ids):
        mg.metrics[j].metricId = metric
    n.nvmlGpmMetricsGet(mg)
    return [(mg.metrics[j].nvmlReturn, mg.metrics[j].value) for j in range(len(ids))]
