"""The InfiniBand/RoCE source: port counters, link state and GPU-to-NIC affinity from sysfs.

Reads `/sys/class/infiniband/<device>/ports/<port>/` and `<device>/hw_counters/` (the root is a
parameter, so tests point it at a tree built by `tools/ibsysfs.py`). `poll()` is synchronous; the
sampler runs it in its own thread. One fast-tier `Sample` per port (unit `ib:<device>:<port>`) every
poll, one slow-tier `Sample` per port every `slow_interval`, and one fast-tier `Sample` per device
with device-level hw_counters (unit `ib:<device>`). Which tier a counter is read in is the catalog's.

Counters are exported as running totals that never go backwards. How a raw value can go down depends
on where it comes from (see docs/interconnect.md, "Counter widths, saturation and resets"):

- `counters/` and `counters_ext/` are the PMA's PortCounters / PortCountersExtended. They **saturate**
  at all-ones and never wrap (IBA 16.1.3.5; OpenSM's PerfMgr relies on it), and go down only when
  cleared (PerfMgr clears them once one passes 75 % of its range, `perfquery -R`, a driver reload). A
  decrease is a reset: the new raw value is what was counted since. A counter pinned at its maximum
  counts nothing, which is true of the total and wrong about the traffic, so it is flagged in
  `gpumon_ib_port_pma_saturated`.
- mlx5's `hw_counters/` Q counters are read as 32-bit values (QUERY_Q_COUNTER) and wrap; the other
  hw counters are 64-bit. A decrease of a 32-bit one is a wrap when the forward distance is small,
  otherwise a reset.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from gpumon import catalog
from gpumon.model import Device, Labels, Sample, Tier
from gpumon.sources.base import Schedule, Unit, UnitHealth

log = structlog.get_logger("gpumon.infiniband")

DEFAULT_ROOT = "/sys/class/infiniband"
DEFAULT_PCI_ROOT = "/sys/bus/pci/devices"

# counters/<file> -> (metric, scale, PortCounters width), as drivers/infiniband/core/sysfs.c declares them.
PMA_COUNTERS: dict[str, tuple[str, float, int]] = {
    "port_xmit_data": ("gpumon_ib_port_transmit_bytes_total", 4.0, 32),  # 4-byte words
    "port_rcv_data": ("gpumon_ib_port_receive_bytes_total", 4.0, 32),
    "port_xmit_packets": ("gpumon_ib_port_transmit_packets_total", 1.0, 32),
    "port_rcv_packets": ("gpumon_ib_port_receive_packets_total", 1.0, 32),
    "unicast_xmit_packets": ("gpumon_ib_port_transmit_unicast_packets_total", 1.0, 64),  # extended set only
    "unicast_rcv_packets": ("gpumon_ib_port_receive_unicast_packets_total", 1.0, 64),
    "multicast_xmit_packets": ("gpumon_ib_port_transmit_multicast_packets_total", 1.0, 64),
    "multicast_rcv_packets": ("gpumon_ib_port_receive_multicast_packets_total", 1.0, 64),
    "port_xmit_wait": ("gpumon_ib_port_transmit_wait_ticks_total", 1.0, 32),  # 32-bit on every kernel
    "symbol_error": ("gpumon_ib_port_symbol_errors_total", 1.0, 16),
    "link_error_recovery": ("gpumon_ib_port_link_error_recovery_total", 1.0, 8),
    "link_downed": ("gpumon_ib_port_link_downed_total", 1.0, 8),
    "port_rcv_errors": ("gpumon_ib_port_receive_errors_total", 1.0, 16),
    "port_rcv_remote_physical_errors": ("gpumon_ib_port_receive_remote_physical_errors_total", 1.0, 16),
    "port_rcv_switch_relay_errors": ("gpumon_ib_port_receive_switch_relay_errors_total", 1.0, 16),
    "port_xmit_discards": ("gpumon_ib_port_transmit_discards_total", 1.0, 16),
    "port_xmit_constraint_errors": ("gpumon_ib_port_transmit_constraint_errors_total", 1.0, 8),
    "port_rcv_constraint_errors": ("gpumon_ib_port_receive_constraint_errors_total", 1.0, 8),
    "local_link_integrity_errors": ("gpumon_ib_port_local_link_integrity_errors_total", 1.0, 4),
    "excessive_buffer_overrun_errors": ("gpumon_ib_port_excessive_buffer_overrun_errors_total", 1.0, 4),
    "VL15_dropped": ("gpumon_ib_port_vl15_dropped_total", 1.0, 16),
}
# The data/packet counters have a 64-bit PortCountersExtended twin. Since 4.5 the kernel shows it under
# the same counters/ name when the PMA advertises the extended set (the unicast_*/multicast_* files then
# exist too, except on a PMA without the IETF part, which sysfs cannot tell from a 32-bit one); before
# 4.5 (and in MLNX_OFED) it sits in counters_ext/ under these names, beside the 32-bit counters/ ones.
EXTENDED = {"port_xmit_data": "port_xmit_data_64", "port_rcv_data": "port_rcv_data_64",
            "port_xmit_packets": "port_xmit_packets_64", "port_rcv_packets": "port_rcv_packets_64",
            "unicast_xmit_packets": "port_unicast_xmit_packets", "unicast_rcv_packets": "port_unicast_rcv_packets",
            "multicast_xmit_packets": "port_multicast_xmit_packets",
            "multicast_rcv_packets": "port_multicast_rcv_packets"}
SATURATED = "gpumon_ib_port_pma_saturated"

# mlx5 hw_counters read with QUERY_Q_COUNTER as 32-bit values (counters.c: be32_to_cpu), by name; in
# switchdev mode the per-port ones are the vport's, prefixed `vport_`. Everything else mlx5 shows there
# (congestion counters, rx_icrc_encapsulated from PPCNT, the optional flow counters) is 64-bit, and so
# is every hw counter of other drivers (the core keeps u64 values), so the table applies to mlx5 only.
MLX5_Q_COUNTERS = (
    "rx_write_requests", "rx_read_requests", "rx_atomic_requests", "rx_dct_connect", "out_of_buffer",
    "out_of_sequence", "duplicate_request", "rnr_nak_retry_err", "packet_seq_err", "implied_nak_seq_err",
    "local_ack_timeout_err", "resp_local_length_error", "resp_cqe_error", "req_cqe_error",
    "req_remote_invalid_request", "req_remote_access_errors", "resp_remote_access_errors",
    "resp_cqe_flush_error", "req_cqe_flush_error", "req_transport_retries_exceeded", "req_rnr_retries_exceeded",
    "roce_adp_retrans", "roce_adp_retrans_to", "roce_slow_restart", "roce_slow_restart_cnps",
    "roce_slow_restart_trans")
MLX5_HW_COUNTER_BITS = {**dict.fromkeys(MLX5_Q_COUNTERS, 32), **{f"vport_{n}": 32 for n in MLX5_Q_COUNTERS}}
HW_COUNTER_SKIP = {"lifespan"}  # a setting (ms the kernel caches the values), not a counter
NO_PMA = "N/A (no PMA)"  # what counters/ files of a device without a PMA read on older kernels
# ... and what reading them fails with on newer ones (show_pma_counter returns get_perf_mad's -EINVAL,
# or -ENOSYS without process_mad); a hw counter the driver cannot fetch answers EOPNOTSUPP.
ABSENT_ERRNOS = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}

# `state` and `phys_state` read "4: ACTIVE", "5: LinkUp"; the number is the IBA code.
_CODE = re.compile(r"\s*(\d+)\s*:\s*(\S.*?)\s*$")
# `rate` reads "100 Gb/sec (4X EDR)", "25 Gb/sec (1X EDR)", "2.5 Gb/sec (1X SDR)".
_RATE = re.compile(r"\s*([0-9.]+)\s*Gb/sec(?:\s*\((\d+)X\b[^)]*\))?")
_BDF = re.compile(r"^([0-9a-fA-F]+):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")


@dataclass(frozen=True)
class IbPort:
    """One port of one RDMA device, as found under the sysfs root."""

    device: str
    port: str
    path: Path

    @property
    def unit(self) -> str:
        return f"ib:{self.device}:{self.port}"

    @property
    def labels(self) -> Labels:
        return (("device", self.device), ("port", self.port))


@dataclass
class CounterTotal:
    """A running total over one hardware counter of `bits` width; it never goes backwards.

    A PMA counter (`saturates`) stops at all-ones and only goes down when cleared, so any decrease is
    a reset and the new raw value is what was counted since. A wrapping counter (mlx5's 32-bit Q
    counters) that goes down has wrapped when the forward distance modulo 2^bits is under half the
    range, and was reset otherwise. Either way nothing is invented: a reset adds only the new value.
    """

    bits: int
    saturates: bool = True
    widening: bool = False  # 32 bits until a value above 2^32 - 1 proves the 64-bit extended counter
    total: int | None = None
    last: int | None = None
    wraps: int = 0
    resets: int = 0

    @property
    def saturated(self) -> bool:
        """Pinned at all-ones: it counts nothing more until cleared."""
        return self.saturates and self.bits < 64 and self.last == (1 << self.bits) - 1

    def update(self, raw: int) -> int:
        """Fold one raw reading in and return the running total."""
        if self.widening and raw >> 32:
            self.bits, self.widening = 64, False
        last = self.last
        if last is None or self.total is None:
            self.total = raw
        elif raw >= last:
            self.total += raw - last
        else:
            modulus = 1 << self.bits
            forward = (raw - last) % modulus
            if not self.saturates and self.bits < 64 and last < modulus and forward < modulus // 2:
                self.total += forward
                self.wraps += 1
            else:  # cleared or reset: everything counted since is in the new raw value
                self.total += raw
                self.resets += 1
        self.last = raw
        return self.total


# One counter file to read at each poll: (sysfs path, running total, metric, series labels, scale,
# labels of its gpumon_ib_port_pma_saturated series or None), built once at discovery so that a poll
# is a pread, an int() and an add per counter.
_Read = tuple[str, CounterTotal, str, Labels, float, "Labels | None"]


@dataclass
class _PortState:
    """What discovery learnt about a port (static facts, which files exist) plus its counter state."""

    port: IbPort
    info: Labels = ()
    fast: list[_Read] = field(default_factory=list)
    slow: list[_Read] = field(default_factory=list)
    counters: dict[str, CounterTotal] = field(default_factory=dict)  # by directory/file, kept across rescans
    state_path: str = ""
    phys_state_path: str = ""
    rate_path: str = ""
    slow_due: float = 0.0  # clock time of the next slow read; 0: at the next poll


@dataclass
class _DeviceState:
    """A device's own hw_counters (mlx5 in switchdev mode shows its counters here, not per port)."""

    device: str
    reads: list[_Read] = field(default_factory=list)
    counters: dict[str, CounterTotal] = field(default_factory=dict)

    @property
    def unit(self) -> str:
        return f"ib:{self.device}"


