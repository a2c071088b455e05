"""Generate docs/metrics.md from the catalog: `python -m gpumon.docgen > docs/metrics.md`."""

from __future__ import annotations

from gpumon import catalog

HEADER = """# Metrics reference

Generated from `gpumon/catalog.py` by `make docs`; a test fails when this file is stale.

Every per-GPU series carries `gpu` (NVML index) and `uuid`; join on either with
`gpumon_gpu_info` for the name, PCI bus id and driver. A metric the GPU does not support has no
series at all (not NaN, not 0) and is counted in `gpumon_unsupported_metrics`.

Tiers: **fast** is read every `sampler.fast_interval` (1 s), **slow** every `sampler.slow_interval`
(30 s), **static** once at start and after a lost GPU is re-initialised.

**SM activity.** `gpumon_sm_active_ratio` comes from NVML GPM (Hopper and later). On older GPUs it is
absent, and `gpumon_gpu_info{sm_activity_source="none"}` says so; `gpumon_gpu_utilization_ratio`
(NVML `util.gpu`) is always exported under its own name because it only means "a kernel was
running": on an H200 it reads ~0.99 during pure PCIe copies while SM activity is 0.

| metric | type | unit | labels | tier | source | description |
| --- | --- | --- | --- | --- | --- | --- |
"""


def render() -> str:
    rows = []
    for m in catalog.METRICS:
        labels = ", ".join(("gpu", "uuid", *m.labels) if m.per_gpu else m.labels) or "-"
        source = f"nvml `{m.reading}`" if m.source == "nvml" else m.source
        tier = m.tier.value if m.source == "nvml" else ("event" if m.source == "events" else "each poll")
        help_ = m.help.replace("|", "\\|") + (f" Off by default; enable with `metrics.{m.opt_in}`." if m.opt_in else "")
        rows.append(f"| `{m.name}` | {m.type} | {m.unit or '-'} | {labels} | {tier} | {source} | {help_} |")
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(render(), end="")
