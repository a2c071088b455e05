"""The InfiniBand source against fake sysfs trees (tools/ibsysfs.py): metrics, rates, saturation and
clears, extended counters, device-level hw_counters, absent counters, tiers, link down."""

from __future__ import annotations

import concurrent.futures
import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gpumon import catalog
from gpumon.exporter import Exporter
from gpumon.model import Device, Sample, Tier
from gpumon.sources import infiniband
from gpumon.sources.infiniband import (
    CounterTotal,
    InfinibandSource,
    affinity_sample,
    gpu_affinity,
    normalize_bus_id,
    parse_rate,
)
from tests.support.clock import FakeClock
from tools.ibsysfs import CAST_COUNTERS, PMA_BITS, IbSysfs, build_connectx, build_plain

Values = dict[tuple[str, tuple[tuple[str, str], ...]], float]
MAX32 = (1 << 32) - 1


def values(samples: list[Sample]) -> Values:
    return {(name, labels): value for s in samples for name, labels, value in s.values}


def value(samples: list[Sample], metric: str, device: str, port: str | None = "1", **extra: str) -> float:
    want = {"device": device, **({"port": port} if port is not None else {}), **extra}
    found = [v for (name, labels), v in values(samples).items()
             if name == metric and dict(labels).items() >= want.items()]
    assert len(found) == 1, f"{metric} {want}: {found}"
    return found[0]


def names(samples: list[Sample], device: str | None = None) -> set[str]:
    return {name for (name, labels) in values(samples) if device is None or dict(labels)["device"] == device}


def gpu(index: int, bus_id: str) -> Device:
    return Device(index, f"GPU-{index:08d}", "NVIDIA H200", bus_id, "hopper", True, "570.86", "12.8")


def pma_metric(counter: str) -> str:
    return infiniband.PMA_COUNTERS[counter][0]


@pytest.fixture
def connectx(tmp_path: Path) -> IbSysfs:
    return build_connectx(tmp_path / "connectx")


@pytest.fixture
def plain(tmp_path: Path) -> IbSysfs:
    return build_plain(tmp_path / "plain")


def test_discovers_ports_and_units(connectx: IbSysfs, plain: IbSysfs) -> None:
    assert [p.unit for p in InfinibandSource(connectx.ib_root).discover()] == ["ib:mlx5_0:1", "ib:mlx5_1:1"]
    assert [p.unit for p in InfinibandSource(plain.ib_root).discover()] == ["ib:mthca0:1", "ib:mthca0:2"]


def test_missing_root_is_no_ports(tmp_path: Path) -> None:
    source = InfinibandSource(tmp_path / "nope")
    assert source.discover() == []
    assert source.poll_ports() == []


def test_connectx_metrics(connectx: IbSysfs) -> None:
    connectx.set("mlx5_0", 1, "port_xmit_data", 1_000_000)
    connectx.set("mlx5_0", 1, "port_rcv_data", 250)
    connectx.set("mlx5_0", 1, "port_xmit_wait", 77)
    connectx.set("mlx5_0", 1, "np_cnp_sent", 12)
    connectx.set("mlx5_0", 1, "out_of_sequence", 3)
    samples = InfinibandSource(connectx.ib_root).poll_ports()
    assert [(s.unit, s.tier) for s in samples] == [("ib:mlx5_0:1", "fast"), ("ib:mlx5_0:1", "slow"),
                                                   ("ib:mlx5_1:1", "fast"), ("ib:mlx5_1:1", "slow")]
    assert value(samples, "gpumon_ib_port_transmit_bytes_total", "mlx5_0") == 4_000_000
    assert value(samples, "gpumon_ib_port_receive_bytes_total", "mlx5_0") == 1000
    assert value(samples, "gpumon_ib_port_transmit_wait_ticks_total", "mlx5_0") == 77
    assert value(samples, "gpumon_ib_port_hw_events_total", "mlx5_0", counter="np_cnp_sent") == 12
    assert value(samples, "gpumon_ib_port_hw_events_total", "mlx5_0", counter="out_of_sequence") == 3
    assert value(samples, "gpumon_ib_port_up", "mlx5_0") == 1
    assert value(samples, "gpumon_ib_port_state", "mlx5_0") == 4
    assert value(samples, "gpumon_ib_port_physical_state", "mlx5_0") == 5
    assert value(samples, "gpumon_ib_port_rate_bytes_per_second", "mlx5_0") == 100e9 / 8
    assert value(samples, "gpumon_ib_port_rate_bytes_per_second", "mlx5_1") == 200e9 / 8
    assert value(samples, "gpumon_ib_port_width_lanes", "mlx5_0") == 4
    assert value(samples, "gpumon_ib_port_info", "mlx5_1", link_layer="Ethernet", pci_bus_id="0000:84:00.0") == 1
    hw = {dict(labels)["counter"] for (name, labels) in values(samples) if name == "gpumon_ib_port_hw_events_total"}
    assert "lifespan" not in hw and {"rp_cnp_handled", "local_ack_timeout_err", "rx_icrc_encapsulated"} <= hw


