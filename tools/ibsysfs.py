"""Builds fake sysfs trees for the InfiniBand source: `/sys/class/infiniband`, `/sys/devices` (PCI),
`/sys/bus/pci/devices` and `/sys/bus/pci/drivers`, under any directory.

The tree behaves the way the kernel and the HCA do (drivers/infiniband/core/sysfs.c, hw/mlx5/counters.c,
OpenSM's osm_perfmgr.c), because the source's arithmetic is only as right as the fake it is tested on:

- `counters/` holds the PortCounters attribute (IBA 16.1.3.5). Every counter there has a fixed width
  (4 to 32 bits) and **saturates** at all-ones: it stops, it never wraps. `perfmgr_sweep()` does what
  OpenSM's PerfMgr does on each sweep: once any counter passes 75 % of its range (10 for the 4-bit ones)
  it clears the error counters and port_xmit_wait, and the 32-bit data/packet counters too when the port
  has no PortCountersExtended.
- Where the PMA has PortCountersExtended the kernel shows the 64-bit data/packet counters under the same
  `counters/` names (`pma="ext"` adds the unicast/multicast counters, `pma="noietf"` does not), kernels
  before 4.5 (and MLNX_OFED) keep `counters/` 32-bit and add `counters_ext/*_64` (`pma="legacy"`), and
  an HCA without them has 32-bit `counters/` only (`pma="plain"`). `pma="none"` is a device without a
  PMA (iWARP, a ConnectX-3 VF): every `counters/` file reads `N/A (no PMA)`, as older kernels show it.
- `hw_counters/` (mlx5): the Q counters are 32-bit and wrap, the congestion counters and
  `rx_icrc_encapsulated` are 64-bit. In switchdev mode (`switchdev=True`) mlx5 shows them per device
  (`<dev>/hw_counters/`) and, per port, only the `vport_` Q counters.

A counter is addressed as (device, port, name); port 0 is the device itself, as in the kernel's
`get_hw_stats(dev, stats, 0, ...)`. `python -m tools.ibsysfs DIR` writes a sample tree.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

NO_PMA = "N/A (no PMA)"

# PortCounters, as sysfs.c declares them (PORT_PMA_ATTR width); all of them saturate.
PMA_BITS = {"symbol_error": 16, "link_error_recovery": 8, "link_downed": 8, "port_rcv_errors": 16,
            "port_rcv_remote_physical_errors": 16, "port_rcv_switch_relay_errors": 16, "port_xmit_discards": 16,
            "port_xmit_constraint_errors": 8, "port_rcv_constraint_errors": 8, "local_link_integrity_errors": 4,
            "excessive_buffer_overrun_errors": 4, "VL15_dropped": 16, "port_xmit_data": 32, "port_rcv_data": 32,
            "port_xmit_packets": 32, "port_rcv_packets": 32, "port_xmit_wait": 32}
DATA_COUNTERS = ("port_xmit_data", "port_rcv_data", "port_xmit_packets", "port_rcv_packets")
CAST_COUNTERS = ("unicast_xmit_packets", "unicast_rcv_packets", "multicast_xmit_packets", "multicast_rcv_packets")
# counters_ext/ file names of kernels before 4.5 (as prometheus/procfs reads them).
LEGACY_EXT = {"port_xmit_data": "port_xmit_data_64", "port_rcv_data": "port_rcv_data_64",
              "port_xmit_packets": "port_xmit_packets_64", "port_rcv_packets": "port_rcv_packets_64",
              "unicast_xmit_packets": "port_unicast_xmit_packets", "unicast_rcv_packets": "port_unicast_rcv_packets",
              "multicast_xmit_packets": "port_multicast_xmit_packets",
              "multicast_rcv_packets": "port_multicast_rcv_packets"}
# mlx5 hw_counters: QUERY_Q_COUNTER values are 32-bit, congestion and PPCNT ones 64-bit.
CONNECTX_Q_COUNTERS = ("out_of_sequence", "local_ack_timeout_err", "packet_seq_err", "out_of_buffer")
CONNECTX_HW_BITS = {**dict.fromkeys(CONNECTX_Q_COUNTERS, 32), "np_cnp_sent": 64, "rp_cnp_handled": 64,
                    "np_ecn_marked_roce_packets": 64, "rx_icrc_encapsulated": 64}
PMA_MODES = ("ext", "noietf", "legacy", "plain", "none")


@dataclass
class Register:
    """One hardware counter and the sysfs file that shows it."""

    path: Path
    bits: int
    saturates: bool  # PMA counters stop at all-ones; mlx5 Q counters wrap
    port_counters: bool = False  # part of the PortCounters attribute (what a PerfMgr clear resets)
    value: int = 0

    @property
    def max(self) -> int:
        return (1 << self.bits) - 1

    def set(self, value: int) -> None:
        self.value = min(value, self.max) if self.saturates else value % (1 << self.bits)
        self.path.write_text(f"{self.value}\n")


@dataclass
class Port:
    path: Path  # ports/<n>, or the device directory for port 0
    pma: str = "none"
    registers: dict[str, list[Register]] = field(default_factory=dict)  # counter name -> where it shows


class IbSysfs:
    """A fake `/sys` rooted at `root`; the source reads `ib_root`, affinity also `pci_root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ib_root = root / "class" / "infiniband"
        self.pci_root = root / "bus" / "pci" / "devices"
        self.ib_root.mkdir(parents=True, exist_ok=True)
        self.pci_root.mkdir(parents=True, exist_ok=True)
        self.ports: dict[tuple[str, int], Port] = {}  # ports 1.., plus (device, 0) for device-level hw_counters

    # --- PCI topology ----------------------------------------------------------------------------

    def add_pci(self, chain: list[str], numa_node: int = 0, driver: str = "") -> Path:
        """Create `devices/pci0000:00/<bridge>/.../<function>` and its `bus/pci/devices` link."""
        path = self.root / "devices"
        for part in chain:
            path = path / part
            path.mkdir(parents=True, exist_ok=True)
            if ":" in part and not part.startswith("pci"):
                (path / "numa_node").write_text(f"{numa_node}\n")
                link = self.pci_root / part
                if not link.exists():
                    link.symlink_to(path)
        if driver:
            drivers = self.root / "bus" / "pci" / "drivers" / driver
            drivers.mkdir(parents=True, exist_ok=True)
            (path / "driver").symlink_to(drivers)
        return path

    # --- devices and ports -----------------------------------------------------------------------

    def add_device(self, name: str, pci_chain: list[str], *, ports: int = 1, connectx: bool = True,
                   pma: str | None = None, switchdev: bool = False, vport_qcounters: bool = True,
                   rate: str = "100 Gb/sec (4X EDR)", link_layer: str = "InfiniBand", numa_node: int = 0) -> None:
        """A ConnectX (mlx5: extended PMA, hw_counters) or an old plain HCA (32-bit PMA, no hw_counters)."""
        pma = pma or ("ext" if connectx else "plain")
        assert pma in PMA_MODES, pma
        pci_dir = self.add_pci(pci_chain, numa_node, driver="mlx5_core" if connectx else "ib_mthca")
        dev = self.ib_root / name
        (dev / "ports").mkdir(parents=True)
        (dev / "device").symlink_to(pci_dir)
        (dev / "fw_ver").write_text("28.39.1002\n" if connectx else "2.10.700\n")
        (dev / "hca_type").write_text("MT4129\n" if connectx else "MT26428\n")
        (dev / "board_id").write_text("MT_0000000838\n" if connectx else "MT_0D80120009\n")
        (dev / "node_guid").write_text(f"0c42:a103:00{len(self.ports):02x}:{sum(name.encode()):04x}\n")
        if connectx and switchdev:  # device-level hw_counters: Q, congestion and PPCNT counters
            self.ports[(name, 0)] = device = Port(dev)
            self._hw_counters(device, CONNECTX_HW_BITS)
        for n in range(1, ports + 1):
            pdir = dev / "ports" / str(n)
            (pdir / "counters").mkdir(parents=True)
            port = self.ports[(name, n)] = Port(pdir, pma)
            self._pma(port)
            if connectx and not switchdev:
                self._hw_counters(port, CONNECTX_HW_BITS)
            elif connectx and vport_qcounters:  # switchdev: the vport's Q counters only
                self._hw_counters(port, {f"vport_{c}": 32 for c in CONNECTX_Q_COUNTERS})
            (pdir / "link_layer").write_text(f"{link_layer}\n")
            self.set_link(name, n, rate=rate)

    def _pma(self, port: Port) -> None:
        counters = port.path / "counters"
        for name, bits in PMA_BITS.items():
            extended = name in DATA_COUNTERS and port.pma in ("ext", "noietf")
            self._register(port, name, counters / name, 64 if extended else bits, True, not extended)
        if port.pma == "ext":
            for name in CAST_COUNTERS:
                self._register(port, name, counters / name, 64, True)
        if port.pma == "legacy":
            (port.path / "counters_ext").mkdir()
            for name, file in LEGACY_EXT.items():
                self._register(port, name, port.path / "counters_ext" / file, 64, True)
        if port.pma == "none":
            for name in PMA_BITS:
                (counters / name).write_text(f"{NO_PMA}\n")
            port.registers.clear()

    def _hw_counters(self, port: Port, bits: dict[str, int]) -> None:
        hw = port.path / "hw_counters"
        hw.mkdir()
        (hw / "lifespan").write_text("10\n")
        for name, width in bits.items():
            self._register(port, name, hw / name, width, False)

    @staticmethod
    def _register(port: Port, name: str, path: Path, bits: int, saturates: bool, port_counters: bool = False) -> None:
        reg = Register(path, bits, saturates, port_counters)
        reg.set(0)
        port.registers.setdefault(name, []).append(reg)

    def set_link(self, device: str, port: int, *, state: str = "4: ACTIVE", phys_state: str = "5: LinkUp",
                 rate: str | None = None) -> None:
        pdir = self.ports[(device, port)].path
        (pdir / "state").write_text(f"{state}\n")
        (pdir / "phys_state").write_text(f"{phys_state}\n")
        if rate is not None:
            (pdir / "rate").write_text(f"{rate}\n")

    def link_down(self, device: str, port: int) -> None:
        """The link drops: state DOWN, physical state Polling, link_downed counts one."""
        self.set_link(device, port, state="1: DOWN", phys_state="2: Polling", rate="10 Gb/sec (4X SDR)")
        self.add(device, port, "link_downed", 1)

    # --- counters --------------------------------------------------------------------------------

    def set(self, device: str, port: int, counter: str, value: int) -> None:
        """Set a counter: every register that shows it takes the value, saturated or wrapped to its width."""
        for reg in self._registers(device, port, counter):
            reg.set(value)

    def add(self, device: str, port: int, counter: str, delta: int) -> None:
        """Count `delta` events: a saturating register stops at all-ones, a wrapping one wraps."""
        for reg in self._registers(device, port, counter):
            reg.set(reg.value + delta)

    def raw(self, device: str, port: int, counter: str) -> int:
        """What the (first) file showing the counter reads."""
        return int(self._registers(device, port, counter)[0].path.read_text())

    def reset(self, device: str, port: int, *counters: str) -> None:
        """Zero the named counters, or all of the port's (`perfquery -R`, a driver reload)."""
        regs = self.ports[(device, port)].registers
        for name in counters or tuple(regs):
            for reg in regs[name]:
                reg.set(0)

    def perfmgr_sweep(self, device: str, port: int) -> bool:
        """One OpenSM PerfMgr pass over the port (perfmgr_check_overflow): when any PortCounters counter
        has passed 75 % of its range (10 for the 4-bit ones), clear them all with one Set(PortCounters).
        With PortCountersExtended the CounterSelect is 0x0fff (error counters) plus PortXmitWait: the
        32-bit data/packet counters are cleared only where there is no extended set. Returns whether it
        cleared."""
        p = self.ports[(device, port)]
        regs = [(name, r) for name, rs in p.registers.items() for r in rs if r.port_counters]
        if not any(r.value >= (10 if r.bits == 4 else r.max - r.max // 4) for _, r in regs):
            return False
        has_extended = p.pma != "plain"
        for name, reg in regs:
            if not (has_extended and name in DATA_COUNTERS):
                reg.set(0)
        return True

    def _registers(self, device: str, port: int, counter: str) -> list[Register]:
        return self.ports[(device, port)].registers[counter]


# Typical layouts: GPU and NIC behind one PCIe switch, a second pair behind another root complex.
GPU0_CHAIN = ["pci0000:00", "0000:00:01.0", "0000:01:00.0", "0000:02:00.0", "0000:03:00.0"]
NIC0_CHAIN = ["pci0000:00", "0000:00:01.0", "0000:01:00.0", "0000:02:01.0", "0000:04:00.0"]
GPU1_CHAIN = ["pci0000:80", "0000:80:01.0", "0000:81:00.0", "0000:82:00.0", "0000:83:00.0"]
NIC1_CHAIN = ["pci0000:80", "0000:80:01.0", "0000:81:00.0", "0000:82:01.0", "0000:84:00.0"]
NIC2_CHAIN = ["pci0000:00", "0000:00:03.0", "0000:05:00.0"]  # a plain HCA on the host bridge


def build_connectx(root: Path) -> IbSysfs:
    """Two ConnectX ports (mlx5_0 near GPU 0, mlx5_1 near GPU 1) and their GPUs' PCI functions."""
    fs = IbSysfs(root)
    fs.add_pci(GPU0_CHAIN, numa_node=0)
    fs.add_pci(GPU1_CHAIN, numa_node=1)
    fs.add_device("mlx5_0", NIC0_CHAIN, numa_node=0)
    fs.add_device("mlx5_1", NIC1_CHAIN, numa_node=1, link_layer="Ethernet", rate="200 Gb/sec (4X HDR)")
    return fs


def build_plain(root: Path) -> IbSysfs:
    """One older HCA with 32-bit counters and no hw_counters, two ports."""
    fs = IbSysfs(root)
    fs.add_device("mthca0", NIC2_CHAIN, ports=2, connectx=False, rate="40 Gb/sec (4X QDR)")
    return fs


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "ibsysfs")
    build_connectx(target / "connectx")
    build_plain(target / "plain")
    print(f"fake sysfs trees in {target}/connectx and {target}/plain (class/infiniband, bus/pci/devices)")
