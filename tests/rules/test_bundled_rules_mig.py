"""The bundled rules on the SYNTHETIC MIG capture (tests/fixtures/mig), read by the real sources and
time-stretched so that one recorded second is one minute: the per-instance rules fire for the idle
1g instance (with its job) and the full one, not for the busy 3g; the whole-GPU utilisation rules
stand aside; and no bundled rule goes silent under MIG without a rule that covers what it read."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from gpumon.attribution.owners import Owners
from gpumon.catalog import METRICS
from gpumon.model import Tier
from gpumon.rules.alerting import RuleEngine, State
from gpumon.rules.promql import Evaluator
from gpumon.rules.service import StoreStorage, load_groups
from gpumon.sources.capture import load_capture
from gpumon.sources.capture_nvml import CaptureNvml
from gpumon.sources.jobs import JobMapSource
from gpumon.sources.mig import MigSource
from gpumon.sources.nvml import NvmlSource
from gpumon.sources.processes import ProcessSource
from gpumon.sources.replay import DEMO_CAPTURE
from gpumon.store import Store
from tests.fixtures.mig import generate
from tests.support.dashboards import selectors

MINUTE = 60.0
STEPS = 42  # the capture's seconds; the reconfiguration at 21

# What a bundled rule reads that a MIG-enabled GPU does not give, and what covers it instead.
UNDER_MIG: dict[str, str] = {
    "gpumon_gpu_utilization_ratio": "refused under MIG (nvml.h); GpuMigSmActivityLow and GpuMigAllocatedIdle read "
                                    "each instance's SM activity",
    "gpumon_sm_active_ratio": "the whole GPU's GPM sample is refused in the capture (modelled); per instance: "
                              "gpumon_mig_sm_active_ratio",
    "gpumon_ecc_volatile_errors_total": "refused under MIG; GpuEccUncorrectable falls back to the aggregate counter",
    "gpumon_row_remap_failed": "refused while MIG instances exist; a failed remap is XID 64 (GpuXidError)",
    "gpumon_row_remap_pending": "refused while MIG instances exist; a pending remap is XID 63 (GpuXidError)",
}
# The sources whose series are the GPU's own readings: what MIG could take away.
GPU_READINGS = {m.name for m in METRICS if m.source in ("nvml", "device", "processes", "mig")}


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def replay(tmp_path: Path, capture: Path = generate.OUT_DIR) -> tuple[Store, set[str]]:
    """A capture through the nvml, MIG, process and job sources into a store, one record a minute;
    and every metric name they exported."""
    clock = Clock()
    gpus = NvmlSource(CaptureNvml(load_capture(capture), clock=clock), clock=clock)
    jobs_dir = tmp_path / "jobs"
    jobs_dir.mkdir(exist_ok=True)
    (jobs_dir / "0.9").write_text("4242 alice\n")  # dcgm-exporter's `<gpu>.<gpu instance>` file
    owners = Owners()
    sources: list[Any] = [gpus, MigSource(gpus, clock=clock), ProcessSource(gpus, owners, procfs=None),
                          JobMapSource(jobs_dir, gpus, owners)]
    units = [(source, source.open()) for source in sources]
    store = Store(100)
    names: set[str] = set()
    for step in range(STEPS):
        clock.t = float(step) + 0.5
        tiers = [Tier.SLOW, Tier.FAST] if step % 30 == 0 else [Tier.FAST]
        if step == 0:
            tiers.insert(0, Tier.STATIC)
        for tier in tiers:
            for source, source_units in units:
                for unit in source_units:
                    for sample in source.poll(unit, tier):
                        sample.timestamp = step * MINUTE  # time-stretched
                        names |= {n for n, _, _ in sample.values}
                        store.put(sample)
    return store, names


def test_bundled_rules_under_mig(tmp_path: Path) -> None:
    store, names = replay(tmp_path)
    groups = load_groups([])
    engine = RuleEngine(groups, Evaluator(StoreStorage(store)), lambda *a: None)
    firing: dict[str, set[str]] = defaultdict(set)
    labels_of: dict[tuple[str, str], dict[str, str]] = {}
    for step in range(STEPS):
        for g in groups:
            engine.eval_group(g, int(step * MINUTE * 1000))
        for a in engine.alerts():
            if a.state is State.FIRING:
                d = dict(a.labels)
                firing[d["alertname"]].add(d.get("gpu_instance", "gpu"))
                labels_of[(d["alertname"], d.get("gpu_instance", "gpu"))] = d
    assert all(s.health == "ok" for s in engine.states.values()), [s.last_error for s in engine.states.values()]
    assert "9" in firing["GpuMigSmActivityLow"] and "2" not in firing["GpuMigSmActivityLow"]
    assert labels_of[("GpuMigSmActivityLow", "9")]["job_id"] == "4242"  # its owner, from the mapping file
    assert labels_of[("GpuMigSmActivityLow", "9")]["mig_profile"] == "1g.18gb"
    assert firing["GpuMigAllocatedIdle"] == {"9"}
    assert firing["GpuMigMemoryHigh"] == {"10"}
    assert "12" not in firing["GpuMigSmActivityLow"]  # the free instance: nobody holds it
    for whole_gpu in ("GpuSmActivityLow", "GpuUtilizationLow", "GpuAllocatedIdle"):
        assert not firing[whole_gpu], whole_gpu

    # Every bundled rule reads of the GPU what the same H200 gives with MIG, or what is listed above with
    # its cover.
    _, without_mig = replay(tmp_path, DEMO_CAPTURE)
    for group in groups:
        for rule in group.rules:
            read = {s.name for s in selectors(rule.expr_text)} & GPU_READINGS & without_mig
            missing = read - names - set(UNDER_MIG)
            assert not missing, f"{rule.name} reads {sorted(missing)}, which a MIG GPU does not give"
    assert not set(UNDER_MIG) & names, "UNDER_MIG lists a series the MIG capture has"
    assert set(UNDER_MIG) <= without_mig, "UNDER_MIG lists a series the GPU lacks without MIG too"