def test_plain_device_has_no_hw_counters(plain: IbSysfs) -> None:
    samples = InfinibandSource(plain.ib_root).poll_ports()
    assert "gpumon_ib_port_hw_events_total" not in names(samples)
    assert value(samples, "gpumon_ib_port_rate_bytes_per_second", "mthca0", "2") == 40e9 / 8


def every_kind_of_port(root: Path) -> IbSysfs:
    """ConnectX (extended PMA), one in switchdev mode, a pre-4.5 kernel, a PMA without the IETF
    counters, an old 32-bit HCA and a device without a PMA."""
    fs = build_connectx(root)
    fs.add_device("mlx5_2", ["pci0000:00", "0000:00:05.0", "0000:09:00.0"], switchdev=True, link_layer="Ethernet")
    fs.add_device("mlx4_0", ["pci0000:00", "0000:00:06.0", "0000:0a:00.0"], pma="legacy")
    fs.add_device("mlx5_3", ["pci0000:00", "0000:00:07.0", "0000:0b:00.0"], pma="noietf")
    fs.add_device("mthca0", ["pci0000:00", "0000:00:03.0", "0000:05:00.0"], connectx=False)
    fs.add_device("i40iw0", ["pci0000:00", "0000:00:08.0", "0000:0c:00.0"], connectx=False, pma="none",
                  link_layer="Ethernet")
    return fs


def test_every_metric_is_in_the_catalog_in_its_tier_and_passes_promtool(tmp_path: Path) -> None:
    """Every series has the catalog's labels and comes in the catalog's tier (the saturation flag in
    its counter's), and the exposition of every kind of port is clean for promtool."""
    fs = every_kind_of_port(tmp_path)
    samples = InfinibandSource(fs.ib_root).poll_ports()
    affinity = affinity_sample(gpu_affinity([gpu(0, "00000000:03:00.0")], ib_root=fs.ib_root,
                                            pci_root=fs.pci_root))
    tiers = {name: s.tier for s in samples for name, _, _ in s.values if name != "gpumon_ib_port_pma_saturated"}
    assert all(catalog.BY_NAME[name].tier.value == tier for name, tier in tiers.items()), tiers
    for name, labels, _ in [v for s in [*samples, affinity] for v in s.values]:
        metric = catalog.BY_NAME[name]
        expected = set(metric.labels) | ({"gpu", "uuid"} if metric.per_gpu else set())
        assert {k for k, _ in labels} == expected, name
    ib_metrics = {m.name for m in catalog.METRICS if m.source == "infiniband"}
    assert ib_metrics - names(samples) == {"gpumon_ib_gpu_affinity_info"}  # every row is produced
    text = Exporter(process_metrics=False).render([*samples, affinity]).text
    assert b'gpumon_ib_port_transmit_bytes_total{device="mlx5_0",port="1"} 0.0' in text
    assert b"gpumon_ib_gpu_affinity_info{" in text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: run the tests with `make test`, which installs it")
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    assert check.returncode == 0 and check.stdout == b"" and check.stderr == b"", check.stdout + check.stderr


def test_rate_over_two_polls(connectx: IbSysfs) -> None:
    clock = FakeClock(1000.0)
    source = InfinibandSource(connectx.ib_root, clock=clock)
    connectx.set("mlx5_0", 1, "port_xmit_data", 5_000_000_000)  # > 2^32: a 64-bit counter
    first = source.poll_ports()
    connectx.add("mlx5_0", 1, "port_xmit_data", 2_500_000_000)  # 10 GB in 10 s
    connectx.add("mlx5_0", 1, "port_rcv_packets", 1_000_000)
    connectx.add("mlx5_0", 1, "np_cnp_sent", 500)
    clock.advance(10.0)
    second = source.poll_ports()
    dt = second[0].timestamp - first[0].timestamp
    assert dt == 10.0

    def rate(metric: str, **extra: str) -> float:
        return (value(second, metric, "mlx5_0", **extra) - value(first, metric, "mlx5_0", **extra)) / dt

    assert rate("gpumon_ib_port_transmit_bytes_total") == 1e9
    assert rate("gpumon_ib_port_receive_packets_total") == 100_000
    assert rate("gpumon_ib_port_hw_events_total", counter="np_cnp_sent") == 50


# --- PMA counters saturate, PerfMgr clears them (issue 12 item 4) -------------------------------------


