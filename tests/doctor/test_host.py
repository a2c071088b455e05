"""The host checks' costs in the daemon's slow rounds: which PCI devices are NVIDIA GPUs is kept between
rounds (each device's vendor read ~20 µs on sysfs), the drivers they are bound to read each round; the
mapped libraries of processes started together are re-read in different rounds."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from gpumon.doctor import host
from gpumon.doctor.checks import Verdict
from gpumon.model import Device


def pci_device(sysfs: Path, address: str, vendor: str = "0x10de", klass: str = "0x030200",
               driver: str | None = "nvidia") -> Path:
    d = sysfs / "bus" / "pci" / "devices" / address
    d.mkdir(parents=True)
    (d / "vendor").write_text(vendor + "\n")
    (d / "class").write_text(klass + "\n")
    if driver:
        drivers = sysfs / "bus" / "pci" / "drivers" / driver
        drivers.mkdir(parents=True, exist_ok=True)
        (d / "driver").symlink_to(os.path.relpath(drivers, d))
    return d


def test_the_pci_scan_reads_vendors_again_only_when_the_bus_changes_or_after_ten_minutes(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    gpu = pci_device(sysfs, "0000:18:00.0")
    for i in range(20):  # a server's other devices
        pci_device(sysfs, f"0000:{i + 0x40:02x}:00.0", vendor="0x8086", klass="0x060400", driver="pcieport")
    now = [0.0]
    scan = host.PciScan(sysfs, clock=lambda: now[0])
    assert scan.addresses() == ["0000:18:00.0"] and scan.scans == 1
    other = sysfs / "bus" / "pci" / "devices" / "0000:40:00.0"  # now an NVIDIA GPU bound to none: not read again
    (other / "vendor").write_text("0x10de\n")
    (other / "class").write_text("0x030200\n")
    (other / "driver").unlink()
    now[0] = 300.0
    assert scan.addresses() == ["0000:18:00.0"] and scan.scans == 1
    # The binding is read every round: a GPU given to vfio-pci is not NVML's to see, at once.
    (gpu / "driver").unlink()
    (sysfs / "bus" / "pci" / "drivers" / "vfio-pci").mkdir()
    (gpu / "driver").symlink_to(os.path.relpath(sysfs / "bus" / "pci" / "drivers" / "vfio-pci", gpu))
    assert scan.addresses() == [] and scan.scans == 1
    (gpu / "driver").unlink()  # bound to none: failed to initialise, should be seen
    assert scan.addresses() == ["0000:18:00.0"]
    now[0] = host.PciScan.RESCAN_S
    assert scan.addresses() == ["0000:18:00.0", "0000:40:00.0"] and scan.scans == 2  # ten minutes: read again
    pci_device(sysfs, "0000:3a:00.0")  # hotplug: a device more, read again at once
    assert scan.addresses() == ["0000:18:00.0", "0000:3a:00.0", "0000:40:00.0"] and scan.scans == 3
    devices = [Device(i, f"GPU-{i}", "NVIDIA H200", bus, "hopper", True, "580", "13.0")
               for i, bus in enumerate(("00000000:18:00.0", "00000000:3A:00.0"))]
    missing = host.gpus_missing(devices, scan, replayed=False)
    assert missing.verdict is Verdict.FAIL and missing.evidence["missing"] == ["0000:40:00.0"] and scan.scans == 3


def test_processes_started_together_are_reread_in_different_rounds() -> None:
    class Procfs:
        def __init__(self) -> None:
            self.reads: dict[int, list[float]] = {}

        def start_time(self, pid: int) -> int:
            return 100

        def libraries(self, pid: int) -> dict[str, str]:
            self.reads.setdefault(pid, []).append(now[0])
            return {"cudart": "12.4"}

    now = [0.0]
    procfs = Procfs()
    libraries = host.MappedLibraries(procfs, clock=lambda: now[0])  # type: ignore[arg-type]
    ranks = range(31000, 31008)  # one job's eight ranks, consecutive PIDs
    while now[0] <= 3600:  # an hour of 30-second slow rounds
        for pid in ranks:
            libraries.libraries(pid)
        libraries.next_round()
        now[0] += 30
    rereads = {pid: times[1] for pid, times in procfs.reads.items()}
    assert len(set(rereads.values())) >= 5  # not all in one round
    for pid, times in procfs.reads.items():  # read at start, then every 10 to 15 minutes while it runs
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(times) >= 5 and all(600 <= g <= 900 + 30 for g in gaps), (pid, gaps)
        assert len(set(gaps)) == 1  # the same interval each time for one PID


def test_the_daemon_keeps_its_pci_scan_between_rounds(tmp_path: Path) -> None:
    import time

    from gpumon.doctor.service import DoctorService
    from gpumon.rounds import Round
    from gpumon.store import Store

    pci_device(tmp_path / "sys", "0000:18:00.0")
    device = Device(0, "GPU-0", "NVIDIA H200", "00000000:18:00.0", "hopper", True, "580", "13.0")
    service = DoctorService(Store(10), lambda: [device], replayed=False, sysfs=tmp_path / "sys",
                            kmsg=tmp_path / "kmsg")
    for _ in range(3):
        service.on_round(Round("slow", time.time(), True))
    assert service.pci.scans == 1
