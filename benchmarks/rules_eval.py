"""How long one evaluation of the bundled rules takes over a store holding 8 GPUs of history.

    python -m benchmarks.rules_eval [--gpus 8] [--minutes 35] [--rounds 50]

The store is filled by the real nvml source polling the H200 capture (CaptureNvml) once per
simulated second, so series, labels and history are what the daemon holds after that long. Prints
milliseconds per evaluation of all bundled groups (budget: <= 2 ms at 8 GPUs) and per group.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from gpumon.model import Tier
from gpumon.rules.alerting import RuleEngine
from gpumon.rules.promql import Evaluator
from gpumon.rules.rulefile import longest_ranges
from gpumon.rules.service import StoreStorage, load_groups
from gpumon.sources.capture import load_capture
from gpumon.sources.capture_nvml import CaptureNvml
from gpumon.sources.nvml import NvmlSource
from gpumon.sources.replay import DEMO_CAPTURE
from gpumon.store import Store


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def filled_store(gpus: int, minutes: int) -> tuple[Store, float]:
    clock = Clock()
    source = NvmlSource(CaptureNvml(load_capture(DEMO_CAPTURE), gpus=gpus, clock=clock), clock=clock)
    source.open()
    groups = load_groups([])
    history = {name: int(ms / 1000 + 300) + 2 for name, ms in longest_ranges(groups).items()}
    store = Store(600, history)
    start = time.time() - minutes * 60
    for second in range(minutes * 60):
        clock.now = float(second)
        for i in range(gpus):
            for tier in (Tier.FAST,) if second % 30 else (Tier.FAST, Tier.SLOW):
                sample = source.read(i, tier)
                sample.timestamp = start + second
                store.put(sample)
    return store, start + minutes * 60


def run(gpus: int, minutes: int, rounds: int) -> dict[str, float]:
    store, now = filled_store(gpus, minutes)
    groups = load_groups([])
    engine = RuleEngine(groups, Evaluator(StoreStorage(store)), lambda *a: None)
    per_group: dict[str, list[float]] = {g.name: [] for g in groups}
    totals = []
    for r in range(rounds):
        t_ms = round((now + r) * 1000)
        total = 0.0
        for g in groups:
            t0 = time.perf_counter()
            engine.eval_group(g, t_ms)
            spent = time.perf_counter() - t0
            per_group[g.name].append(spent)
            total += spent
        totals.append(total)
    result = {"gpus": gpus, "series": sum(1 for _ in store.series()),
              "eval_ms_median": statistics.median(totals) * 1000,
              "eval_ms_p90": sorted(totals)[int(0.9 * len(totals))] * 1000}
    for name, times in per_group.items():
        result[f"group_ms_median[{name}]"] = statistics.median(times) * 1000
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--minutes", type=int, default=35, help="history to fill (the longest rule range is 30m)")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.gpus, args.minutes, args.rounds)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:45} {value:10.3f}" if isinstance(value, float) else f"{key:45} {value:10}")


if __name__ == "__main__":
    main()