@pytest.mark.parametrize("counter", sorted(PMA_BITS))
def test_pma_counter_pins_at_its_maximum_and_says_so(plain: IbSysfs, counter: str) -> None:
    """A PortCounters counter stops at all-ones: the total stops with it (nothing is invented) and
    gpumon_ib_port_pma_saturated says the counter is blind until cleared."""
    source = InfinibandSource(plain.ib_root, slow_interval=0)
    top = (1 << PMA_BITS[counter]) - 1
    scale = infiniband.PMA_COUNTERS[counter][1]
    plain.set("mthca0", 1, counter, top - 3)
    before = source.poll_ports()
    assert value(before, "gpumon_ib_port_pma_saturated", "mthca0", counter=counter) == 0
    plain.add("mthca0", 1, counter, 10)
    assert plain.raw("mthca0", 1, counter) == top  # the kernel shows the pinned value, not a wrapped one
    pinned = source.poll_ports()
    assert value(pinned, pma_metric(counter), "mthca0") - value(before, pma_metric(counter), "mthca0") == 3 * scale
    assert value(pinned, "gpumon_ib_port_pma_saturated", "mthca0", counter=counter) == 1
    plain.add("mthca0", 1, counter, 1000)
    still = source.poll_ports()
    assert value(still, pma_metric(counter), "mthca0") == value(pinned, pma_metric(counter), "mthca0")
    assert value(still, "gpumon_ib_port_pma_saturated", "mthca0", counter=counter) == 1
    plain.reset("mthca0", 1, counter)  # perfquery -R
    plain.add("mthca0", 1, counter, 2)
    cleared = source.poll_ports()
    assert value(cleared, pma_metric(counter), "mthca0") - value(still, pma_metric(counter), "mthca0") == 2 * scale
    assert value(cleared, "gpumon_ib_port_pma_saturated", "mthca0", counter=counter) == 0


def test_pinned_port_xmit_wait_is_flagged_on_a_connectx(connectx: IbSysfs) -> None:
    """port_xmit_wait is 32-bit even where the data counters are 64-bit: pinned, its rate reads 0 and
    only the saturation flag tells congestion went blind."""
    source = InfinibandSource(connectx.ib_root)
    connectx.set("mlx5_0", 1, "port_xmit_wait", MAX32 + 5_000_000)
    samples = source.poll_ports()
    assert value(samples, "gpumon_ib_port_transmit_wait_ticks_total", "mlx5_0") == MAX32
    assert value(samples, "gpumon_ib_port_pma_saturated", "mlx5_0", counter="port_xmit_wait") == 1
    flagged = {dict(labels)["counter"] for (name, labels) in values(samples)
               if name == "gpumon_ib_port_pma_saturated" and dict(labels)["device"] == "mlx5_0"}
    assert "port_xmit_data" not in flagged and not set(CAST_COUNTERS) & flagged  # 64-bit: never pins


def test_a_perfmgr_clear_past_half_the_range_is_a_reset_not_a_wrap(plain: IbSysfs) -> None:
    """OpenSM's PerfMgr clears PortCounters at 75 % of their range. A 32-bit counter cleared from
    above 2^31 looks like a short wrap; booking it as one would invent ~2^30 words of traffic."""
    clock = FakeClock()
    source = InfinibandSource(plain.ib_root, clock=clock)
    plain.set("mthca0", 1, "port_xmit_data", 3_500_000_000)
    plain.set("mthca0", 1, "port_xmit_wait", 3_400_000_000)
    before = source.poll_ports()
    assert plain.perfmgr_sweep("mthca0", 1)  # 3.5e9 > 0.75 * 2^32: cleared
    assert plain.raw("mthca0", 1, "port_xmit_data") == plain.raw("mthca0", 1, "port_xmit_wait") == 0
    plain.add("mthca0", 1, "port_xmit_data", 1000)
    plain.add("mthca0", 1, "port_xmit_wait", 500)
    clock.advance(1)
    after = source.poll_ports()
    sent = value(after, "gpumon_ib_port_transmit_bytes_total", "mthca0")
    assert sent - value(before, "gpumon_ib_port_transmit_bytes_total", "mthca0") == 1000 * 4
    waited = value(after, "gpumon_ib_port_transmit_wait_ticks_total", "mthca0")
    assert waited - value(before, "gpumon_ib_port_transmit_wait_ticks_total", "mthca0") == 500


def test_perfmgr_cycles_keep_every_total_monotonic_and_exact(connectx: IbSysfs) -> None:
    """Congestion and symbol errors over many PerfMgr sweeps on a ConnectX: whichever counter trips
    the clear, every PortCounters counter is zeroed; the totals only rise, and by exactly what was
    counted while the counter was not pinned."""
    clock = FakeClock()
    source = InfinibandSource(connectx.ib_root, clock=clock, slow_interval=0)
    counted = {"port_xmit_wait": 0, "symbol_error": 0, "port_xmit_data": 0}
    steps = {"port_xmit_wait": 700_000_000, "symbol_error": 9_000, "port_xmit_data": 900_000_000}
    metrics = {c: pma_metric(c) for c in counted}
    last = {c: value(source.poll_ports(), m, "mlx5_0") for c, m in metrics.items()}
    clears = 0
    for _ in range(40):
        for c, step in steps.items():
            connectx.add("mlx5_0", 1, c, step)
            counted[c] += step
        clock.advance(1)
        samples = source.poll_ports()
        for c, m in metrics.items():
            now = value(samples, m, "mlx5_0")
            assert now >= last[c], c
            last[c] = now
        clears += connectx.perfmgr_sweep("mlx5_0", 1)
    assert clears >= 5
    assert last["port_xmit_wait"] == counted["port_xmit_wait"]  # cleared each time before it pinned
    assert last["symbol_error"] == counted["symbol_error"]
    assert last["port_xmit_data"] == 4 * counted["port_xmit_data"]  # 64-bit: never cleared, never pinned


