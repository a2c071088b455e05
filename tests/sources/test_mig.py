"""The MIG source on the SYNTHETIC MIG capture (tests/fixtures/mig), through CaptureNvml, on a clock
the test moves: per GPU instance memory (never summed over compute instances), GPM, processes; the
reconfiguration followed; a GPU without MIG, a non-root user and a lost GPU."""

from __future__ import annotations

from typing import Any

import pynvml
import pytest

from gpumon.model import Sample, Tier
from gpumon.sources.base import Unit, UnitLost
from gpumon.sources.capture import load_capture
from gpumon.sources.capture_nvml import CaptureNvml
from gpumon.sources.mig import MigSource, profile_of
from gpumon.sources.nvml import NvmlSource
from gpumon.sources.replay import DEMO_CAPTURE
from tests.fixtures.mig import generate
from tests.support.faults import Faults, FaultyNvml

SWITCH_S = 21.0  # the capture's reconfiguration, seconds into the trace
GIB, MIB = 1 << 30, 1 << 20


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def mig_source(faults: Faults | None = None, capture: Any = generate.OUT_DIR) -> tuple[MigSource, Clock, Unit]:
    clock = Clock()
    nvml: Any = CaptureNvml(load_capture(capture), clock=clock)
    if faults is not None:
        nvml = FaultyNvml(nvml, faults, clock=clock)
    gpus = NvmlSource(nvml, clock=clock)
    gpus.open()
    source = MigSource(gpus, clock=clock)
    (unit,) = source.open()
    return source, clock, unit


def values(samples: list[Sample], name: str) -> dict[str, float]:
    """gpu_instance -> value of `name` in the samples."""
    return {dict(labels)["gpu_instance"]: v for s in samples for n, labels, v in s.values if n == name}


def poll_at(source: MigSource, clock: Clock, unit: Unit, t: float, tier: Tier = Tier.FAST) -> list[Sample]:
    clock.t = t
    return source.poll(unit, tier)


@pytest.mark.parametrize(("name", "profiles"), [
    ("NVIDIA H200 MIG 3g.71gb", ("3g.71gb", "3g.71gb")),
    ("NVIDIA H200 MIG 1c.2g.35gb", ("2g.35gb", "1c.2g.35gb")),
    ("NVIDIA H100 80GB HBM3 MIG 1g.10gb+me", ("1g.10gb+me", "1g.10gb+me")),
    ("NVIDIA A100-SXM4-40GB MIG 2c.3g.20gb", ("3g.20gb", "2c.3g.20gb")),
    ("NVIDIA H200", ("", "")),
])
def test_profiles_come_from_the_mig_device_name(name: str, profiles: tuple[str, str]) -> None:
    assert profile_of(name) == profiles


def test_each_gpu_instance_once_with_its_profile_memory_activity_and_processes() -> None:
    source, clock, unit = mig_source()
    first = poll_at(source, clock, unit, 1.0)
    assert values(first, "gpumon_mig_sm_active_ratio") == {}  # GPM needs a second sample
    layout = [s for s in first if s.tier == "slow"]
    assert layout, "the first poll reads the layout"
    samples = poll_at(source, clock, unit, 3.0)
    # Memory per GPU instance: the 2g.35gb's two compute instances report its 20 GiB once, not twice.
    assert values(samples, "gpumon_mig_memory_used_bytes") == {"2": 60 * GIB, "3": 20 * GIB, "9": 10 * GIB,
                                                               "10": 17000 * MIB}
    assert values(samples, "gpumon_mig_memory_total_bytes")["2"] == 4 * generate.SLICE_MIB * (1 << 20)
    assert values(samples, "gpumon_mig_compute_processes") == {"2": 1, "3": 2, "9": 1, "10": 1}
    sm = values(samples, "gpumon_mig_sm_active_ratio")
    assert sm["2"] > 0.85 and sm["9"] < 0.01 and 0.3 < sm["3"] < 0.5
    assert set(values(samples, "gpumon_mig_dram_active_ratio")) == {"2", "3", "9", "10"}
    labels = {dict(lb)["gpu_instance"]: dict(lb) for s in samples for n, lb, _ in s.values
              if n == "gpumon_mig_sm_active_ratio"}
    assert labels["2"] == {"gpu": "0", "uuid": source.gpus.devices[0].uuid, "gpu_instance": "2",
                           "mig_profile": "3g.71gb"}
    info = [dict(lb) for s in layout for n, lb, _ in s.values if n == "gpumon_mig_instance_info"]
    assert [(i["gpu_instance"], i["compute_instance"], i["compute_profile"], i["multiprocessors"], i["placement"])
            for i in info] == [("2", "0", "3g.71gb", "60", "4:4"), ("3", "0", "1c.2g.35gb", "16", "0:2"),
                               ("3", "1", "1c.2g.35gb", "16", "0:2"), ("9", "0", "1g.18gb", "16", "2:1"),
                               ("10", "0", "1g.18gb", "16", "3:1")]
    modes = {dict(lb)["state"]: v for s in layout for n, lb, v in s.values if n == "gpumon_mig_mode"}
    assert modes == {"current": 1.0, "pending": 1.0}
    assert source.instances(0)[info[0]["mig_uuid"]] == (2, 0)


def test_gpm_samples_closer_than_100_ms_give_no_reading() -> None:
    source, clock, unit = mig_source()
    poll_at(source, clock, unit, 1.0)
    assert values(poll_at(source, clock, unit, 1.05), "gpumon_mig_sm_active_ratio") == {}
    assert set(values(poll_at(source, clock, unit, 1.2), "gpumon_mig_sm_active_ratio")) == {"2", "3", "9", "10"}


