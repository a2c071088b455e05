"""Builds fake sysfs trees for the InfiniBand source: `/sys/class/infiniband`, `/sys/devices` (PCI) and
`/sys/bus/pci/devices`, under any directory.

Two shapes, as real hosts have them: ConnectX-style (mlx5: 64-bit extended data counters and
`hw_counters/` with congestion and retransmission counters, some of them 32-bit) and a plain one
(a 32-bit-only HCA, no `hw_counters/`). Counters are written the way the kernel shows them: as
decimal text, wrapped modulo their width. `python -m tests.ibsysfs DIR` writes a sample tree.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

# File -> width in bits, as a non-extended HCA exposes them (see gpumon.sources.infiniband.COUNTERS).
PLAIN_COUNTER_BITS = {"port_xmit_data": 32, "port_rcv_data": 32, "port_xmit_packets": 32,
                      "port_rcv_packets": 32, "port_xmit_wait": 32, "symbol_error": 16, "link_downed": 8,
                      "link_error_recovery": 8, "port_rcv_errors": 16, "port_xmit_discards": 16,
                      "port_rcv_remote_physical_errors": 16, "VL15_dropped": 16}
# ConnectX: the four data/packet counters come from PortCountersExtended (64-bit).
CONNECTX_COUNTER_BITS = {**PLAIN_COUNTER_BITS, "port_xmit_data": 64, "port_rcv_data": 64,
                         "port_xmit_packets": 64, "port_rcv_packets": 64}
# mlx5 hw_counters: Q counters are 32-bit, congestion counters 64-bit.
CONNECTX_HW_COUNTER_BITS = {"out_of_sequence": 32, "local_ack_timeout_err": 32, "packet_seq_err": 32,
                            "out_of_buffer": 32, "np_cnp_sent": 64, "rp_cnp_handled": 64,
                            "np_ecn_marked_roce_packets": 64, "lifespan": 0}
SATURATES_AT = 16  # PMA error counters of this width or less stop at all-ones


@dataclass
class Port:
    path: Path
    counter_bits: dict[str, int]
    hw_bits: dict[str, int]
    values: dict[str, int] = field(default_factory=dict)  # true (unwrapped) values


class IbSysfs:
    """A fake `/sys` rooted at `root`; the source reads `ib_root`, affinity also `pci_root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ib_root = root / "class" / "infiniband"
        self.pci_root = root / "bus" / "pci" / "devices"
        self.ib_root.mkdir(parents=True, exist_ok=True)
        self.pci_root.mkdir(parents=True, exist_ok=True)
        self.ports: dict[tuple[str, int], Port] = {}

    # --- PCI topology ----------------------------------------------------------------------------

    def add_pci(self, chain: list[str], numa_node: int = 0) -> Path:
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
        return path

    # --- devices and ports -----------------------------------------------------------------------

    def add_device(self, name: str, pci_chain: list[str], *, ports: int = 1, connectx: bool = True,
                   rate: str = "100 Gb/sec (4X EDR)", link_layer: str = "InfiniBand", numa_node: int = 0) -> None:
        pci_dir = self.add_pci(pci_chain, numa_node)
        dev = self.ib_root / name
        (dev / "ports").mkdir(parents=True)
        (dev / "device").symlink_to(pci_dir)
        (dev / "fw_ver").write_text("28.39.1002\n" if connectx else "2.10.700\n")
        (dev / "hca_type").write_text("MT4129\n" if connectx else "MT26428\n")
        for n in range(1, ports + 1):
            pdir = dev / "ports" / str(n)
            (pdir / "counters").mkdir(parents=True)
            port = Port(pdir, dict(CONNECTX_COUNTER_BITS if connectx else PLAIN_COUNTER_BITS),
                        dict(CONNECTX_HW_COUNTER_BITS) if connectx else {})
            self.ports[(name, n)] = port
            if port.hw_bits:
                (pdir / "hw_counters").mkdir()
                (pdir / "hw_counters" / "lifespan").write_text("10\n")
            (pdir / "link_layer").write_text(f"{link_layer}\n")
            self.set_link(name, n, rate=rate)
            for counter in port.counter_bits:
                self.set(name, n, counter, 0)
            for counter, bits in port.hw_bits.items():
                if bits:
                    self.set(name, n, counter, 0)

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

    def set(self, device: str, port: int, counter: str, value: int) -> None:
        """Set a counter's true value; the file shows it wrapped (or saturated) to the counter's width."""
        p = self.ports[(device, port)]
        p.values[counter] = value
        self._write(p, counter)

    def add(self, device: str, port: int, counter: str, delta: int) -> None:
        p = self.ports[(device, port)]
        self.set(device, port, counter, p.values.get(counter, 0) + delta)

    def raw(self, device: str, port: int, counter: str) -> int:
        p = self.ports[(device, port)]
        sub = "hw_counters" if counter in p.hw_bits else "counters"
        return int((p.path / sub / counter).read_text())

    def _write(self, p: Port, counter: str) -> None:
        if counter in p.hw_bits:
            bits, path = p.hw_bits[counter], p.path / "hw_counters" / counter
        else:
            bits, path = p.counter_bits[counter], p.path / "counters" / counter
        value = p.values[counter]
        shown = min(value, (1 << bits) - 1) if bits <= SATURATES_AT else value % (1 << bits)
        path.write_text(f"{shown}\n")


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
