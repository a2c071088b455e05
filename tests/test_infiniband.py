"""The InfiniBand source against fake sysfs trees (tests/ibsysfs.py): metrics, rates, wrap, link down."""

from __future__ import annotations

import concurrent.futures
import errno
import os
import shutil
from pathlib import Path

import pytest

from gpumon import catalog
from gpumon.exporter import Exporter
from gpumon.model import Device, Sample
from gpumon.sources.infiniband import (
    InfinibandSource,
    WrapCounter,
    affinity_sample,
    gpu_affinity,
    normalize_bus_id,
    parse_rate,
)
from tests.conftest import FakeClock
from tests.ibsysfs import IbSysfs, build_connectx, build_plain

Values = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def values(samples: list[Sample]) -> Values:
    return {(name, labels): value for s in samples for name, labels, value in s.values}


def value(samples: list[Sample], metric: str, device: str, port: str = "1", **extra: str) -> float:
    want = {"device": device, "port": port, **extra}
    found = [v for (name, labels), v in values(samples).items()
             if name == metric and dict(labels).items() >= want.items()]
    assert len(found) == 1, f"{metric} {want}: {found}"
    return found[0]


def gpu(index: int, bus_id: str) -> Device:
    return Device(index, f"GPU-{index:08d}", "NVIDIA H200", bus_id, "hopper", True, "570.86", "12.8")


@pytest.fixture
def connectx(tmp_path: Path) -> IbSysfs:
    return build_connectx(tmp_path / "connectx")


@pytest.fixture
def plain(tmp_path: Path) -> IbSysfs:
    return build_plain(tmp_path / "plain")


def test_discovers_ports_and_units(connectx: IbSysfs, plain: IbSysfs) -> None:
    assert [p.unit for p in InfinibandSource(connectx.ib_root).open()] == ["ib:mlx5_0:1", "ib:mlx5_1:1"]
    assert [p.unit for p in InfinibandSource(plain.ib_root).open()] == ["ib:mthca0:1", "ib:mthca0:2"]


def test_missing_root_is_no_ports(tmp_path: Path) -> None:
    source = InfinibandSource(tmp_path / "nope")
    assert source.open() == []
    assert source.poll() == []


def test_connectx_metrics(connectx: IbSysfs) -> None:
    connectx.set("mlx5_0", 1, "port_xmit_data", 1_000_000)
    connectx.set("mlx5_0", 1, "port_rcv_data", 250)
    connectx.set("mlx5_0", 1, "port_xmit_wait", 77)
    connectx.set("mlx5_0", 1, "np_cnp_sent", 12)
    connectx.set("mlx5_0", 1, "out_of_sequence", 3)
    samples = InfinibandSource(connectx.ib_root).poll()
    assert [s.unit for s in samples] == ["ib:mlx5_0:1", "ib:mlx5_1:1"]
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
    assert "lifespan" not in hw and {"rp_cnp_handled", "local_ack_timeout_err"} <= hw


def test_plain_device_has_no_hw_counters(plain: IbSysfs) -> None:
    samples = InfinibandSource(plain.ib_root).poll()
    names = {name for name, _ in values(samples)}
    assert "gpumon_ib_port_hw_events_total" not in names
    assert value(samples, "gpumon_ib_port_rate_bytes_per_second", "mthca0", "2") == 40e9 / 8


def test_every_metric_is_in_the_catalog_and_renders(connectx: IbSysfs) -> None:
    source = InfinibandSource(connectx.ib_root)
    samples = source.poll()
    affinity = affinity_sample(gpu_affinity([gpu(0, "00000000:03:00.0")], ib_root=connectx.ib_root,
                                            pci_root=connectx.pci_root))
    for name, labels, _ in [v for s in [*samples, affinity] for v in s.values]:
        metric = catalog.BY_NAME[name]
        expected = set(metric.labels) | ({"gpu", "uuid"} if metric.per_gpu else set())
        assert {k for k, _ in labels} == expected, name
    text = Exporter(process_metrics=False).render([*samples, affinity]).text.decode()
    assert 'gpumon_ib_port_transmit_bytes_total{device="mlx5_0",port="1"} 0.0' in text
    assert "gpumon_ib_gpu_affinity_info{" in text


