"""Checks of the host rather than of one GPU: GPUs on the PCI bus that NVML does not see, the driver
and the CUDA runtimes the GPU processes mapped, and the diagnosis layers only the application can see."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from gpumon.attribution.procfs import Procfs
from gpumon.doctor.checks import SERIOUS_XIDS, XID_MEANINGS, Finding, GpuView, Verdict
from gpumon.doctor.kernel_log import XidsSinceBoot
from gpumon.model import Device, Sample

NVIDIA = "0x10de"
GPU_CLASSES = ("0x0300", "0x0302")  # VGA and 3D controllers; NVSwitches are bridges (0x0680)


def nvidia_gpus_on_the_bus(sysfs: Path) -> list[str]:
    """PCI addresses (domain:bus:device.function, lower case) of NVIDIA display and 3D controllers bound to
    the nvidia driver or to none."""
    return PciScan(sysfs).addresses()


class PciScan:
    """The NVIDIA GPUs on the PCI bus, kept between the daemon's slow rounds. Which devices are NVIDIA GPUs
    costs a read of each device's `vendor` (~20 µs on sysfs: 6 ms a round on a server with 300 PCI
    devices), so it is read again only every RESCAN_S, or sooner when the count of devices changes (a
    GPU gone from the bus, hotplug). The driver each GPU is bound to can change without that (unbound,
    given to vfio-pci for a VM): it is read every round, for the GPUs only."""

    RESCAN_S = 600.0

    def __init__(self, sysfs: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.sysfs = sysfs
        self.devices = sysfs / "bus" / "pci" / "devices"
        self.clock = clock
        self._gpus: list[str] | None = None
        self._count = -1
        self._scanned_at = 0.0
        self.scans = 0  # how many times the vendors were read (tests, benchmarks)

    def addresses(self) -> list[str]:
        try:
            count = len(os.listdir(self.devices))
        except OSError:
            return []
        now = self.clock()
        if self._gpus is None or count != self._count or now - self._scanned_at >= self.RESCAN_S:
            self._gpus, self._count, self._scanned_at = self._scan(), count, now
        # A GPU bound to another driver (vfio-pci for a VM, an SR-IOV function) is not NVML's to see;
        # one bound to none failed to initialise, and one bound to nvidia should be seen.
        return [name for name in self._gpus if _driver(self.devices / name) in ("", "nvidia")]

    def _scan(self) -> list[str]:
        self.scans += 1
        found = []
        try:
            entries = sorted(os.listdir(self.devices))
        except OSError:
            return []
        for name in entries:
            entry = self.devices / name
            try:  # the class only of NVIDIA's devices: a server has hundreds of others
                if (entry / "vendor").read_text().strip().lower() != NVIDIA:
                    continue
                klass = (entry / "class").read_text().strip().lower()
            except OSError:
                continue
            if klass.startswith(GPU_CLASSES):
                found.append(name.lower())
        return found


def _driver(entry: Path) -> str:
    """The driver the device is bound to ("" for none): the `driver` link's last component, one readlink
    (exists() and realpath() cost three times as much)."""
    try:
        return os.path.basename(os.readlink(entry / "driver"))
    except OSError:
        return ""


def _address(bus_id: str) -> str:
    """NVML's "00000000:18:00.0" ("%08x" domain) as sysfs and the driver's log name it, "0000:18:00.0" ("%04x":
    four digits, more behind a VMD controller, where NVML's "00010000:e1:00.0" is "10000:e1:00.0")."""
    domain, _, rest = bus_id.lower().partition(":")
    try:
        return f"{int(domain, 16):04x}:{rest}"
    except ValueError:  # not NVML's format: compared as it is
        return bus_id.lower()


def gpus_missing(devices: list[Device], bus: Path | PciScan, replayed: bool) -> Finding:
    """`bus`: the sysfs root (read whole), or the daemon's scan kept between rounds."""
    check = "hardware.gpus_missing"
    if replayed:
        return Finding(check, Verdict.NOT_APPLICABLE, "replayed GPUs are not this host's: the PCI bus is not compared",
                       {"nvml_gpus": len(devices)})
    scan = bus if isinstance(bus, PciScan) else PciScan(bus)
    sysfs = scan.sysfs
    on_bus = scan.addresses()
    seen = {_address(d.pci_bus_id) for d in devices if d.pci_bus_id}
    missing = [a for a in on_bus if a not in seen]
    evidence = {"nvml_gpus": len(devices), "pci_gpus": len(on_bus), "missing": missing}
    if not on_bus:
        return Finding(check, Verdict.NOT_APPLICABLE, f"no NVIDIA GPU listed in {sysfs}/bus/pci/devices", evidence)
    if missing:
        return Finding(check, Verdict.FAIL, f"{len(missing)} GPU(s) on the PCI bus that NVML does not see: "
                       + ", ".join(missing), evidence,
                       "A GPU fell off the bus or failed to initialise: check `dmesg` for XID 79 or NVRM errors, "
                       "then drain the node and power-cycle it.")
    return Finding(check, Verdict.OK, f"all {len(on_bus)} NVIDIA GPU(s) on the PCI bus are seen by NVML", evidence)


XID_RECENT_S = 3600.0


def kernel_xids(devices: list[Device], xids: XidsSinceBoot | None, now_since_boot: float) -> Finding:
    """XIDs in the kernel log since boot (or since its oldest record, where the ring buffer wrapped),
    each explained: a serious one in the last hour fails, one earlier (or a benign one in the last hour)
    warns. Covers the time before gpumon started and GPUs NVML no longer sees, which the per-GPU
    `hardware.xid` (NVML's events while gpumon listens) cannot."""
    check = "hardware.xid_since_boot"
    if xids is None:
        return Finding(check, Verdict.NOT_APPLICABLE, "replayed GPUs are not this host's: the kernel log is not read")
    if xids.unreadable:
        return Finding(check, Verdict.NOT_APPLICABLE, f"kernel log not readable: {xids.unreadable}")
    index = {_address(d.pci_bus_id).rpartition(".")[0]: d.index for d in devices if d.pci_bus_id}  # no function
    listed: list[dict[str, Any]] = []
    for (pci, xid), tally in sorted(xids.seen.items(), key=lambda kv: -kv[1].last_seconds_since_boot):
        listed.append({"gpu": index.get(pci), "pci": pci, "xid": xid, "count": tally.count,
                       "seconds_ago": round(max(0.0, now_since_boot - tally.last_seconds_since_boot)),
                       "meaning": XID_MEANINGS.get(str(xid), "see NVIDIA's XID catalogue"), "text": tally.text})
    evidence: dict[str, Any] = {"xids": listed}
    oldest = xids.oldest_seconds_since_boot
    since = "since boot"
    if oldest is not None:  # the ring buffer wrapped: what came before its oldest record is gone
        evidence["oldest_record_seconds_ago"] = round(max(0.0, now_since_boot - oldest))
        since = f"since {_ago(evidence['oldest_record_seconds_ago'])} (older records were overwritten)"
    if xids.log.overruns:
        evidence["overwritten_while_reading"] = xids.log.overruns  # gaps after the oldest record too
    if not xids.caught_up:  # the daemon's first rounds read a large ring in parts
        evidence["records_read"] = xids.log.records_read
        if not listed:
            return Finding(check, Verdict.NOT_APPLICABLE, f"reading the kernel log: {xids.log.records_read} "
                           "records so far, no XID in them", evidence)
    if not listed:
        return Finding(check, Verdict.OK, f"no XID in the kernel log {since}", evidence)
    recent = [x for x in listed if x["seconds_ago"] <= XID_RECENT_S]
    serious = [x for x in listed if str(x["xid"]) in SERIOUS_XIDS]
    worst = next((x for x in recent if x in serious), None) or (serious or recent or listed)[0]
    where = f"GPU {worst['gpu']}" if worst["gpu"] is not None else f"{worst['pci']} (not seen by NVML)"
    when = _ago(worst["seconds_ago"])
    summary = f"XID {worst['xid']} on {where} {when}: {worst['meaning']}"
    if len(listed) > 1:
        summary += f" (+{len(listed) - 1} more kinds)"
    step = SERIOUS_XIDS.get(str(worst["xid"]), "Most XIDs point at the application: check the job's log at "
                            "that time; repeated ones on one GPU point at the GPU.")
    if worst in serious and worst in recent:
        return Finding(check, Verdict.FAIL, summary, evidence, step)
    if worst in serious or worst in recent:
        return Finding(check, Verdict.WARN, summary, evidence, step)
    if not xids.caught_up:  # an older one read so far says nothing of what the rest of the log holds
        return Finding(check, Verdict.NOT_APPLICABLE, f"reading the kernel log: {xids.log.records_read} records "
                       f"so far; latest XID in them: {summary}", evidence)
    return Finding(check, Verdict.OK, f"only older application XIDs {since}; latest: {summary}", evidence)


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.0f} h ago"