def test_pre_4_5_kernels_counters_ext_is_preferred(tmp_path: Path) -> None:
    """Before 4.5 (and in MLNX_OFED) counters/ stays 32-bit and pins at 16 GiB of words while
    counters_ext/*_64 keeps counting: the 64-bit file is the one read."""
    fs = IbSysfs(tmp_path)
    fs.add_device("mlx4_0", ["pci0000:00", "0000:00:01.0", "0000:01:00.0"], pma="legacy")
    fs.set("mlx4_0", 1, "port_xmit_data", 5_000_000_000)
    fs.set("mlx4_0", 1, "unicast_rcv_packets", 77)
    assert fs.raw("mlx4_0", 1, "port_xmit_data") == MAX32  # counters/ is pinned
    samples = InfinibandSource(fs.ib_root).poll_ports()
    assert value(samples, "gpumon_ib_port_transmit_bytes_total", "mlx4_0") == 5_000_000_000 * 4
    assert value(samples, "gpumon_ib_port_receive_unicast_packets_total", "mlx4_0") == 77
    saturation = {dict(labels)["counter"] for (name, labels) in values(samples)
                  if name == "gpumon_ib_port_pma_saturated"}
    assert "port_xmit_data" not in saturation and "port_xmit_wait" in saturation


def test_a_reset_of_an_extended_counter_below_2_32_is_not_a_wrap(connectx: IbSysfs) -> None:
    """The unicast/multicast files prove the extended set, so counters/port_xmit_data is 64-bit from
    the first read: a driver reload at 3.9e9 words is a reset, not a wrap of the 32-bit range."""
    source = InfinibandSource(connectx.ib_root)
    connectx.set("mlx5_0", 1, "port_xmit_data", 3_900_000_000)
    before = value(source.poll_ports(), "gpumon_ib_port_transmit_bytes_total", "mlx5_0")
    connectx.reset("mlx5_0", 1)
    connectx.add("mlx5_0", 1, "port_xmit_data", 10)
    after = value(source.poll_ports(), "gpumon_ib_port_transmit_bytes_total", "mlx5_0")
    assert after - before == 10 * 4


def test_a_pma_without_ietf_counters_widens_at_2_32(tmp_path: Path) -> None:
    """Without unicast/multicast files sysfs does not say whether the data counters are 32- or
    64-bit: they count as 32-bit (pinned at 2^32 - 1 is saturated) until a larger value proves 64."""
    fs = IbSysfs(tmp_path)
    fs.add_device("mlx5_3", ["pci0000:00", "0000:00:07.0", "0000:0b:00.0"], pma="noietf")
    source = InfinibandSource(fs.ib_root)
    fs.set("mlx5_3", 1, "port_rcv_data", MAX32)
    assert value(source.poll_ports(), "gpumon_ib_port_pma_saturated", "mlx5_3", counter="port_rcv_data") == 1
    fs.add("mlx5_3", 1, "port_rcv_data", 100)
    samples = source.poll_ports()
    assert value(samples, "gpumon_ib_port_receive_bytes_total", "mlx5_3") == (MAX32 + 100) * 4
    assert value(samples, "gpumon_ib_port_pma_saturated", "mlx5_3", counter="port_rcv_data") == 0


def test_counter_total_rules() -> None:
    c = CounterTotal(16)  # a PMA counter: any drop is a clear, the new value is the increase
    c.update(60_000)
    assert c.update(5) == 60_005 and c.resets == 1 and c.wraps == 0
    c = CounterTotal(32)  # ... even from above 2^31, where a wrap would look short
    c.update(3_500_000_000)
    assert c.update(7) == 3_500_000_007 and c.resets == 1
    assert c.update(MAX32) == 3_500_000_000 + MAX32 and c.saturated  # pinned: counts nothing more
    assert c.update(MAX32) == 3_500_000_000 + MAX32 and c.saturated
    c = CounterTotal(32, saturates=False)  # an mlx5 Q counter wraps
    c.update(MAX32 - 9)
    assert c.update(4) == MAX32 + 5 and c.wraps == 1 and not c.saturated
    c = CounterTotal(32, saturates=False)
    c.update(1_000_000)
    assert c.update(10) == 1_000_010 and c.resets == 1  # huge forward distance: reset
    c = CounterTotal(32, widening=True)
    c.update(1 << 33)
    assert c.bits == 64 and not c.widening
    assert c.update(5) == (1 << 33) + 5 and c.resets == 1


def test_reset_is_not_mistaken_for_a_wrap(connectx: IbSysfs) -> None:
    source = InfinibandSource(connectx.ib_root, slow_interval=0)
    connectx.set("mlx5_0", 1, "port_xmit_data", 6_000_000_000)
    connectx.set("mlx5_0", 1, "symbol_error", 100)
    first = source.poll_ports()
    connectx.set("mlx5_0", 1, "port_xmit_data", 1000)  # perfquery -R, or a driver reload
    connectx.set("mlx5_0", 1, "symbol_error", 3)
    second = source.poll_ports()
    assert (value(second, "gpumon_ib_port_transmit_bytes_total", "mlx5_0")
            - value(first, "gpumon_ib_port_transmit_bytes_total", "mlx5_0")) == 4000
    assert value(second, "gpumon_ib_port_symbol_errors_total", "mlx5_0") == 103