def test_rate_over_two_polls(connectx: IbSysfs) -> None:
    clock = FakeClock(1000.0)
    source = InfinibandSource(connectx.ib_root, clock=clock)
    connectx.set("mlx5_0", 1, "port_xmit_data", 5_000_000_000)  # > 2^32: a 64-bit counter
    first = source.poll()
    connectx.add("mlx5_0", 1, "port_xmit_data", 2_500_000_000)  # 10 GB in 10 s
    connectx.add("mlx5_0", 1, "port_rcv_packets", 1_000_000)
    connectx.add("mlx5_0", 1, "np_cnp_sent", 500)
    clock.advance(10.0)
    second = source.poll()
    dt = second[0].timestamp - first[0].timestamp
    assert dt == 10.0

    def rate(metric: str, **extra: str) -> float:
        return (value(second, metric, "mlx5_0", **extra) - value(first, metric, "mlx5_0", **extra)) / dt

    assert rate("gpumon_ib_port_transmit_bytes_total") == 1e9
    assert rate("gpumon_ib_port_receive_packets_total") == 100_000
    assert rate("gpumon_ib_port_hw_events_total", counter="np_cnp_sent") == 50


def test_32_bit_counter_wrap_keeps_a_running_total(plain: IbSysfs) -> None:
    clock = FakeClock()
    source = InfinibandSource(plain.ib_root, clock=clock)
    plain.set("mthca0", 1, "port_xmit_data", (1 << 32) - 1000)
    before = value(source.poll(), "gpumon_ib_port_transmit_bytes_total", "mthca0")
    plain.add("mthca0", 1, "port_xmit_data", 250_000)  # wraps: the file now reads 249000
    assert plain.raw("mthca0", 1, "port_xmit_data") == 249_000
    clock.advance(1.0)
    after = value(source.poll(), "gpumon_ib_port_transmit_bytes_total", "mthca0")
    assert after - before == 250_000 * 4
    # a whole 2^32 words between two polls cannot be seen: poll faster than 16 GiB per interval
    plain.add("mthca0", 1, "port_xmit_data", (1 << 32) + 10)
    clock.advance(1.0)
    assert value(source.poll(), "gpumon_ib_port_transmit_bytes_total", "mthca0") - after == 10 * 4


def test_32_bit_hw_counter_wrap(connectx: IbSysfs) -> None:
    source = InfinibandSource(connectx.ib_root)
    connectx.set("mlx5_0", 1, "out_of_sequence", (1 << 32) - 5)
    before = value(source.poll(), "gpumon_ib_port_hw_events_total", "mlx5_0", counter="out_of_sequence")
    connectx.add("mlx5_0", 1, "out_of_sequence", 20)
    after = value(source.poll(), "gpumon_ib_port_hw_events_total", "mlx5_0", counter="out_of_sequence")
    assert after - before == 20


def test_reset_is_not_mistaken_for_a_wrap(connectx: IbSysfs) -> None:
    source = InfinibandSource(connectx.ib_root)
    connectx.set("mlx5_0", 1, "port_xmit_data", 6_000_000_000)
    connectx.set("mlx5_0", 1, "symbol_error", 100)
    first = source.poll()
    connectx.set("mlx5_0", 1, "port_xmit_data", 1000)  # perfquery -R, or a driver reload
    connectx.set("mlx5_0", 1, "symbol_error", 3)
    second = source.poll()
    assert (value(second, "gpumon_ib_port_transmit_bytes_total", "mlx5_0")
            - value(first, "gpumon_ib_port_transmit_bytes_total", "mlx5_0")) == 4000
    assert value(second, "gpumon_ib_port_symbol_errors_total", "mlx5_0") == 103