def test_a_reconfiguration_is_followed_at_the_next_poll_without_a_gap_for_the_instances_that_stay() -> None:
    source, clock, unit = mig_source()
    for t in range(1, int(SWITCH_S)):
        poll_at(source, clock, unit, float(t))
    after = poll_at(source, clock, unit, SWITCH_S + 0.5)  # GPU instance 3 destroyed, 11 and 12 made
    assert set(values(after, "gpumon_mig_sm_active_ratio")) == {"2", "9", "10"}  # 3 gone, no gap for 2, 9, 10
    layout = [dict(lb)["gpu_instance"] for s in after if s.tier == "slow" for n, lb, _ in s.values
              if n == "gpumon_mig_instance_info"]
    assert layout == ["2", "9", "10", "11", "12"]
    assert source.reconfigurations == 1
    poll_at(source, clock, unit, SWITCH_S + 1.5)  # the new instances' first GPM samples
    later = poll_at(source, clock, unit, SWITCH_S + 2.5)
    assert set(values(later, "gpumon_mig_sm_active_ratio")) == {"2", "9", "10", "11", "12"}
    assert values(later, "gpumon_mig_sm_active_ratio")["12"] == 0.0  # the free one
    assert values(later, "gpumon_mig_compute_processes")["12"] == 0


def test_a_gpu_with_mig_off_says_so_and_nothing_more() -> None:
    source, clock, unit = mig_source(capture=DEMO_CAPTURE)
    slow = poll_at(source, clock, unit, 1.0, Tier.SLOW)
    assert [(n, dict(lb)["state"], v) for s in slow for n, lb, v in s.values] == [
        ("gpumon_mig_mode", "current", 0.0), ("gpumon_mig_mode", "pending", 0.0)]
    (empty,) = poll_at(source, clock, unit, 2.0)  # ends the series of instances there were, if any
    assert empty.tier == "fast" and empty.values == []


def test_a_gpu_without_mig_has_no_series() -> None:
    source, clock, unit = mig_source(Faults(errors=[("nvmlDeviceGetMigMode", None, pynvml.NVML_ERROR_NOT_SUPPORTED)]),
                                     capture=DEMO_CAPTURE)
    assert all(s.values == [] for s in poll_at(source, clock, unit, 1.0, Tier.SLOW))
    assert poll_at(source, clock, unit, 2.0, Tier.SLOW) == []  # not asked again


def test_without_root_placements_are_empty_and_everything_else_is_read() -> None:
    source, clock, unit = mig_source(Faults(errors=[("nvmlDeviceGetGpuInstanceById", None,
                                                     pynvml.NVML_ERROR_NO_PERMISSION)]))
    layout = poll_at(source, clock, unit, 1.0, Tier.SLOW)
    info = [dict(lb) for s in layout for n, lb, _ in s.values if n == "gpumon_mig_instance_info"]
    assert len(info) == 5 and {i["placement"] for i in info} == {""}
    poll_at(source, clock, unit, 2.0)
    assert set(values(poll_at(source, clock, unit, 3.0), "gpumon_mig_sm_active_ratio")) == {"2", "3", "9", "10"}


def test_a_lost_gpu_is_a_lost_unit() -> None:
    source, clock, unit = mig_source(Faults(lost=[(0, 5.0, 10.0)]))
    poll_at(source, clock, unit, 1.0)
    with pytest.raises(UnitLost):
        poll_at(source, clock, unit, 6.0)
    clock.t = 11.0
    source.reopen(unit)
    assert set(values(poll_at(source, clock, unit, 11.0), "gpumon_mig_memory_used_bytes")) == {"2", "3", "9", "10"}



def test_each_process_names_the_gpu_instance_it_runs_in() -> None:
    from gpumon.attribution.owners import Owners
    from gpumon.sources.processes import ProcessSource

    source, clock, _ = mig_source()
    processes = ProcessSource(source.gpus, Owners(), procfs=None)
    (unit,) = processes.open()
    clock.t = 1.0
    (sample,) = processes.poll(unit, Tier.FAST)
    where = {d["pid"]: d["gpu_instance"] for n, labels, _ in sample.values if n == "gpumon_process_info"
             and (d := dict(labels))}
    assert where == {"5101": "2", "5201": "3", "5202": "3", "5301": "9", "5401": "10"}


def test_an_instance_gpm_refuses_is_not_an_instance_gone() -> None:
    """Only the memory call on an instance's handle says it was destroyed: a GPM call that keeps failing
    must not make every poll read the layout again."""
    source, clock, unit = mig_source(Faults(errors=[("nvmlGpmMigSampleGet", None, pynvml.NVML_ERROR_INVALID_ARGUMENT)]))
    layouts = 0
    for t in (1.0, 2.0, 3.0, 4.0):
        samples = poll_at(source, clock, unit, t)
        layouts += sum(1 for s in samples if s.tier == "slow")
        assert set(values(samples, "gpumon_mig_memory_used_bytes")) == {"2", "3", "9", "10"}
        assert values(samples, "gpumon_mig_sm_active_ratio") == {}
    assert layouts == 1 and source.reconfigurations == 0
    errors = source.gpus.error_counts()
    assert errors[("nvmlGpmMigSampleGet", "NVMLError_InvalidArgument")] == 4 * 4  # instances × polls