# --- RoCE data counters are RDMA-only (item 5) --------------------------------------------------------


def test_roce_data_counters_are_documented_as_rdma_only() -> None:
    """mlx5 answers the PMA from the vport's IB (RDMA) counters, so on RoCE these miss TCP/IP traffic."""
    for name in ("transmit_bytes", "receive_bytes", "transmit_packets", "receive_packets"):
        help_ = catalog.BY_NAME[f"gpumon_ib_port_{name}_total"].help
        assert "RoCE" in help_ and "RDMA" in help_, name
    doc = (Path(__file__).resolve().parents[2] / "docs" / "interconnect.md").read_text()
    assert "RDMA traffic only" in doc


# --- hw_counters: device level, widths, absent counters (item 6) -------------------------------------


def test_switchdev_device_level_hw_counters(tmp_path: Path) -> None:
    """mlx5 in switchdev mode keeps its Q, congestion and ICRC counters under <device>/hw_counters/
    and only the vport's Q counters per port: both are read, under names that cannot be confused."""
    fs = IbSysfs(tmp_path)
    fs.add_device("mlx5_2", ["pci0000:00", "0000:00:05.0", "0000:09:00.0"], switchdev=True, link_layer="Ethernet")
    fs.set("mlx5_2", 0, "np_cnp_sent", 40)
    fs.set("mlx5_2", 0, "out_of_sequence", 7)
    fs.set("mlx5_2", 1, "vport_out_of_sequence", 2)
    samples = InfinibandSource(fs.ib_root).poll_ports()
    assert "ib:mlx5_2" in {s.unit for s in samples}
    assert value(samples, "gpumon_ib_device_hw_events_total", "mlx5_2", None, counter="np_cnp_sent") == 40
    assert value(samples, "gpumon_ib_device_hw_events_total", "mlx5_2", None, counter="out_of_sequence") == 7
    assert value(samples, "gpumon_ib_port_hw_events_total", "mlx5_2", counter="vport_out_of_sequence") == 2
    device = [dict(labels) for (name, labels) in values(samples) if name == "gpumon_ib_device_hw_events_total"]
    assert {d["counter"] for d in device} >= {"rx_icrc_encapsulated", "rp_cnp_handled"}
    assert all("port" not in d and d["counter"] != "lifespan" for d in device)


def test_rx_icrc_encapsulated_is_64_bit(connectx: IbSysfs) -> None:
    """rx_icrc_encapsulated comes from PPCNT as a 64-bit value: a reset just below 2^32 is a reset."""
    source = InfinibandSource(connectx.ib_root)
    connectx.set("mlx5_0", 1, "rx_icrc_encapsulated", 4_200_000_000)
    before = value(source.poll_ports(), "gpumon_ib_port_hw_events_total", "mlx5_0", counter="rx_icrc_encapsulated")
    connectx.reset("mlx5_0", 1, "rx_icrc_encapsulated")  # driver reload
    connectx.add("mlx5_0", 1, "rx_icrc_encapsulated", 5)
    after = value(source.poll_ports(), "gpumon_ib_port_hw_events_total", "mlx5_0", counter="rx_icrc_encapsulated")
    assert after - before == 5


def test_32_bit_q_counters_wrap(tmp_path: Path) -> None:
    """mlx5 Q counters (per port, and the vport ones in switchdev mode) are 32-bit and wrap."""
    fs = IbSysfs(tmp_path)
    fs.add_device("mlx5_0", ["pci0000:00", "0000:00:01.0", "0000:01:00.0"])
    fs.add_device("mlx5_2", ["pci0000:00", "0000:00:05.0", "0000:09:00.0"], switchdev=True)
    source = InfinibandSource(fs.ib_root)
    cases = [("mlx5_0", 1, "out_of_sequence", "gpumon_ib_port_hw_events_total"),
             ("mlx5_2", 1, "vport_packet_seq_err", "gpumon_ib_port_hw_events_total"),
             ("mlx5_2", 0, "local_ack_timeout_err", "gpumon_ib_device_hw_events_total")]
    for dev, port, counter, _ in cases:
        fs.set(dev, port, counter, MAX32 - 4)
    before = source.poll_ports()
    for dev, port, counter, _ in cases:
        fs.add(dev, port, counter, 20)
        assert fs.raw(dev, port, counter) == 15
    after = source.poll_ports()
    for dev, port, counter, metric in cases:
        at = str(port) if port else None
        assert value(after, metric, dev, at, counter=counter) - value(before, metric, dev, at, counter=counter) == 20