def driver(devices: list[Device]) -> Finding:
    versions = sorted({d.driver_version for d in devices if d.driver_version})
    cuda = sorted({d.cuda_driver_version for d in devices if d.cuda_driver_version})
    evidence = {"driver": versions, "cuda_supported": cuda}
    if not versions:
        return Finding("driver.version", Verdict.NOT_APPLICABLE, "driver version not readable", evidence)
    return Finding("driver.version", Verdict.OK, f"driver {', '.join(versions)}, supports CUDA up to "
                   f"{', '.join(cuda) or 'unknown'}", evidence)


def application_layers() -> Finding:
    return Finding("application.algorithm_and_data", Verdict.NOT_APPLICABLE,
                   "algorithm (gradient norms) and data (input drift) live inside the application: publish them "
                   "beside gpumon's metrics (docs/doctor.md, rules/examples/)")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


class LibraryReader(Protocol):
    def libraries(self, pid: int) -> dict[str, str] | None: ...


class MappedLibraries:
    """The daemon's reader of each GPU process's mapped CUDA libraries: a PyTorch process's maps run to
    about 1 MB, so each process is read when first seen, again every REREAD_S to REREAD_S × (1 +
    REREAD_JITTER) for as long as it runs (NCCL is loaded when the process group starts, after CUDA, and
    a process may load another library later), and again when its PID names a new process. The interval
    is fixed per PID: the ranks of a job start together, and would otherwise all be re-read in the same
    round, every time. Entries of processes gone from the GPUs are dropped at the next round."""

    REREAD_S = 600.0
    REREAD_JITTER = 0.5

    def __init__(self, procfs: Procfs, clock: Callable[[], float] = time.monotonic) -> None:
        self.procfs = procfs
        self.clock = clock
        self._known: dict[int, tuple[int, float, dict[str, str] | None]] = {}  # pid -> (start, read at, libs)
        self._used: set[int] = set()

    def libraries(self, pid: int) -> dict[str, str] | None:
        self._used.add(pid)
        start, now = self.procfs.start_time(pid), self.clock()
        if start is None:
            return None
        known = self._known.get(pid)
        if known is not None and known[0] == start and now - known[1] < self.reread_after(pid):
            return known[2]
        libraries = self.procfs.libraries(pid)
        self._known[pid] = (start, now, libraries)
        return libraries

    def reread_after(self, pid: int) -> float:
        """REREAD_S stretched by a share of REREAD_JITTER that Knuth's multiplicative hash gives the PID:
        consecutive PIDs (ranks started together) land far apart."""
        share = (pid * 2654435761) % 2**32 / 2**32
        return self.REREAD_S * (1 + self.REREAD_JITTER * share)

    def next_round(self) -> None:
        for pid in self._known.keys() - self._used:
            del self._known[pid]
        self._used = set()