class InfinibandSource:
    """Reads every port of every RDMA device under `root`. Thread-safe; `poll()` never blocks long.

    Discovery (directory listings, static facts such as firmware and PCI address) runs in `open()`
    and again at most every `rescan_interval` seconds, so a poll only reads the counter and state
    files. Every `counters/` read is a MAD to the HCA's firmware on real hardware, so the error
    counters, the unicast/multicast split and the link rate are read every `slow_interval` seconds
    (the catalog's slow tier), the traffic counters and port_xmit_wait at every poll.
    """

    name = "infiniband"
    schedule = Schedule.SHARED_THREAD  # one thread: a wedged HCA driver stalls only InfiniBand, never a GPU
    essential = False  # a host without ports, or a port that hangs, must not keep gpumon unready

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_ROOT, *, tier: Tier = Tier.FAST,
                 clock: Callable[[], float] = time.time, rescan_interval: float = 60.0,
                 slow_interval: float = 30.0, gpus: Callable[[], Sequence[Device]] | None = None,
                 pci_root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root)
        # For gpumon_ib_gpu_affinity_info: the GPUs (another source's, opened before this one) and
        # where their PCI addresses resolve. None: no affinity (replayed GPUs are not on this bus).
        self._gpus = gpus
        self.pci_root = pci_root
        self._affinity: Sample | None = None
        self.tier = tier
        self.rescan_interval = rescan_interval
        self.slow_interval = slow_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._ports: dict[str, _PortState] = {}
        self._devices: dict[str, _DeviceState] = {}
        self._scanned_at: float | None = None
        self._read_errors = 0
        self._absent: set[str] = set()  # counter files found absent (no PMA), logged once each
        self._fds: dict[str, int] = {}  # sysfs attribute -> open fd, re-read with pread at offset 0

    def open(self) -> list[Unit]:
        """Discover devices and ports, and the GPUs' distance to each device. One unit: the fabric of
        this host, however many ports it has now (they come and go with rescans)."""
        ports = self.discover()
        affinity = []
        if self._gpus is not None and self.pci_root is not None:
            affinity = gpu_affinity(self._gpus(), ib_root=self.root, pci_root=self.pci_root)
            self._affinity = affinity_sample(affinity, clock=self._clock)
        log.info("InfiniBand ports found", ports=[p.unit for p in ports], gpu_nic_pairs=len(affinity))
        return [Unit("infiniband")]

    def discover(self) -> list[IbPort]:
        """Discover devices and ports; returns them (empty when the root does not exist)."""
        with self._lock:
            return self._discover()

    def poll(self, unit: Unit, tier: Tier) -> list[Sample]:
        """The static round gives the GPU affinity, the fast one every port (`poll_ports`), which
        reads the slow counters on its own timer, set to the slow tier's interval."""
        if tier is Tier.STATIC:
            return [self._affinity] if self._affinity is not None else []
        return self.poll_ports() if tier is Tier.FAST else []

    def reopen(self, unit: Unit) -> None:
        """Never lost as a whole: ports that vanish are found again by the next rescan."""

    def health(self, units: dict[Unit, UnitHealth]) -> Sample | None:
        return None

    def start(self, changed: Callable[[], None]) -> None:
        """Nothing runs in the background: rescans happen inside polls."""

    def close(self) -> None:
        """Close the attribute files kept open between polls."""
        with self._lock:
            self._close_fds()

    def _close_fds(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

    def rescan(self) -> list[IbPort]:
        """Discover again now (hot-plugged HCA, a port that came back)."""
        return self.discover()

    @property
    def ports(self) -> list[IbPort]:
        with self._lock:
            return [s.port for s in self._ports.values()]

    @property
    def read_errors(self) -> int:
        """Counter reads that failed or could not be parsed since start (for a self-metric)."""
        return self._read_errors

    @property
    def absent_counters(self) -> list[str]:
        """Counter files that answered `N/A (no PMA)` or EINVAL/EOPNOTSUPP: no series, not errors."""
        with self._lock:
            return sorted(self._absent)

    def poll_ports(self) -> list[Sample]:
        """A fast Sample per port and per device with hw_counters, plus a slow Sample per port when due.

        Ports that vanished are dropped, new ones appear after a rescan."""
        with self._lock:
            now = self._clock()
            if self._scanned_at is None or now - self._scanned_at >= self.rescan_interval:
                self._discover()
            out: list[Sample] = []
            for state in list(self._ports.values()):
                out.extend(self._poll_port(state, now))
            for dev in list(self._devices.values()):
                sample = Sample(dev.unit, self.tier.value, now)
                self._read_counters(dev.unit, dev.reads, sample)
                out.append(sample)
            return out

    # --- discovery -------------------------------------------------------------------------------

    def _discover(self) -> list[IbPort]:
        self._scanned_at = self._clock()
        self._close_fds()  # files of vanished or re-created ports must not be read through stale fds
        found: dict[str, IbPort] = {}
        devices: dict[str, _DeviceState] = {}
        try:
            device_dirs = sorted(p for p in self.root.iterdir() if (p / "ports").is_dir())
        except OSError:
            device_dirs = []
        for dev in device_dirs:
            hw_bits = MLX5_HW_COUNTER_BITS if _driver_of(dev) == "mlx5_core" else {}
            old_dev = self._devices.get(dev.name)
            dstate = _DeviceState(dev.name, counters=old_dev.counters if old_dev else {})
            self._hw_reads(dev / "hw_counters", hw_bits, dstate.counters, dstate.reads,
                           "gpumon_ib_device_hw_events_total", (("device", dev.name),))
            if dstate.reads:
                devices[dev.name] = dstate
            try:
                port_dirs = sorted((p for p in (dev / "ports").iterdir() if p.name.isdigit()),
                                   key=lambda p: int(p.name))
            except OSError:
                continue
            for pdir in port_dirs:
                port = IbPort(dev.name, pdir.name, pdir)
                found[port.unit] = port
        for unit in list(self._ports):
            if unit not in found:
                log.info("InfiniBand port gone", unit=unit)
                del self._ports[unit]
        self._devices = devices
        for unit, port in found.items():
            self._ports[unit] = self._describe(port, self._ports.get(unit))
        return list(found.values())

    def _describe(self, port: IbPort, old: _PortState | None) -> _PortState:
        dev_dir = port.path.parent.parent
        state = _PortState(port, counters=old.counters if old else {}, slow_due=old.slow_due if old else 0.0,
                           state_path=str(port.path / "state"), phys_state_path=str(port.path / "phys_state"),
                           rate_path=str(port.path / "rate"))
        state.info = (*port.labels, ("link_layer", _read(port.path / "link_layer") or ""),
                      ("fw_ver", _read(dev_dir / "fw_ver") or ""),
                      ("hca_type", _read(dev_dir / "hca_type") or ""),
                      ("board_id", _read(dev_dir / "board_id") or ""),
                      ("node_guid", _read(dev_dir / "node_guid") or ""),
                      ("pci_bus_id", pci_bus_id_of(dev_dir / "device") or ""))
        ids = port.labels
        counters_dir, ext_dir = port.path / "counters", port.path / "counters_ext"
        # The kernel shows unicast_*/multicast_* only with the extended set: then counters/ data is 64-bit.
        extended = (counters_dir / "unicast_xmit_packets").exists()
        for name, (metric, scale, bits) in PMA_COUNTERS.items():
            path, widening = counters_dir / name, False
            if name in EXTENDED and (ext_dir / EXTENDED[name]).exists():
                path, bits = ext_dir / EXTENDED[name], 64  # pre-4.5 kernels: prefer the 64-bit twin
            elif bits == 32 and name in EXTENDED:
                bits, widening = (64, False) if extended else (32, True)
            if not path.exists():
                continue
            key = f"{path.parent.name}/{path.name}"  # a counter that moves to its 64-bit twin starts afresh
            total = state.counters.get(key)
            if total is None:
                total = state.counters[key] = CounterTotal(bits, widening=widening)
            saturation = (*ids, ("counter", name)) if bits < 64 else None
            read = (str(path), total, metric, ids, scale, saturation)
            (state.slow if catalog.BY_NAME[metric].tier is Tier.SLOW else state.fast).append(read)
        hw_bits = MLX5_HW_COUNTER_BITS if _driver_of(dev_dir) == "mlx5_core" else {}
        self._hw_reads(port.path / "hw_counters", hw_bits, state.counters, state.fast,
                       "gpumon_ib_port_hw_events_total", ids)
        return state

    @staticmethod
    def _hw_reads(directory: Path, bits: dict[str, int], counters: dict[str, CounterTotal], reads: list[_Read],
                  metric: str, ids: Labels) -> None:
        try:
            names = sorted(p.name for p in directory.iterdir() if p.name not in HW_COUNTER_SKIP)
        except OSError:
            return
        for n in names:
            key = "hw:" + n
            total = counters.get(key)
            if total is None:
                total = counters[key] = CounterTotal(bits.get(n, 64), saturates=False)
            reads.append((str(directory / n), total, metric, (*ids, ("counter", n)), 1.0, None))

    # --- polling ---------------------------------------------------------------------------------

    def _pread(self, path: str) -> str:
        """One sysfs attribute as text. The file stays open and is re-read with pread(offset 0), which
        makes sysfs call the attribute's show() again: a quarter of the cost of open/read/close."""
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.pread(fd, 256, 0).decode("ascii", "replace").strip()
        except OSError:  # ENODEV once the device is gone, or a failed MAD: never reuse the fd
            with contextlib.suppress(OSError):
                os.close(fd)
            self._fds.pop(path, None)
            raise

    def _read_fast(self, path: str) -> str | None:
        try:
            return self._pread(path)
        except OSError:
            return None

    def _poll_port(self, state: _PortState, now: float) -> list[Sample]:
        port = state.port
        sample = Sample(port.unit, self.tier.value, now)
        ids = port.labels
        read = self._read_fast
        state_text = read(state.state_path)
        if state_text is None:  # the port went away (driver unloaded, HCA reset): look again next poll
            self._scanned_at = None
            state.slow_due = 0.0  # and read its slow counters as soon as it answers again
            return [sample, Sample(port.unit, Tier.SLOW.value, now)]  # empty: its series leave at once
        code = _parse_code(state_text)
        if code is not None:
            sample.add("gpumon_ib_port_state", ids, code)
            sample.add("gpumon_ib_port_up", ids, 1.0 if code == 4 else 0.0)
        phys = _parse_code(read(state.phys_state_path))
        if phys is not None:
            sample.add("gpumon_ib_port_physical_state", ids, phys)
        sample.add("gpumon_ib_port_info", state.info, 1.0)
        self._read_counters(port.unit, state.fast, sample)
        if now < state.slow_due:
            return [sample]
        state.slow_due = now + self.slow_interval
        slow = Sample(port.unit, Tier.SLOW.value, now)
        rate = parse_rate(read(state.rate_path))
        if rate is not None:
            bits_per_s, width = rate
            slow.add("gpumon_ib_port_rate_bytes_per_second", ids, bits_per_s / 8)
            if width is not None:
                slow.add("gpumon_ib_port_width_lanes", ids, width)
        self._read_counters(port.unit, state.slow, slow)
        return [sample, slow]

    def _read_counters(self, unit: str, reads: list[_Read], sample: Sample) -> None:
        add = sample.add
        absent: list[_Read] = []
        for entry in reads:
            path, total, metric, labels, scale, saturation = entry
            try:
                text = self._pread(path)
            except OSError as e:
                if e.errno in ABSENT_ERRNOS:
                    absent.append(entry)
                elif e.errno in (errno.ENODEV, errno.ENOENT):  # going away (or gone): rediscover at the next poll
                    self._scanned_at = None
                else:
                    self._read_errors += 1
                continue
            try:
                raw = int(text)
            except ValueError:
                if text.startswith(NO_PMA):
                    absent.append(entry)
                else:
                    self._read_errors += 1
                continue
            add(metric, labels, total.update(raw) * scale)
            if saturation is not None:
                add(SATURATED, saturation, 1.0 if total.saturated else 0.0)
        for entry in absent:  # not read again until the next rescan finds the file again
            reads.remove(entry)
            if entry[0] not in self._absent:
                self._absent.add(entry[0])
                log.info("InfiniBand counter absent; no series for it", unit=unit, counter=Path(entry[0]).name,
                         reason="no PMA (or the driver does not provide it)")


def _driver_of(device_dir: Path) -> str:
    """The kernel driver bound to the RDMA device's PCI function (`mlx5_core`), or "" (virtual devices)."""
    try:
        return (device_dir / "device" / "driver").resolve(strict=True).name
    except OSError:
        return ""


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _parse_code(text: str | None) -> int | None:
    if text is None:
        return None
    m = _CODE.match(text)
    return int(m.group(1)) if m else None


def parse_rate(text: str | None) -> tuple[float, int | None] | None:
    """`"100 Gb/sec (4X EDR)"` -> (100e9 bits/s, 4 lanes); None when unparseable."""
    if not text:
        return None
    m = _RATE.match(text)
    if not m:
        return None
    try:
        gbps = float(m.group(1))
    except ValueError:
        return None
    return gbps * 1e9, (int(m.group(2)) if m.group(2) else None)


# --- PCIe topology: which NIC is nearest to which GPU ---------------------------------------------


def normalize_bus_id(bus_id: str) -> str | None:
    """NVML's `00000000:18:00.0` and sysfs's `0000:18:00.0` -> `0000:18:00.0`; None if not a BDF."""
    m = _BDF.match(bus_id.strip())
    if not m:
        return None
    domain, bus, dev, fn = m.groups()
    return f"{int(domain, 16):04x}:{bus.lower()}:{dev.lower()}.{fn}"


def pci_bus_id_of(device_link: Path) -> str | None:
    """The PCI address a sysfs `device` symlink points at, or None (virtual devices such as rxe)."""
    try:
        target = device_link.resolve(strict=True)
    except OSError:
        return None
    return normalize_bus_id(target.name)


def _pci_chain(path: Path) -> list[str] | None:
    """Resolved sysfs path -> its PCI ancestry, `["pci0000:00", "0000:00:01.0", ..., self]`."""
    try:
        target = path.resolve(strict=True)
    except OSError:
        return None
    parts = list(target.parts)
    roots = [i for i, p in enumerate(parts) if p.startswith("pci") and ":" in p]
    if not roots:
        return None
    chain = parts[roots[0]:]
    if not chain[1:] or normalize_bus_id(chain[-1]) is None:
        return None
    return chain


def _numa_node(path: Path) -> int:
    try:
        return int((path / "numa_node").read_text().strip())
    except (OSError, ValueError):
        return -1


@dataclass(frozen=True)
class Affinity:
    """How one GPU and one RDMA device are connected over PCIe."""

    gpu: Device
    ib_device: str
    ib_pci_bus_id: str
    distance: int  # PCIe tree hops between the two functions, through their nearest common ancestor
    relation: str  # "switch", "host_bridge", "numa_node" or "system" (nearest first)
    nearest: bool = False  # this device has the smallest distance among all devices for this GPU


RELATIONS = ("switch", "host_bridge", "numa_node", "system")


def gpu_affinity(gpus: Sequence[Device], *, ib_root: str | os.PathLike[str] = DEFAULT_ROOT,
                 pci_root: str | os.PathLike[str] = DEFAULT_PCI_ROOT) -> list[Affinity]:
    """Pair every GPU with every RDMA device by PCIe distance. GPUs or NICs not found are skipped.

    `pci_root` is where a PCI address resolves to its device directory (`/sys/bus/pci/devices`);
    `ib_root` is the InfiniBand class directory whose `<dev>/device` links point into the same tree.
    """
    nics: list[tuple[str, str, list[str], Path]] = []
    try:
        ib_devs = sorted(Path(ib_root).iterdir())
    except OSError:
        ib_devs = []
    for dev in ib_devs:
        chain = _pci_chain(dev / "device")
        if chain is not None:
            nics.append((dev.name, normalize_bus_id(chain[-1]) or "", chain, (dev / "device").resolve()))
    out: list[Affinity] = []
    for gpu in gpus:
        bdf = normalize_bus_id(gpu.pci_bus_id)
        if bdf is None:
            continue
        gpu_path = Path(pci_root) / bdf
        chain = _pci_chain(gpu_path)
        if chain is None:
            continue
        pairs = []
        for name, nic_bdf, nic_chain, nic_path in nics:
            common = 0
            for a, b in zip(chain, nic_chain, strict=False):
                if a != b:
                    break
                common += 1
            if common == 0:  # different root complexes: up to the root and down again, plus one
                distance = len(chain) + len(nic_chain)
                same_node = _numa_node(gpu_path.resolve()) == _numa_node(nic_path) != -1
                relation = "numa_node" if same_node else "system"
            else:
                distance = (len(chain) - common) + (len(nic_chain) - common)
                relation = "host_bridge" if common == 1 else "switch"
            pairs.append(Affinity(gpu, name, nic_bdf, distance, relation))
        if pairs:
            best = min(p.distance for p in pairs)
            out.extend(Affinity(p.gpu, p.ib_device, p.ib_pci_bus_id, p.distance, p.relation, p.distance == best)
                       for p in pairs)
    return out


def affinity_sample(affinities: Iterable[Affinity], *, clock: Callable[[], float] = time.time) -> Sample:
    """The affinity as `gpumon_ib_gpu_affinity_info` series, in one static-tier sample (unit `ib:affinity`)."""
    sample = Sample("ib:affinity", Tier.STATIC.value, clock())
    for a in affinities:
        sample.add("gpumon_ib_gpu_affinity_info",
                   (*a.gpu.labels, ("ib_device", a.ib_device), ("ib_pci_bus_id", a.ib_pci_bus_id),
                    ("pci_distance", str(a.distance)), ("relation", a.relation),
                    ("nearest", "true" if a.nearest else "false")), 1.0)
    return sample