def test_hw_counters_of_other_drivers_are_64_bit(plain: IbSysfs) -> None:
    """The 32-bit table is mlx5's: another driver's `duplicate_request` (rxe keeps it in an atomic64)
    reset from just under 2^32 is a reset, not a wrap."""
    hw = plain.ports[("mthca0", 1)].path / "hw_counters"
    hw.mkdir()
    (hw / "duplicate_request").write_text("4200000000\n")
    source = InfinibandSource(plain.ib_root)
    before = value(source.poll_ports(), "gpumon_ib_port_hw_events_total", "mthca0", counter="duplicate_request")
    (hw / "duplicate_request").write_text("3\n")
    after = value(source.poll_ports(), "gpumon_ib_port_hw_events_total", "mthca0", counter="duplicate_request")
    assert after - before == 3


class LogRecorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, object]]] = []

    def info(self, event: str, **kw: object) -> None:
        self.lines.append((event, kw))

    def warning(self, event: str, **kw: object) -> None:
        self.lines.append((event, kw))


def test_no_pma_counters_are_absent_and_logged_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A device without a PMA (iWARP, a ConnectX-3 VF) answers `N/A (no PMA)` in every counters/ file on
    older kernels: no series, no read error, one log line per file however often it is polled."""
    fs = IbSysfs(tmp_path)
    fs.add_device("i40iw0", ["pci0000:00", "0000:00:08.0", "0000:0c:00.0"], connectx=False, pma="none",
                  link_layer="Ethernet")
    recorder = LogRecorder()
    monkeypatch.setattr(infiniband, "log", recorder)
    clock = FakeClock()
    source = InfinibandSource(fs.ib_root, clock=clock, slow_interval=1, rescan_interval=2)
    for _ in range(5):  # polls, slow rounds and two rescans
        samples = source.poll_ports()
        clock.advance(1)
    assert value(samples, "gpumon_ib_port_up", "i40iw0") == 1
    assert not {m for m in names(samples) if m.endswith("_total")}
    assert "gpumon_ib_port_pma_saturated" not in names(samples)
    assert source.read_errors == 0
    assert [Path(p).name for p in source.absent_counters] == sorted(PMA_BITS)
    absent = [kw["counter"] for event, kw in recorder.lines if "absent" in event]
    assert sorted(absent) == sorted(PMA_BITS)


@pytest.mark.parametrize("counter", ["VL15_dropped", "port_xmit_wait"])
def test_einval_counter_is_absent_and_not_read_again(connectx: IbSysfs, monkeypatch: pytest.MonkeyPatch,
                                                     counter: str) -> None:
    """On newer kernels a counter the PMA does not answer fails with EINVAL (a ConnectX-7 port in switch mode
    does this for VL15_dropped, node_exporter#3265): no series, no error, and no failed MAD at every
    poll after the first, in either tier."""
    real_pread = os.pread
    failing = str(connectx.ports[("mlx5_0", 1)].path / "counters" / counter)
    attempts = []

    def pread(fd: int, n: int, offset: int) -> bytes:
        if os.readlink(f"/proc/self/fd/{fd}") == failing:
            attempts.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", pread)
    clock = FakeClock()
    source = InfinibandSource(connectx.ib_root, clock=clock, slow_interval=0)
    for _ in range(3):
        samples = source.poll_ports()
        clock.advance(1)
    assert len(attempts) == 1
    assert pma_metric(counter) not in names(samples, "mlx5_0")
    assert pma_metric(counter) in names(samples, "mlx5_1")
    assert value(samples, "gpumon_ib_port_symbol_errors_total", "mlx5_0") == 0
    assert source.read_errors == 0 and source.absent_counters == [failing]


# --- the counters node_exporter users have (item 7) -------------------------------------------------


def test_node_exporter_counters_and_identity(connectx: IbSysfs) -> None:
    expected = {"local_link_integrity_errors": 3, "excessive_buffer_overrun_errors": 2,
                "port_rcv_remote_physical_errors": 11, "port_rcv_switch_relay_errors": 12,
                "port_xmit_constraint_errors": 13, "port_rcv_constraint_errors": 14, "VL15_dropped": 15,
                "unicast_xmit_packets": 1001, "unicast_rcv_packets": 1002, "multicast_xmit_packets": 1003,
                "multicast_rcv_packets": 1004}
    for counter, n in expected.items():
        connectx.set("mlx5_0", 1, counter, n)
    samples = InfinibandSource(connectx.ib_root).poll_ports()
    for counter, n in expected.items():
        assert value(samples, pma_metric(counter), "mlx5_0") == n, counter
    info = [dict(labels) for (name, labels) in values(samples) if name == "gpumon_ib_port_info"]
    assert info[0]["board_id"] == "MT_0000000838" and info[0]["node_guid"].startswith("0c42:a103:")


# --- tiers: each counters/ read is a MAD (item 8) ----------------------------------------------------


def test_error_counters_are_read_in_the_slow_tier(connectx: IbSysfs, monkeypatch: pytest.MonkeyPatch) -> None:
    """Traffic counters, port_xmit_wait and hw_counters every poll; error counters, unicast/multicast
    and the link rate every slow_interval: a fast poll sends no MAD for them."""
    real_pread = os.pread
    read: list[str] = []

    def pread(fd: int, n: int, offset: int) -> bytes:
        read.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", pread)
    clock = FakeClock()
    source = InfinibandSource(connectx.ib_root, clock=clock, slow_interval=30)
    connectx.set("mlx5_0", 1, "symbol_error", 9)
    first = source.poll_ports()
    assert {s.tier for s in first} == {"fast", "slow"}
    assert value(first, "gpumon_ib_port_symbol_errors_total", "mlx5_0") == 9
    slow_files = {c for c, (m, _, _) in infiniband.PMA_COUNTERS.items() if catalog.BY_NAME[m].tier is Tier.SLOW}
    assert slow_files >= {"symbol_error", "link_downed", "port_rcv_errors", "VL15_dropped", "unicast_xmit_packets"}
    assert slow_files.isdisjoint({"port_xmit_data", "port_rcv_data", "port_xmit_packets", "port_rcv_packets",
                                  "port_xmit_wait"})
    assert slow_files | {"rate"} <= set(read)
    for _ in range(29):
        read.clear()
        clock.advance(1)
        fast = source.poll_ports()
        assert {s.tier for s in fast} == {"fast"}
        assert read and not (slow_files | {"rate"}) & set(read)
        assert {"port_xmit_data", "port_xmit_wait", "np_cnp_sent", "state"} <= set(read)
        assert "gpumon_ib_port_symbol_errors_total" not in names(fast)
    connectx.add("mlx5_0", 1, "symbol_error", 1)
    clock.advance(1)
    again = source.poll_ports()
    assert {s.tier for s in again} == {"fast", "slow"}
    assert value(again, "gpumon_ib_port_symbol_errors_total", "mlx5_0") == 10


def test_link_going_down(connectx: IbSysfs) -> None:
    source = InfinibandSource(connectx.ib_root, slow_interval=0)
    up = source.poll_ports()
    assert value(up, "gpumon_ib_port_up", "mlx5_0") == 1
    connectx.link_down("mlx5_0", 1)
    down = source.poll_ports()
    assert value(down, "gpumon_ib_port_up", "mlx5_0") == 0
    assert value(down, "gpumon_ib_port_state", "mlx5_0") == 1
    assert value(down, "gpumon_ib_port_physical_state", "mlx5_0") == 2
    assert value(down, "gpumon_ib_port_link_downed_total", "mlx5_0") == 1
    assert value(down, "gpumon_ib_port_up", "mlx5_1") == 1  # the other port is unaffected


def test_unreadable_or_garbage_files_are_skipped(connectx: IbSysfs) -> None:
    source = InfinibandSource(connectx.ib_root)
    port = connectx.ports[("mlx5_0", 1)].path
    (port / "counters" / "port_rcv_data").write_text("garbage\n")
    (port / "rate").write_text("unknown\n")
    (port / "counters" / "symbol_error").unlink()
    names_ = names(source.poll_ports(), "mlx5_0")
    assert "gpumon_ib_port_receive_bytes_total" not in names_
    assert "gpumon_ib_port_rate_bytes_per_second" not in names_
    assert "gpumon_ib_port_symbol_errors_total" not in names_
    assert "gpumon_ib_port_transmit_bytes_total" in names_
    assert source.read_errors == 1


def test_ports_that_vanish_and_appear(connectx: IbSysfs) -> None:
    clock = FakeClock()
    source = InfinibandSource(connectx.ib_root, clock=clock, rescan_interval=60)

    def units() -> list[str]:
        return sorted({s.unit for s in source.poll_ports()})

    assert units() == ["ib:mlx5_0:1", "ib:mlx5_1:1"]
    connectx.add_device("mlx5_2", ["pci0000:00", "0000:00:05.0", "0000:09:00.0"])
    clock.advance(1)
    assert units() == ["ib:mlx5_0:1", "ib:mlx5_1:1"]  # discovery is not repeated every poll ...
    clock.advance(60)
    assert units() == ["ib:mlx5_0:1", "ib:mlx5_1:1", "ib:mlx5_2:1"]  # ... but rescans
    shutil.rmtree(connectx.ib_root / "mlx5_1")
    clock.advance(60)
    assert units() == ["ib:mlx5_0:1", "ib:mlx5_2:1"]


def test_a_port_whose_files_fail_is_withdrawn_and_rescanned(connectx: IbSysfs,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    source = InfinibandSource(connectx.ib_root, clock=clock, rescan_interval=3600)
    assert len(source.poll_ports()) == 4
    real_pread = os.pread
    gone = str(connectx.ports[("mlx5_1", 1)].path)

    def pread(fd: int, n: int, offset: int) -> bytes:  # a removed sysfs node answers ENODEV
        if os.readlink(f"/proc/self/fd/{fd}").startswith(gone):
            raise OSError(errno.ENODEV, "No such device")
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", pread)
    clock.advance(1)
    samples = {(s.unit, s.tier): s for s in source.poll_ports()}
    # no series at all in either tier, not stale ones
    assert samples[("ib:mlx5_1:1", "fast")].values == samples[("ib:mlx5_1:1", "slow")].values == []
    assert samples[("ib:mlx5_0:1", "fast")].values
    shutil.rmtree(connectx.ib_root / "mlx5_1")
    monkeypatch.setattr(os, "pread", real_pread)
    clock.advance(1)
    assert {s.unit for s in source.poll_ports()} == {"ib:mlx5_0:1"}  # rescanned at once, not in an hour


def test_a_port_that_comes_back_gets_its_slow_counters_at_once(connectx: IbSysfs,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The slow series left with the port; they return with it, not up to slow_interval later."""
    clock = FakeClock()
    source = InfinibandSource(connectx.ib_root, clock=clock, rescan_interval=3600, slow_interval=30)
    source.poll_ports()
    real_pread = os.pread
    state = str(connectx.ports[("mlx5_1", 1)].path / "state")

    def pread(fd: int, n: int, offset: int) -> bytes:
        if os.readlink(f"/proc/self/fd/{fd}") == state:
            raise OSError(errno.ENODEV, "No such device")
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", pread)
    clock.advance(1)
    source.poll_ports()
    monkeypatch.setattr(os, "pread", real_pread)
    clock.advance(1)
    back = source.poll_ports()
    assert ("ib:mlx5_1:1", "slow") in {(s.unit, s.tier) for s in back}
    assert ("ib:mlx5_0:1", "slow") not in {(s.unit, s.tier) for s in back}


def test_polls_from_many_threads_stay_consistent(connectx: IbSysfs) -> None:
    source = InfinibandSource(connectx.ib_root)
    connectx.set("mlx5_0", 1, "port_xmit_data", 100)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: source.poll_ports(), range(32)))
    assert {value(r, "gpumon_ib_port_transmit_bytes_total", "mlx5_0") for r in results} == {400}


