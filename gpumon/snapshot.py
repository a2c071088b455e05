"""`gpumon snapshot`: one poll of every tier, printed as a table or JSON, then exit."""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from typing import Any

from gpumon import catalog
from gpumon.attribution.report import SECTIONS, attribution
from gpumon.backend import Backend, open_sampler
from gpumon.config import Config
from gpumon.model import Device, Tier
from gpumon.sources.nvml_readers import GPM_MIN_INTERVAL_S
from gpumon.store import Store


@dataclass
class Snapshot:
    backend: Backend
    store: Store

    @property
    def devices(self) -> list[Device]:
        return self.backend.devices


async def take_snapshot(config: Config) -> Snapshot:
    """Open the backend and poll static, slow and fast tiers and the asynchronous sources (the
    kubelet, NCCL RAS) once (GPM needs two samples)."""
    sampler, backend = await open_sampler(config, Store(10))
    loop = asyncio.get_running_loop()
    opened = loop.time()
    await asyncio.gather(sampler.poll_round(Tier.SLOW), sampler.poll_all_async())
    await asyncio.sleep(max(0.0, opened + GPM_MIN_INTERVAL_S + 0.02 - loop.time()))
    await sampler.poll_round(Tier.FAST)
    await sampler.stop()
    return Snapshot(backend, sampler.store)


def _series(snap: Snapshot) -> dict[str, dict[str, dict[str, float]]]:
    """metric -> gpu -> extra-label text ("" when none) -> value, in catalog order."""
    out: dict[str, dict[str, dict[str, float]]] = {m.name: {} for m in catalog.METRICS}
    for gpu, samples in snap.store.latest_by_gpu().items():
        for sample in samples:
            for name, labels, value in sample.values:
                if name in SECTIONS:  # who is on the GPU: shown as records, not as metrics of value 1
                    continue
                extra = ",".join(f"{k}={v}" for k, v in labels if k not in ("gpu", "uuid"))
                out[name].setdefault(str(gpu), {})[extra] = value
    return {name: gpus for name, gpus in out.items() if gpus}


def as_json(snap: Snapshot) -> str:
    series = _series(snap)
    gpus: list[dict[str, Any]] = []
    for d in snap.devices:
        metrics: dict[str, Any] = {}
        for name, by_gpu in series.items():
            values = by_gpu.get(str(d.index))
            if values:
                metrics[name] = values[""] if list(values) == [""] else values
        gpus.append({"index": d.index, "uuid": d.uuid, "name": d.name, "pci_bus_id": d.pci_bus_id,
                     "architecture": d.architecture, "gpm": d.gpm_supported, "metrics": metrics,
                     **attribution(snap.store.latest_by_gpu().get(d.index, []))})
    doc = {"backend": snap.backend.name, "demo": bool(snap.backend.demo_note), "gpus": gpus}
    return json.dumps(doc, indent=2, allow_nan=False, default=str)


def _fmt(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return str(value)
    if unit == "bytes":
        for div, suffix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(value) >= div:
                return f"{value / div:.2f} {suffix}"
    if unit == "ratio":
        return f"{value * 100:.1f} %"
    if unit == "hertz":
        return f"{value / 1e6:.0f} MHz"
    if unit == "bytes_per_second":
        return f"{value / 2**20:.1f} MiB/s"
    if unit == "watts":
        return f"{value:.1f} W"
    if unit == "celsius":
        return f"{value:.0f} °C"
    return f"{value:g}"


def as_table(snap: Snapshot) -> str:
    devices = snap.devices
    lines = []
    if snap.backend.demo_note:
        lines.append(f"DEMO DATA: {snap.backend.demo_note}")
    header = ["metric", *(f"GPU {d.index}" for d in devices)]
    rows = [["name", *(d.name for d in devices)], ["uuid", *(d.uuid for d in devices)]]
    for name, by_gpu in _series(snap).items():
        unit = catalog.BY_NAME[name].unit
        extras = sorted({e for values in by_gpu.values() for e in values})
        for extra in extras:
            label = f"{name}{{{extra}}}" if extra else name
            cells = [_fmt(by_gpu[str(d.index)][extra], unit) if extra in by_gpu.get(str(d.index), {}) else "-"
                     for d in devices]
            rows.append([label, *cells])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    lines.extend(_who(snap))
    return "\n".join(lines)


def _who(snap: Snapshot) -> list[str]:
    """Per GPU: the pods and jobs holding it, and its processes with their owners."""
    by_gpu = snap.store.latest_by_gpu()
    rows = [["GPU", "pid", "kind", "name", "pod", "job", "user"]]
    held = []
    for d in snap.devices:
        who = attribution(by_gpu.get(d.index, []))
        holders = [f"pod {o['owner_namespace']}/{o['owner_pod']}/{o['owner_container']}" + _instance(o)
                   for o in who["owners"]]
        holders += [f"job {j['job_id']}" + (f" ({j['user']})" if j["user"] else "") + _instance(j) for j in who["jobs"]]
        if holders:
            held.append(f"GPU {d.index} held by: " + ", ".join(holders))
        for p in who["processes"]:
            pod = f"{p['owner_namespace']}/{p['owner_pod']}" if p["owner_pod"] else "-"
            rows.append([str(d.index), p["pid"], p["kind"], p["name"] or "-", pod, p["job_id"] or "-",
                         p["user"] or "-"])
    lines = ["", *held] if held else []
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines.append("")
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return lines


def _instance(record: dict[str, str]) -> str:
    """" in MIG instance 9" for an owner of a GPU instance, "" for one of the whole GPU."""
    return f" in MIG instance {record['gpu_instance']}" if record.get("gpu_instance") else ""