def cuda_runtime(views: list[GpuView], devices: list[Device], procfs: LibraryReader | None,
                 unavailable: str = "replayed processes are not this host's: /proc is not read") -> Finding:
    """Each GPU process's mapped CUDA runtime against the CUDA version the driver supports (a runtime of
    a newer major fails with "CUDA driver version is insufficient"; a newer minor runs on minor-version
    compatibility without the newer features), and NCCL versions that differ within one owner's processes.
    `procfs` None: not applicable, for the reason `unavailable` gives."""
    check = "driver.cuda_runtime"
    if procfs is None:
        return Finding(check, Verdict.NOT_APPLICABLE, unavailable)
    driver = max((_version(d.cuda_driver_version) for d in devices if d.cuda_driver_version), default=())
    processes: dict[str, str] = {}  # pid -> owner
    for view in views:
        for labels, _ in view.values("gpumon_process_info"):
            owner = (f"pod {labels.get('owner_namespace')}/{labels.get('owner_pod')}" if labels.get("owner_pod")
                     else f"job {labels['job_id']}" if labels.get("job_id") else f"pid {labels['pid']}")
            processes[labels["pid"]] = owner
    runtimes: dict[str, dict[str, str]] = {}
    unreadable = []
    for pid in sorted(processes, key=int):
        libraries = procfs.libraries(int(pid))
        if libraries is None:
            unreadable.append(pid)
        elif libraries:
            runtimes[pid] = libraries
    evidence = {"driver_cuda": ".".join(map(str, driver)) or None, "processes": runtimes, "unreadable": unreadable}
    if not runtimes:
        why = "no GPU process maps a CUDA runtime" if not unreadable else \
            f"the maps of {len(unreadable)} GPU process(es) are not readable (another user's: CAP_SYS_PTRACE)"
        return Finding(check, Verdict.NOT_APPLICABLE, why, evidence)
    newer_major = [pid for pid, lib in runtimes.items()
                   if "cudart" in lib and driver and _version(lib["cudart"])[:1] > driver[:1]]
    newer_minor = [pid for pid, lib in runtimes.items() if "cudart" in lib and driver
                   and _version(lib["cudart"])[:1] == driver[:1] and _version(lib["cudart"])[:2] > driver[:2]]
    driver_text = evidence["driver_cuda"]
    if newer_major:
        pid = newer_major[0]
        return Finding(check, Verdict.FAIL, f"pid {pid} ({processes[pid]}) maps CUDA runtime "
                       f"{runtimes[pid]['cudart']}, the driver supports CUDA {driver_text}: 'CUDA driver version is "
                       "insufficient'", evidence,
                       "Upgrade the driver on this host, or run the job's image built for the driver's CUDA.")
    nccl: dict[str, set[str]] = {}
    for pid, lib in runtimes.items():
        if "nccl" in lib:
            nccl.setdefault(processes[pid], set()).add(lib["nccl"])
    mixed = {owner: sorted(v) for owner, v in nccl.items() if len(v) > 1}
    if mixed:
        owner, versions = next(iter(sorted(mixed.items())))
        return Finding(check, Verdict.WARN, f"{owner} runs NCCL {' and '.join(versions)} in different processes",
                       evidence, "Build every rank from one image: mixed NCCL versions hang or fail in collectives.")
    if newer_minor:
        pid = newer_minor[0]
        return Finding(check, Verdict.WARN, f"pid {pid} maps CUDA runtime {runtimes[pid]['cudart']}, newer than the "
                       f"driver's CUDA {driver_text}: it runs on minor-version compatibility, without the newer "
                       "features", evidence, "Upgrade the driver if the job needs the newer CUDA's features or PTX.")
    return Finding(check, Verdict.OK, f"{len(runtimes)} GPU process(es) map a CUDA runtime the driver "
                   f"(CUDA {driver_text}) supports", evidence)