@pytest.mark.parametrize(("text", "expected"), [
    ("100 Gb/sec (4X EDR)", (100e9, 4)), ("2.5 Gb/sec (1X SDR)", (2.5e9, 1)),
    ("400 Gb/sec (4X NDR)", (400e9, 4)), ("25 Gb/sec", (25e9, None)), ("", None), ("fast", None)])
def test_parse_rate(text: str, expected: tuple[float, int | None] | None) -> None:
    assert parse_rate(text) == expected


def test_normalize_bus_id() -> None:
    assert normalize_bus_id("00000000:1B:00.0") == "0000:1b:00.0"
    assert normalize_bus_id("0000:1b:00.0") == "0000:1b:00.0"
    assert normalize_bus_id("not a bdf") is None


def test_gpu_affinity(tmp_path: Path) -> None:
    fs = build_connectx(tmp_path)
    fs.add_device("mthca0", ["pci0000:00", "0000:00:03.0", "0000:05:00.0"], connectx=False)
    gpus = [gpu(0, "00000000:03:00.0"), gpu(1, "00000000:83:00.0"), gpu(2, "00000000:99:00.0")]
    found = {(a.gpu.index, a.ib_device): a for a in gpu_affinity(gpus, ib_root=fs.ib_root, pci_root=fs.pci_root)}
    assert {k for k in found if k[0] == 2} == set()  # a GPU sysfs does not know is skipped
    near = found[(0, "mlx5_0")]
    assert (near.distance, near.relation, near.nearest, near.ib_pci_bus_id) == (4, "switch", True, "0000:04:00.0")
    assert (found[(0, "mthca0")].relation, found[(0, "mthca0")].nearest) == ("host_bridge", False)
    assert found[(0, "mthca0")].distance == 6
    assert found[(0, "mlx5_1")].relation == "system" and not found[(0, "mlx5_1")].nearest
    assert found[(1, "mlx5_1")].nearest and not found[(1, "mlx5_0")].nearest
    sample = affinity_sample(found.values())
    labels = [dict(lbl) for name, lbl, _ in sample.values if dict(lbl)["nearest"] == "true"]
    assert sorted((x["gpu"], x["ib_device"]) for x in labels) == [("0", "mlx5_0"), ("1", "mlx5_1")]


