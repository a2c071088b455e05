"""/metrics of a replayed capture at a fixed replay time, series by series, against a recorded
exposition (`tests/fixtures/exposition/replay.txt`), first recorded before the redesign of issue 14
(which changed the code's shape, not what a scraper sees) and since re-recorded only for deliberate
changes, each in the commit that made it. Values that depend on the wall clock or the machine (poll
durations, timestamps) are compared by presence only.

To record the file again after a deliberate change to the exposition:
    GPUMON_RECORD_EXPOSITION=1 .venv/bin/pytest tests/test_exposition_golden.py
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gpumon.attribution.owners import Owners
from gpumon.exporter import Exporter
from gpumon.health import Health
from gpumon.model import Tier
from gpumon.sampler import Intervals, Sampler
from gpumon.sources.capture import load_capture
from gpumon.sources.capture_nvml import CaptureNvml
from gpumon.sources.infiniband import InfinibandSource
from gpumon.sources.mig import MigSource
from gpumon.sources.processes import ProcessSource
from gpumon.sources.replay import DEMO_CAPTURE, ReplaySource
from gpumon.store import Store
from tests.support.clock import FakeClock
from tools.ibsysfs import build_connectx

GOLDEN = Path(__file__).parent / "fixtures" / "exposition" / "replay.txt"
VOLATILE = frozenset({"gpumon_poll_duration_seconds", "gpumon_gpu_poll_duration_seconds",
                      "gpumon_last_poll_success_timestamp_seconds", "gpumon_log_messages_suppressed_total"})
FAST_ROUNDS = 12  # 12 s into the capture: the idle phase, GPM values and counters all present


async def exposition(tmp: Path) -> list[str]:
    """One line per series, `name{labels} value`, sorted; volatile values as `*`."""
    clock = FakeClock(1000.0)
    nvml = CaptureNvml(load_capture(DEMO_CAPTURE), gpus=2, clock=clock)
    source = ReplaySource(nvml, backend="replay", clock=clock)
    fabric = build_connectx(tmp)
    infiniband = InfinibandSource(fabric.ib_root, gpus=lambda: source.devices, pci_root=fabric.pci_root)
    processes = ProcessSource(source, Owners(), procfs=None)  # as build_backend makes it for a replay
    mig = MigSource(source)
    exporter = Exporter(process_metrics=False)
    sampler = Sampler([source, mig, processes, infiniband], Store(100), Intervals(1.0, 30.0), health=Health())
    exporter.follow(sampler.rounds, sampler.fresh)
    try:
        await sampler.open()
        for _ in range(FAST_ROUNDS):
            clock.advance(1.0)
            await sampler.poll_round(Tier.FAST)
        await sampler.poll_round(Tier.SLOW)
        body = exporter.body(False, False).decode()
    finally:
        await sampler.stop()
    lines = []
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            value = "*" if family.name in VOLATILE or s.name in VOLATILE else repr(s.value)
            lines.append(f"{s.name}{{{labels}}} {value}")
    return sorted(lines)


async def test_the_exposition_is_what_was_recorded(tmp_path: Path) -> None:
    got = await exposition(tmp_path)
    if os.environ.get("GPUMON_RECORD_EXPOSITION"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text("\n".join(got) + "\n")
    want = GOLDEN.read_text().splitlines()
    assert len(want) > 200  # the capture's GPUs, the fabric's ports, gpumon's own health
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not extra, f"missing: {missing[:20]}\nextra: {extra[:20]}"