def infiniband(samples: Iterable[Sample]) -> Finding:
    """RDMA ports down, or running below the best rate or width of their kind on this host (a port of
    an 8 × 400G node at 200G, or trained at 2X, halves that rail's collectives)."""
    check = "interconnect.infiniband"
    ports: dict[str, dict[str, Any]] = {}
    for sample in samples:
        for name, labels, value in sample.values:
            if name in _IB_READ:
                d = dict(labels)
                port = ports.setdefault(f"{d['device']}/{d['port']}", {})
                if name == "gpumon_ib_port_info":
                    port["kind"] = (d.get("hca_type", ""), d.get("link_layer", ""))
                else:
                    port[_IB_READ[name]] = value
    if not ports:
        return Finding(check, Verdict.NOT_APPLICABLE, "no RDMA port")
    evidence: dict[str, Any] = {p: {k: v for k, v in f.items() if k != "kind"} for p, f in sorted(ports.items())}
    down = sorted(p for p, f in ports.items() if f.get("up") == 0)
    best: dict[Any, tuple[float, float]] = {}  # kind -> (best rate, best width) of its ports that are up
    for f in ports.values():
        if f.get("up") == 1:
            rate, width = best.get(f.get("kind"), (0.0, 0.0))
            best[f.get("kind")] = (max(rate, f.get("rate", 0.0)), max(width, f.get("width", 0.0)))
    # Against ports of the same kind only: a 1X RoCE port or a 2X split port is not degraded by itself.
    slow = sorted(p for p, f in ports.items() if f.get("up") == 1
                  and (f.get("rate", 0.0) < best[f.get("kind")][0] or f.get("width", 0.0) < best[f.get("kind")][1]))
    if slow:
        return Finding(check, Verdict.WARN, "RDMA port(s) below the best rate or width of their kind: "
                       + ", ".join(slow), evidence,
                       "Reseat or replace the cable or transceiver; check the switch port's speed setting.")
    if down:
        return Finding(check, Verdict.WARN, f"RDMA port(s) down: {', '.join(down)}", evidence,
                       "If the port is cabled: cable, switch port, subnet manager (an unused port reads down too).")
    return Finding(check, Verdict.OK, f"{len(ports)} RDMA port(s) up at their kind's best rate", evidence)


_IB_READ = {"gpumon_ib_port_info": "info", "gpumon_ib_port_up": "up", "gpumon_ib_port_rate_bytes_per_second": "rate",
            "gpumon_ib_port_width_lanes": "width"}
