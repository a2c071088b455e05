"""What accounting adds to a poll: the time `AccountingService.on_round` takes on the event loop per
GPU (reading the round's samples, integrating, building the counters' sample), and the CPU of its
state-file writes on their own thread.

    python -m benchmarks.accounting [--gpus 8] [--rounds 300]

The store holds what a round of the nvml and process sources leaves there for the bundled H200 capture
fanned out to `gpus` GPUs, with a pod owning each GPU's processes; each measured round moves the
samples' timestamps one second on, as a poll would, and waits for the round's write (which a daemon's
writer thread finishes well within the second between polls). Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.report import percentile
from gpumon.accounting.service import AccountingService
from gpumon.attribution.owners import Owners
from gpumon.config import AccountingConfig
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
    await sampler.poll_round(Tier.SLOW)
    await asyncio.sleep(0.15)  # GPM needs two samples 100 ms apart
    await sampler.poll_round(Tier.FAST)
    await sampler.stop()
    with tempfile.TemporaryDirectory(prefix="gpumon-bench-accounting-") as state:
        service = AccountingService(store, AccountingConfig(), Path(state), fast_interval_s=1.0, slow_interval_s=30.0)
        service.start()
        samples = store.latest()
        walls: list[float] = []
        c0 = time.process_time()
        for _ in range(rounds + 1):
            for s in samples:  # the next poll's samples: one second later
                s.timestamp += 1.0
            t0 = time.perf_counter()
            service.on_round(Round(Tier.FAST.value, time.time(), True))
            walls.append(time.perf_counter() - t0)
            if service.last_write is not None:  # in a daemon the write ends long before the next poll:
                service.last_write.result()  # don't time the loop against its GIL
        cpu = time.process_time() - c0
        series = len(store.latest_by_gpu()[0])
        await service.stop()
    per_gpu = [w / gpus * 1e6 for w in walls[1:]]  # round 0 only starts the integration
    return {"gpus": gpus, "rounds": rounds, "loop_us_per_gpu_median": statistics.median(per_gpu),
            "loop_us_per_gpu_p90": percentile(per_gpu, 0.9),
            "cpu_us_per_gpu_with_writes": cpu / (rounds + 1) / gpus * 1e6, "samples_per_gpu": series}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.gpus, args.rounds))))


if __name__ == "__main__":
    main()
