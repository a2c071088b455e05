"""The InfiniBand/RoCE source: port counters, link state and GPU-to-NIC affinity from sysfs.

Reads `/sys/class/infiniband/<device>/ports/<port>/` (the root is a parameter, so tests point it at
a tree built by `tests/ibsysfs.py`). Every file read is a small sysfs read (microseconds), so `poll()`
is synchronous; the sampler runs it in a worker thread like an NVML poll. One `Sample` per port,
unit `ib:<device>:<port>`.

Counters are exported as running totals that survive wrap: the kernel exposes some counters with
fewer than 64 bits (see `COUNTER_BITS`, `HW_COUNTER_BITS` and docs/interconnect.md), and a value
that goes down is either a wrap (the forward distance modulo 2^bits is small) or a reset (someone ran
`perfquery -R`, the driver reloaded), after which the new raw value is the increase.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from gpumon.model import Device, Labels, Sample, Tier

log = structlog.get_logger("gpumon.infiniband")

DEFAULT_ROOT = "/sys/class/infiniband"
DEFAULT_PCI_ROOT = "/sys/bus/pci/devices"

# counters/<file> -> (metric, scale, bits). The four data/packet counters are 64-bit when the HCA
# supports PortCountersExtended (every mlx4/mlx5 part; the kernel then reads the extended PMA
# attribute) and 32-bit otherwise, so they are tracked as 32-bit until a value above 2^32 proves the
# wider width. The error counters are 4-16 bit in the PMA and saturate rather than wrap (IBA 16.1.3.5);
# they are tracked at their PMA width so a drop is read as a reset, never as a wrap.
COUNTERS: dict[str, tuple[str, float, int]] = {
    "port_xmit_data": ("gpumon_ib_port_transmit_bytes_total", 4.0, 32),  # 4-byte words
    "port_rcv_data": ("gpumon_ib_port_receive_bytes_total", 4.0, 32),
    "port_xmit_packets": ("gpumon_ib_port_transmit_packets_total", 1.0, 32),
    "port_rcv_packets": ("gpumon_ib_port_receive_packets_total", 1.0, 32),
    "port_xmit_wait": ("gpumon_ib_port_transmit_wait_ticks_total", 1.0, 32),
    "symbol_error": ("gpumon_ib_port_symbol_errors_total", 1.0, 16),
    "link_downed": ("gpumon_ib_port_link_downed_total", 1.0, 8),
    "link_error_recovery": ("gpumon_ib_port_link_error_recovery_total", 1.0, 8),
    "port_rcv_errors": ("gpumon_ib_port_receive_errors_total", 1.0, 16),
    "port_xmit_discards": ("gpumon_ib_port_transmit_discards_total", 1.0, 16),
}
WIDENING = {"port_xmit_data", "port_rcv_data", "port_xmit_packets", "port_rcv_packets"}
SATURATING_BITS = 16  # at or below this width a counter saturates in the PMA: a drop is a reset

# hw_counters/<file> widths that are not 64-bit. mlx5 reads its per-port "Q counters"
# (QUERY_Q_COUNTER) as 32-bit big-endian values; the congestion (CNP/ECN) and extended PPCNT counters
# are 64-bit. Other drivers' hw_counters are treated as 64-bit.
HW_COUNTER_BITS: dict[str, int] = {name: 32 for name in (
    "rx_write_requests", "rx_read_requests", "rx_atomic_requests", "rx_dct_connect", "out_of_buffer",
    "out_of_sequence", "duplicate_request", "rnr_nak_retry_err", "packet_seq_err", "implied_nak_seq_err",
    "local_ack_timeout_err", "resp_local_length_error", "resp_cqe_error", "req_cqe_error",
    "req_remote_invalid_request", "req_remote_access_errors", "resp_remote_access_errors",
    "resp_cqe_flush_error", "req_cqe_flush_error", "roce_adp_retrans", "roce_adp_retrans_to",
    "roce_slow_restart", "roce_slow_restart_cnps", "roce_slow_restart_trans", "rx_icrc_encapsulated")}
HW_COUNTER_SKIP = {"lifespan"}  # a setting (ms between reads), not a counter

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
class WrapCounter:
    """A running total over a hardware counter of `bits` width that may wrap or be reset."""

    bits: int
    widening: bool = False  # width may prove to be 64 when a value exceeds 2^bits - 1
    total: int | None = None
    last: int | None = None
    wraps: int = 0
    resets: int = 0

    def update(self, raw: int) -> int:
        """Fold one raw reading in and return the running total."""
        if self.widening and raw >= 1 << self.bits:
            self.bits = 64
        if self.last is None or self.total is None:
            self.total = raw
        elif raw >= self.last:
            self.total += raw - self.last
        else:
            modulus = 1 << self.bits
            forward = (raw - self.last) % modulus
            if self.bits > SATURATING_BITS and self.last < modulus and forward < modulus // 2:
                self.total += forward
                self.wraps += 1
            else:  # a reset: everything counted since is in the new raw value
                self.total += raw
                self.resets += 1
        self.last = raw
        return self.total


@dataclass
class _PortState:
    """What discovery learnt about a port (static facts, which files exist) plus its counter state."""

    port: IbPort
    info: Labels = ()
    # (sysfs path, its running total, metric, series labels, scale) per counter file, built once at
    # discovery so that a poll is a pread, an int() and an add per counter
    reads: list[tuple[str, WrapCounter, str, Labels, float]] = field(default_factory=list)
    counters: dict[str, WrapCounter] = field(default_factory=dict)  # by counter key, kept across rescans
    state_path: str = ""
    phys_state_path: str = ""
    rate_path: str = ""


class InfinibandSource:
    """Reads every port of every RDMA device under `root`. Thread-safe; `poll()` never blocks long.

    Discovery (directory listings, static facts such as firmware and PCI address) runs in `open()`
    and again at most every `rescan_interval` seconds, so a poll only reads the counter and state
    files: about 25 small reads per ConnectX port.
    """

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_ROOT, *, tier: Tier = Tier.FAST,
                 clock: Callable[[], float] = time.time, rescan_interval: float = 60.0) -> None:
        self.root = Path(root)
        self.tier = tier
        self.rescan_interval = rescan_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._ports: dict[str, _PortState] = {}
        self._scanned_at: float | None = None
        self._read_errors = 0
        self._fds: dict[str, int] = {}  # sysfs attribute -> open fd, re-read with pread at offset 0

    def open(self) -> list[IbPort]:
        """Discover devices and ports; returns them (empty when the root does not exist)."""
        with self._lock:
            return self._discover()

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
        """Discover again now (hot-plugged HCA, a port that came back); `open()` by another name."""
        return self.open()

    @property
    def ports(self) -> list[IbPort]:
        with self._lock:
            return [s.port for s in self._ports.values()]

    @property
    def read_errors(self) -> int:
        """Counter files that could not be parsed since start (for a self-metric)."""
        return self._read_errors

    def poll(self) -> list[Sample]:
        """One Sample per port. Ports that vanished are dropped, new ones appear after a rescan."""
        with self._lock:
            now = self._clock()
            if self._scanned_at is None or now - self._scanned_at >= self.rescan_interval:
                self._discover()
            return [self._poll_port(state, now) for state in list(self._ports.values())]

    # --- internals -------------------------------------------------------------------------------

    def _discover(self) -> list[IbPort]:
        self._scanned_at = self._clock()
        self._close_fds()  # files of vanished or re-created ports must not be read through stale fds
        found: dict[str, IbPort] = {}
        try:
            devices = sorted(p for p in self.root.iterdir() if (p / "ports").is_dir())
        except OSError:
            devices = []
        for dev in devices:
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
        for unit, port in found.items():
            old = self._ports.get(unit)
            self._ports[unit] = self._describe(port, old.counters if old else {})
        return list(found.values())

    def _describe(self, port: IbPort, counters: dict[str, WrapCounter]) -> _PortState:
        dev_dir = port.path.parent.parent
        state = _PortState(port, counters=counters, state_path=str(port.path / "state"),
                           phys_state_path=str(port.path / "phys_state"), rate_path=str(port.path / "rate"))
        state.info = (*port.labels, ("link_layer", _read(port.path / "link_layer") or ""),
                      ("fw_ver", _read(dev_dir / "fw_ver") or ""),
                      ("hca_type", _read(dev_dir / "hca_type") or ""),
                      ("pci_bus_id", pci_bus_id_of(dev_dir / "device") or ""))
        ids = port.labels
        for name, (metric, scale, bits) in COUNTERS.items():
            path = port.path / "counters" / name
            if path.exists():
                total = self._total(state, name, bits, name in WIDENING)
                state.reads.append((str(path), total, metric, ids, scale))
        try:
            hw_names = sorted(p.name for p in (port.path / "hw_counters").iterdir() if p.name not in HW_COUNTER_SKIP)
        except OSError:
            hw_names = []
        for n in hw_names:
            total = self._total(state, "hw:" + n, HW_COUNTER_BITS.get(n, 64), False)
            state.reads.append((str(port.path / "hw_counters" / n), total, "gpumon_ib_port_hw_events_total",
                                (*ids, ("counter", n)), 1))
        return state

    @staticmethod
    def _total(state: _PortState, key: str, bits: int, widening: bool) -> WrapCounter:
        c = state.counters.get(key)
        if c is None:
            c = state.counters[key] = WrapCounter(bits, widening)
        return c

    def _read_fast(self, path: str) -> str | None:
        """One sysfs attribute as text. The file stays open and is re-read with pread(offset 0),
        which makes sysfs call the attribute's show() again: a quarter of the cost of open/read/close."""
        fd = self._fds.get(path)
        try:
            if fd is None:
                fd = self._fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            return os.pread(fd, 256, 0).decode("ascii", "replace").strip()
        except OSError:  # ENOENT, or ENODEV once the device is gone: forget the fd
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
                self._fds.pop(path, None)
            return None

    def _poll_port(self, state: _PortState, now: float) -> Sample:
        port = state.port
        sample = Sample(port.unit, self.tier.value, now)
        ids = port.labels
        read = self._read_fast
        state_text = read(state.state_path)
        if state_text is None:  # the port went away (driver unloaded, HCA reset): look again next poll
            self._scanned_at = None
            return sample
        code = _parse_code(state_text)
        if code is not None:
            sample.add("gpumon_ib_port_state", ids, code)
            sample.add("gpumon_ib_port_up", ids, 1.0 if code == 4 else 0.0)
        phys = _parse_code(read(state.phys_state_path))
        if phys is not None:
            sample.add("gpumon_ib_port_physical_state", ids, phys)
        rate = parse_rate(read(state.rate_path))
        if rate is not None:
            bits_per_s, width = rate
            sample.add("gpumon_ib_port_rate_bytes_per_second", ids, bits_per_s / 8)
            if width is not None:
                sample.add("gpumon_ib_port_width_lanes", ids, width)
        sample.add("gpumon_ib_port_info", state.info, 1.0)
        add = sample.add
        for path, total, metric, labels, scale in state.reads:
            text = read(path)
            if text is None:
                continue
            try:
                raw = int(text)
            except ValueError:
                self._read_errors += 1
                continue
            add(metric, labels, total.update(raw) * scale)
        return sample


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
