"""The NVML floor of one fast-tier poll of one GPU, computed from a capture (never typed in).

Which calls the fast tier makes comes from the catalog (`catalog.nvml_metrics(Tier.FAST)`: its
readings and field ids); what each reading calls is `CALLS` below, checked against the catalog so a
new reading cannot be left out silently. Two floors come out:

- `probe_us`: the sum of probe.json's median latencies (`us_med`; GPM: `sample_get_us` and the
  median of `metrics_get_us`; fields: the `lat_us` of each field), taking the cheapest variant
  where several calls give the same values. This is the floor the issue names.
- `replay_us`: what the fake library actually sleeps for the same calls with FAKENVML_LATENCY=1:
  the trace's `lat_us` of the playing record where it has one, else the probe median, summed per
  trace record; mean (a poll lands on any record) and median over the trace. The trace was
  recorded under load with the recorder making ~15 calls per sample, so several calls cost more
  there than in the quiet probe: this, not probe_us, is what a poll on the fake can reach.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpumon import catalog
from gpumon.model import Tier

# reading -> the NVML calls it makes: (probe.json key or alternatives, trace lat_us key or "").
# Alternatives are calls that return the same values; the floor takes the cheapest.
CALLS: dict[str, list[tuple[tuple[str, ...], str]]] = {
    "utilization": [(("nvmlDeviceGetUtilizationRates",), "util")],
    "memory": [(("nvmlDeviceGetMemoryInfo(v2)",), "mem")],  # v1 lacks `reserved`
    "temperature": [(("nvmlDeviceGetTemperature(GPU)",), "temp_c")],
    "power_usage": [(("nvmlDeviceGetPowerUsage",), "power_mw")],
    "clocks": [(("nvmlDeviceGetClockInfo(SM)",), "sm_clock_mhz"), (("nvmlDeviceGetClockInfo(MEM)",), "mem_clock_mhz")],
    "clock_event_reasons": [(("nvmlDeviceGetCurrentClocksEventReasons",
                              "nvmlDeviceGetCurrentClocksThrottleReasons"), "clocks_event_reasons")],
    "pstate": [(("nvmlDeviceGetPerformanceState",), "pstate")],
    "processes": [(("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetComputeRunningProcesses_v2",
                    "nvmlDeviceGetComputeRunningProcesses_v3"), "procs")],
    "gpm": [(("gpm.sample_get_us",), "gpm_sample"), (("gpm.metrics_get_us",), "gpm")],
    "fields": [],  # one nvmlDeviceGetFieldValues; its cost is the sum of its fields' lat_us
}


@dataclass
class Floor:
    probe_us: float
    replay_mean_us: float
    replay_median_us: float
    calls: dict[str, float]  # probe floor per call, for the table's footnote


def fast_tier_plan() -> tuple[list[str], list[int]]:
    """The readings and field ids of the fast tier, from the catalog."""
    readings: list[str] = []
    fields: list[int] = []
    for m in catalog.nvml_metrics(Tier.FAST):
        if m.reading not in readings:
            readings.append(m.reading)
        if m.reading == "fields":
            fields.append(int(m.key))
    unknown = [r for r in readings if r not in CALLS]
    if unknown:
        raise KeyError(f"benchmarks/floor.py does not know the NVML calls of reading(s) {unknown}: add them to CALLS")
    return readings, fields


def _probe_us(device: dict[str, Any], key: str) -> float | None:
    if key == "gpm.sample_get_us":
        return float(device["gpm"]["sample_get_us"])
    if key == "gpm.metrics_get_us":
        return float(statistics.median(device["gpm"]["metrics_get_us"]))
    entry = device["getters"].get(key) or device["parametrized"].get(key)
    return None if entry is None else float(entry["us_med"])


def compute(capture: Path) -> Floor:
    """Both floors of one fast-tier poll of one GPU of the capture's first recorded GPU."""
    probe = json.loads((capture / "probe.json").read_text())
    device = probe["devices"][0]
    records = [json.loads(line) for line in (capture / "trace.jsonl").read_text().splitlines() if line.strip()]
    records = [r for r in records if r.get("gpu", 0) == device.get("index", 0)]
    readings, field_ids = fast_tier_plan()
    calls: dict[str, float] = {}
    per_record = [0.0] * len(records)
    for reading in readings:
        if reading == "fields":
            by_id = device["fields"]["by_id"]
            us = sum(max(float(by_id.get(str(f), {}).get("lat_us", 0)), 0.0) for f in field_ids)
            calls[f"nvmlDeviceGetFieldValues({','.join(map(str, field_ids))})"] = us
            per_record = [p + us for p in per_record]  # the fake charges the probe's per-field lat_us
            continue
        for keys, trace_key in CALLS[reading]:
            known = [(cost, k) for k in keys if (cost := _probe_us(device, k)) is not None]
            if not known:
                continue  # not in the probe: the fake answers NotSupported at no recorded cost
            cheapest, key = min(known)
            calls[key] = cheapest
            for i, r in enumerate(records):
                lat = r.get("lat_us", {}).get(trace_key) if trace_key else None
                per_record[i] += float(lat) if isinstance(lat, (int, float)) and lat > 0 else cheapest
    return Floor(sum(calls.values()), statistics.fmean(per_record), statistics.median(per_record), calls)


if __name__ == "__main__":
    from gpumon.sources.replay import DEMO_CAPTURE

    print(compute(DEMO_CAPTURE))
