"""Who is on a GPU, as `gpumon snapshot` and MQTT telemetry show it: the attribution `_info` series
of a GPU's samples turned into lists of records, instead of metrics whose value is always 1."""

from __future__ import annotations

from collections.abc import Iterable

from gpumon.model import Sample

SECTIONS = {"gpumon_gpu_owner_info": "owners", "gpumon_gpu_job_info": "jobs", "gpumon_process_info": "processes"}
IDENTITY = ("gpu", "uuid")


def attribution(samples: Iterable[Sample]) -> dict[str, list[dict[str, str]]]:
    """{"owners": [...], "jobs": [...], "processes": [...]}: each series' labels but the GPU's
    identity, sorted, so the output is stable; a section with nothing is an empty list."""
    out: dict[str, list[dict[str, str]]] = {section: [] for section in SECTIONS.values()}
    for sample in samples:
        for name, labels, _ in sample.values:
            section = SECTIONS.get(name)
            if section is not None:
                out[section].append({k: v for k, v in labels if k not in IDENTITY})
    for records in out.values():
        records.sort(key=lambda r: (int(r["pid"]) if r.get("pid", "").isdigit() else 0, sorted(r.items())))
    return out