def test_affinity_across_roots_on_one_numa_node(tmp_path: Path) -> None:
    fs = IbSysfs(tmp_path)
    fs.add_pci(["pci0000:00", "0000:00:01.0", "0000:01:00.0"], numa_node=0)
    fs.add_device("mlx5_0", ["pci0000:10", "0000:10:01.0", "0000:11:00.0"], numa_node=0)
    [a] = gpu_affinity([gpu(0, "0000:01:00.0")], ib_root=fs.ib_root, pci_root=fs.pci_root)
    assert (a.relation, a.distance, a.nearest) == ("numa_node", 6, True)


def test_polls_do_not_rediscover_ports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Discovery (directory listing) happens at open and on rescan, not on every poll: that is what
    keeps a poll of 8 NICs cheap (docs/interconnect.md; tests do not time)."""
    fs = IbSysfs(tmp_path)
    for i in range(8):
        fs.add_device(f"mlx5_{i}", ["pci0000:00", f"0000:00:{i + 1:02x}.0", f"0000:{i + 1:02x}:00.0"])
    source = InfinibandSource(fs.ib_root)
    source.poll_ports()
    listings = []
    real = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: (listings.append(self), real(self))[1])
    for _ in range(5):
        source.poll_ports()
    source.close()
    assert listings == []
