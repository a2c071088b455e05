"""What the doctor's checks cost the slow tier: `DoctorService.on_round` per GPU, on the store a round
of the nvml and process sources leaves for the bundled H200 capture fanned out to `gpus` GPUs (two
slow rounds of history; this host's kernel log read as the daemon reads it, new records only). The
first round, which reads the whole kernel log (at most ROUND_RECORDS records of it) and scans the PCI
bus, is reported apart from the steady rounds. `--kmsg-records N` reads a saved log of N records
instead of this host's, `--pci-devices N` a fake sysfs of N PCI devices (8 of them NVIDIA GPUs) instead
of this host's /sys; the PCI scan's cost is also measured alone, uncached and as the daemon keeps it.

    python -m benchmarks.doctor [--gpus 8] [--rounds 200] [--kmsg-records 150000] [--pci-devices 300]

Prints JSON.
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
from gpumon.attribution.owners import Owners
from gpumon.doctor import host, kernel_log
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

NVIDIA_GPUS = 8


async def measure(gpus: int, rounds: int, *, kmsg_records: int = 0, pci_devices: int = 0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        kmsg = _saved_log(Path(tmp) / "kmsg", kmsg_records) if kmsg_records else kernel_log.KMSG
        sysfs = _fake_sysfs(Path(tmp) / "sys", pci_devices) if pci_devices else Path("/sys")
        return await _measure(gpus, rounds, kmsg, sysfs)


async def _measure(gpus: int, rounds: int, kmsg: Path, sysfs: Path) -> dict[str, Any]:
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
    service = DoctorService(store, lambda: nvml.devices, replayed=False, sysfs=sysfs, kmsg=kmsg)
    walls = []
    catch_up_rounds = None
    for i in range(rounds + 1):
        t0 = time.perf_counter()
        service.on_round(Round(Tier.SLOW.value, time.time(), True))
        walls.append(time.perf_counter() - t0)
        if catch_up_rounds is None and service.xids is not None and service.xids.caught_up:
            catch_up_rounds = i + 1
    log = service.xids.log if service.xids is not None else None
    # The rounds that still read the backlog are first rounds too: the steady cost is after them.
    steady = walls[max(1, catch_up_rounds or 1):]
    per_gpu = [w / gpus * 1e6 for w in steady]
    return {"gpus": gpus, "rounds": len(steady), "slow_round_us_per_gpu_median": statistics.median(per_gpu),
            "slow_round_us_per_gpu_p90": percentile(per_gpu, 0.9),
            "first_round_ms": walls[0] * 1e3, "kmsg": str(kmsg),
            "kmsg_records": log.records_read if log is not None else 0,
            "kmsg_rounds_to_read": catch_up_rounds,  # None: unreadable, or not all read in `rounds`
            "kmsg_round_records": kernel_log.ROUND_RECORDS,
            "backlog_round_ms_max": max(walls[:catch_up_rounds or 1]) * 1e3,
            **_pci_scan(sysfs)}


def _pci_scan(sysfs: Path, repeats: int = 200) -> dict[str, Any]:
    """The PCI scan alone: read whole each time (as before it was kept) and as the daemon keeps it."""
    t0 = time.perf_counter()
    for _ in range(repeats):
        found = host.PciScan(sysfs).addresses()
    uncached = (time.perf_counter() - t0) / repeats
    scan = host.PciScan(sysfs)
    scan.addresses()
    t0 = time.perf_counter()
    for _ in range(repeats):
        scan.addresses()
    cached = (time.perf_counter() - t0) / repeats
    devices = sysfs / "bus" / "pci" / "devices"
    return {"pci_devices": len(list(devices.iterdir())) if devices.is_dir() else 0, "pci_gpus": len(found),
            "pci_scan_us_uncached": uncached * 1e6, "pci_scan_us_cached": cached * 1e6}


def _saved_log(path: Path, records: int) -> Path:
    """A kernel log of `records` records as /dev/kmsg writes them (one XID per thousand), wrapped."""
    with path.open("w") as f:
        for i in range(records):
            us = 1_000_000 + i * 1000
            if i % 1000 == 999:
                f.write(f"4,{10_000 + i},{us},-;NVRM: Xid (PCI:0000:18:00): 13, pid={i}, name=python, "
                        "Graphics SM Warp Exception on (GPC 0, TPC 1, SM 0)\n"
                        " SUBSYSTEM=pci\n DEVICE=+pci:0000:18:00.0\n")
            else:
                f.write(f"6,{10_000 + i},{us},-;eth0: link up, 100Gbps, full duplex, flow control rx/tx {i}\n")
    return path


def _fake_sysfs(sysfs: Path, devices: int) -> Path:
    """`devices` PCI devices, NVIDIA_GPUS of them NVIDIA GPUs bound to nvidia, the rest bridges and NICs."""
    drivers = sysfs / "bus" / "pci" / "drivers"
    for i in range(devices):
        gpu = i < NVIDIA_GPUS
        d = sysfs / "bus" / "pci" / "devices" / f"0000:{i // 32:02x}:{i % 32:02x}.0"
        d.mkdir(parents=True)
        (d / "vendor").write_text("0x10de\n" if gpu else "0x8086\n")
        (d / "class").write_text("0x030200\n" if gpu else "0x060400\n")
        driver = drivers / ("nvidia" if gpu else "pcieport")
        driver.mkdir(parents=True, exist_ok=True)
        (d / "driver").symlink_to(driver)
    return sysfs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--kmsg-records", type=int, default=0, help="a saved kernel log of N records")
    parser.add_argument("--pci-devices", type=int, default=0, help="a fake sysfs of N PCI devices")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.gpus, args.rounds, kmsg_records=args.kmsg_records,
                                         pci_devices=args.pci_devices))))


if __name__ == "__main__":
    main()