def test_wrap_counter_rules() -> None:
    c = WrapCounter(32)
    assert c.update(10) == 10
    assert c.update((1 << 32) - 1) == (1 << 32) - 1
    assert c.update(4) == (1 << 32) + 4 and c.wraps == 1  # small forward distance: wrap
    c = WrapCounter(32)
    c.update(1_000_000)
    assert c.update(10) == 1_000_010 and c.resets == 1  # huge forward distance: reset
    c = WrapCounter(16)  # saturating PMA counter: a drop is always a reset
    c.update(65535)
    assert c.update(1) == 65536 and c.resets == 1
    c = WrapCounter(32, widening=True)
    c.update(1 << 33)
    assert c.bits == 64
    assert c.update(5) == (1 << 33) + 5 and c.resets == 1


def test_link_going_down(connectx: IbSysfs) -> None:
    source = InfinibandSource(connectx.ib_root)
    up = source.poll()
    assert value(up, "gpumon_ib_port_up", "mlx5_0") == 1
    connectx.link_down("mlx5_0", 1)
    down = source.poll()
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
    samples = source.poll()
    names = {name for (name, labels) in values(samples) if dict(labels)["device"] == "mlx5_0"}
    assert "gpumon_ib_port_receive_bytes_total" not in names
    assert "gpumon_ib_port_rate_bytes_per_second" not in names
    assert "gpumon_ib_port_symbol_errors_total" not in names
    assert "gpumon_ib_port_transmit_bytes_total" in names
    assert source.read_errors == 1


def test_ports_that_vanish_and_appear(connectx: IbSysfs) -> None:
    clock = FakeClock()
    source = InfinibandSource(connectx.ib_root, clock=clock, rescan_interval=60)
    assert len(source.poll()) == 2
    connectx.add_device("mlx5_2", ["pci0000:00", "0000:00:05.0", "0000:09:00.0"])
    clock.advance(1)
    assert len(source.poll()) == 2  # discovery is not repeated every poll ...
    clock.advance(60)
    assert [s.unit for s in source.poll()] == ["ib:mlx5_0:1", "ib:mlx5_1:1", "ib:mlx5_2:1"]  # ... but rescans
    shutil.rmtree(connectx.ib_root / "mlx5_1")
    clock.advance(60)
    assert [s.unit for s in source.poll()] == ["ib:mlx5_0:1", "ib:mlx5_2:1"]


def test_a_port_whose_files_fail_is_withdrawn_and_rescanned(connectx: IbSysfs,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    source = InfinibandSource(connectx.ib_root, clock=clock, rescan_interval=3600)
    assert len(source.poll()) == 2
    real_pread = os.pread
    gone = str(connectx.ports[("mlx5_1", 1)].path)

    def pread(fd: int, n: int, offset: int) -> bytes:  # a removed sysfs node answers ENODEV
        if os.readlink(f"/proc/self/fd/{fd}").startswith(gone):
            raise OSError(errno.ENODEV, "No such device")
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", pread)
    samples = {s.unit: s for s in source.poll()}
    assert samples["ib:mlx5_1:1"].values == []  # no series at all, not stale ones
    assert samples["ib:mlx5_0:1"].values
    shutil.rmtree(connectx.ib_root / "mlx5_1")
    monkeypatch.setattr(os, "pread", real_pread)
    assert [s.unit for s in source.poll()] == ["ib:mlx5_0:1"]  # rescanned at once, not in an hour


def test_polls_from_many_threads_stay_consistent(connectx: IbSysfs) -> None:
    source = InfinibandSource(connectx.ib_root)
    connectx.set("mlx5_0", 1, "port_xmit_data", 100)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: source.poll(), range(32)))
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
    keeps a poll of 8 NICs cheap (0.34 ms measured, docs/interconnect.md; tests do not time)."""
    fs = IbSysfs(tmp_path)
    for i in range(8):
        fs.add_device(f"mlx5_{i}", ["pci0000:00", f"0000:00:{i + 1:02x}.0", f"0000:{i + 1:02x}:00.0"])
    source = InfinibandSource(fs.ib_root)
    source.poll()
    listings = []
    real = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: (listings.append(self), real(self))[1])
    for _ in range(5):
        source.poll()
    source.close()
    assert listings == []
