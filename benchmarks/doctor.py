"""What the doctor's checks cost the slow tier: `DoctorService.on_round` per GPU, on the store a round
of the nvml and process sources leaves for the bundled H200 capture fanned out to `gpus` GPUs (two
slow rounds of history; this host's kernel log read as the daemon reads it, new records only).

    python -m benchmarks.doctor [--gpus 8] [--rounds 200]

Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.report import percentile
from gpumon.attribution.owners import Owners
from gpumon.doctor.service import DoctorService
from gpumon.model import Tier
from gpumon.rounds import Round
from gpumon.sampler import Intervals, Sampler
from gpumon.sources.capture import load_capture
from gpumon.sources.capture_nvml import CaptureNvml
from gpumon.sources.nvml import NvmlSource
from gpumon.sources.processes import ProcessSource
from gpumon.sources.replay import DEMO_CAPTURE
from gpumon.store import Store


async def measure(gpus: int, rounds: int) -> dict[str, Any]:
    store = Store(100)
    nvml = NvmlSource(CaptureNvml(load_capture(DEMO_CAPTURE), gpus=gpus))
    sampler = Sampler([nvml, ProcessSource(nvml, Owners(), procfs=None)], store, Intervals(1.0, 30.0))
    await sampler.open()
    await sampler.poll_round(Tier.STATIC)
    await sampler.poll_round(Tier.SLOW)
    await asyncio.sleep(0.15)  # GPM needs two samples 100 ms apart
    await sampler.poll_round(Tier.FAST)
    await sampler.poll_round(Tier.SLOW)  # history for the counters' increase (clocks held down recently)
    await sampler.stop()
    service = DoctorService(store, lambda: nvml.devices, replayed=False, sysfs=Path("/sys"))
    walls = []
    for _ in range(rounds + 1):
        t0 = time.perf_counter()
        service.on_round(Round(Tier.SLOW.value, time.time(), True))
        walls.append(time.perf_counter() - t0)
    per_gpu = [w / gpus * 1e6 for w in walls[1:]]
    return {"gpus": gpus, "rounds": rounds, "slow_round_us_per_gpu_median": statistics.median(per_gpu),
            "slow_round_us_per_gpu_p90": percentile(per_gpu, 0.9)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.gpus, args.rounds))))


if __name__ == "__main__":
    main()
