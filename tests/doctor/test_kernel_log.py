"""XIDs since boot from the kernel log, read as /dev/kmsg hands it out: one record per read, continuation
lines, EPIPE when records were overwritten, EAGAIN at the end, EPERM under dmesg_restrict."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from gpumon.cli import main
from gpumon.doctor import host, kernel_log
from gpumon.doctor.checks import Verdict
from gpumon.doctor.kernel_log import KernelLog, Unreadable, XidsSinceBoot
from gpumon.model import Device

GPU0 = Device(0, "GPU-a", "NVIDIA H200", "00000000:18:00.0", "hopper", True, "580", "13.0")
HOUR_US = 3_600_000_000


def record(seq: int, us: int, message: str) -> str:
    return f"3,{seq},{us},-;{message}\n SUBSYSTEM=pci\n DEVICE=+pci:0000:18:00.0\n"


def saved_log(path: Path, *records: str) -> Path:
    path.write_text("6,0,1000,-;Linux version 6.1.0\n" + "".join(records)  # the kernel's first record: seq 0
                    + "6,99,2000,-;NVRM: loading NVIDIA UNIX x86_64 Kernel Module  580.159.04\n")
    return path


def xids(path: Path) -> XidsSinceBoot:
    seen = XidsSinceBoot(KernelLog(path))
    seen.read()
    return seen


def test_the_drivers_xid_lines_are_read_with_their_gpu_and_time(tmp_path: Path) -> None:
    log = saved_log(tmp_path / "kmsg",
                    record(2, 5 * HOUR_US, "NVRM: Xid (PCI:0000:18:00): 13, pid=4242, name=python, Graphics SM "
                           "Warp Exception on (GPC 0, TPC 1, SM 0)"),
                    record(3, 5 * HOUR_US + 1, "NVRM: Xid (PCI:0000:3B:00 GPU-I:05): 43, pid=77, name=train, Ch 8"),
                    record(4, 5 * HOUR_US + 2, "NVRM: Xid (PCI:0000:18:00): 13, pid=4243, name=python, again"),
                    record(5, 5 * HOUR_US + 3, "nvidia-peermem: not an XID: 13,"))
    seen = xids(log)
    assert set(seen.seen) == {("0000:18:00", 13), ("0000:3b:00", 43)}
    assert seen.seen[("0000:18:00", 13)].count == 2 and seen.seen[("0000:18:00", 13)].text.endswith("again")
    found = host.kernel_xids([GPU0], seen, now_since_boot=5 * 3600 + 60)
    assert found.verdict is Verdict.WARN  # application XIDs in the last hour
    (x13,) = [x for x in found.evidence["xids"] if x["xid"] == 13]
    assert x13["gpu"] == 0 and x13["count"] == 2 and x13["seconds_ago"] == 60 and "out-of-range" in x13["meaning"]
    (x43,) = [x for x in found.evidence["xids"] if x["xid"] == 43]
    assert x43["gpu"] is None and x43["pci"] == "0000:3b:00"
    later = host.kernel_xids([GPU0], seen, now_since_boot=9 * 3600)
    assert later.verdict is Verdict.OK and "older" in later.summary


def test_an_xid_79_of_a_gpu_nvml_no_longer_sees_fails(tmp_path: Path) -> None:
    log = saved_log(tmp_path / "kmsg", record(7, 2 * HOUR_US, "NVRM: Xid (PCI:0000:2a:00): 79, pid='<unknown>', "
                                              "name=<unknown>, GPU has fallen off the bus."))
    found = host.kernel_xids([GPU0], xids(log), now_since_boot=2 * 3600 + 600)
    assert found.verdict is Verdict.FAIL
    assert found.summary.startswith("XID 79 on 0000:2a:00 (not seen by NVML) 10 min ago")
    assert "power-cycle" in found.next_step
    # The same, a day later: still worth a look, no longer an emergency.
    assert host.kernel_xids([GPU0], xids(log), now_since_boot=26 * 3600).verdict is Verdict.WARN


def test_no_xid_is_ok_and_an_unreadable_log_does_not_apply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert host.kernel_xids([GPU0], xids(saved_log(tmp_path / "kmsg")), 10.0).verdict is Verdict.OK
    missing = xids(tmp_path / "absent")
    found = host.kernel_xids([GPU0], missing, 10.0)
    assert found.verdict is Verdict.NOT_APPLICABLE and "does not exist" in found.summary
    assert host.kernel_xids([GPU0], None, 10.0).verdict is Verdict.NOT_APPLICABLE

    def denied(*args: Any) -> int:
        raise PermissionError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(os, "open", denied)
    assert "CAP_SYSLOG" in host.kernel_xids([GPU0], xids(tmp_path / "kmsg"), 10.0).summary


class KmsgReads:
    """/dev/kmsg's read(2): one record each, EPIPE once where records were lost, then EAGAIN."""

    def __init__(self, records: list[str | OSError]) -> None:
        self.records = records

    def __call__(self, fd: int, size: int) -> bytes:
        if not self.records:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        head = self.records.pop(0)
        if isinstance(head, OSError):
            raise head
        return head.encode()


def test_records_lost_under_a_reader_and_later_records_are_read(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kmsg").write_text("")
    reads = KmsgReads([record(1, HOUR_US, "NVRM: Xid (PCI:0000:18:00): 13, pid=1, a"),
                       OSError(errno.EPIPE, "Broken pipe"),
                       record(9, HOUR_US + 5, "NVRM: Xid (PCI:0000:18:00): 48, pid=1, DBE")])
    monkeypatch.setattr(os, "read", reads)
    seen = XidsSinceBoot(KernelLog(tmp_path / "kmsg"))
    seen.read()
    assert set(seen.seen) == {("0000:18:00", 13), ("0000:18:00", 48)}
    reads.records.append(record(10, HOUR_US + 9, "NVRM: Xid (PCI:0000:18:00): 48, pid=1, DBE"))
    seen.read()  # the daemon's next round: only the new record, added to what was seen
    assert seen.seen[("0000:18:00", 48)].count == 2 and seen.seen[("0000:18:00", 13)].count == 1
    assert host.kernel_xids([GPU0], seen, 3600.0 + 20).verdict is Verdict.FAIL


def test_a_log_that_never_ends_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kmsg").write_text("")
    monkeypatch.setattr(kernel_log, "MAX_RECORDS", 50)
    monkeypatch.setattr(os, "read", lambda fd, size: record(1, 1, "NVRM: Xid (PCI:0000:18:00): 13, x").encode())
    assert xids(tmp_path / "kmsg").seen[("0000:18:00", 13)].count == 50

    def broken(fd: int, size: int) -> bytes:
        raise OSError(errno.EPIPE, "Broken pipe")
    monkeypatch.setattr(os, "read", broken)  # EPIPE for ever: ends too
    assert xids(tmp_path / "kmsg").seen == {}


def test_junk_is_skipped_not_raised(tmp_path: Path) -> None:
    log = tmp_path / "kmsg"
    log.write_bytes(b"\xff\xfe;;;\nno semicolon\n3,x,y,-;NVRM: Xid (PCI:0000:18:00): 13, bad time\n"
                    b"3,1,5,-;NVRM: Xid (PCI:zzzz:18:00): 13, bad address\n"
                    # digits str.isdigit() takes and int() refuses: superscript two, Arabic-Indic five
                    + "3,1,\u00b2,-;NVRM: Xid (PCI:0000:18:00): 13, superscript time\n"
                      "3,\u0665,5,-;NVRM: Xid (PCI:0000:18:00): 13, Arabic-Indic sequence\n"
                      "3,2,5,-;NVRM: Xid (PCI:0000:18:00): \u00b9\u00b3, superscript XID\n".encode()
                    + os.urandom(4096).replace(b"\n", b" "))
    assert xids(log).seen == {}


def test_a_wrapped_ring_buffer_is_not_since_boot(tmp_path: Path) -> None:
    """The kernel's first record has sequence 0; a first record read with a later one means the ring
    buffer overwrote what came before it, and "since boot" would not be true."""
    whole = saved_log(tmp_path / "whole")
    found = host.kernel_xids([GPU0], xids(whole), now_since_boot=10 * 3600)
    assert found.summary == "no XID in the kernel log since boot" and "oldest_record_seconds_ago" not in found.evidence
    wrapped = tmp_path / "wrapped"
    wrapped.write_text(record(52_000, 7 * HOUR_US, "usb 1-1: new device")
                       + record(52_001, 8 * HOUR_US, "NVRM: Xid (PCI:0000:18:00): 13, pid=1, late"))
    found = host.kernel_xids([GPU0], xids(wrapped), now_since_boot=10 * 3600)
    assert found.evidence["oldest_record_seconds_ago"] == 3 * 3600
    assert found.verdict is Verdict.OK
    assert found.summary.startswith("only older application XIDs since 3 h ago (older records were overwritten)")
    only_noise = tmp_path / "noise"
    only_noise.write_text(record(9, 9 * HOUR_US + 1_000_000, "usb 1-1: new device"))
    found = host.kernel_xids([GPU0], xids(only_noise), now_since_boot=9 * 3600 + 91)
    assert found.summary == "no XID in the kernel log since 90 s ago (older records were overwritten)"
    assert "since boot" not in json.dumps(found.evidence)


def test_a_large_ring_is_read_a_round_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's first read of a large ring goes on over several rounds, ROUND_RECORDS records each, and
    says nothing is ok before it has read all of it."""
    ring = [record(i, i * 1000, f"NVRM: Xid (PCI:0000:18:00): 48, pid={i}, DBE" if i == 9 else f"line {i}")
            for i in range(12)]
    (tmp_path / "kmsg").write_text("")
    reads = KmsgReads(list(ring))
    monkeypatch.setattr(os, "read", reads)
    seen = XidsSinceBoot(KernelLog(tmp_path / "kmsg"))
    seen.read(5)
    assert len(reads.records) == 7 and not seen.caught_up
    first = host.kernel_xids([GPU0], seen, 1.0)
    assert first.verdict is Verdict.NOT_APPLICABLE and first.evidence["records_read"] == 5
    seen.read(5)  # records 5-9: the DBE
    assert host.kernel_xids([GPU0], seen, 1.0).verdict is Verdict.FAIL
    seen.read(5)
    assert seen.caught_up and seen.log.records_read == 12 and "records_read" not in host.kernel_xids(
        [GPU0], seen, 1.0).evidence
    # A saved log's chunks hold many records, cut anywhere: read in parts, the same as read whole.
    monkeypatch.undo()
    big = saved_log(tmp_path / "big", *(record(i, i, f"NVRM: Xid (PCI:0000:18:00): {i % 7}, pid={i}, "
                                               + "x" * (i % 300)) for i in range(2, 3000)))
    whole, parts = xids(big), XidsSinceBoot(KernelLog(big))
    rounds = 0
    while not parts.caught_up:
        parts.read(7)
        rounds += 1
    assert parts.seen == whole.seen and parts.log.records_read == whole.log.records_read == 3000
    assert rounds == 3000 // 7 + 1


def test_the_daemon_reads_round_records_per_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gpumon.doctor.service import DoctorService
    from gpumon.store import Store

    (tmp_path / "kmsg").write_text("")
    reads = KmsgReads([record(i, i, f"line {i}") for i in range(10)])
    monkeypatch.setattr(os, "read", reads)
    monkeypatch.setattr(kernel_log, "ROUND_RECORDS", 4)
    service = DoctorService(Store(10), lambda: [GPU0], replayed=False, sysfs=tmp_path, kmsg=tmp_path / "kmsg")
    service.on_round(kernel_log_round())
    assert len(reads.records) == 6
    service.on_round(kernel_log_round())
    service.on_round(kernel_log_round())
    assert not reads.records and service.xids is not None and service.xids.caught_up


def kernel_log_round() -> Any:
    import time

    from gpumon.rounds import Round
    return Round("slow", time.time(), True)


def test_a_vmd_domain_is_named_as_nvml_names_it(tmp_path: Path) -> None:
    """Behind a VMD controller the PCI domain has five hex digits: the driver logs PCI:10000:e1:00, sysfs
    names 10000:e1:00.0, NVML 00010000:E1:00.0 (not domain 0000's e1:00)."""
    vmd = Device(1, "GPU-b", "NVIDIA H200", "00010000:E1:00.0", "hopper", True, "580", "13.0")
    domain0 = Device(2, "GPU-c", "NVIDIA H200", "00000000:E1:00.0", "hopper", True, "580", "13.0")
    log = saved_log(tmp_path / "kmsg", record(3, HOUR_US, "NVRM: Xid (PCI:10000:e1:00): 79, pid=1, fell off"),
                    record(4, HOUR_US, "NVRM: Xid (PCI:0000:E1:00): 13, pid=1, x"))
    found = host.kernel_xids([GPU0, vmd, domain0], xids(log), now_since_boot=3600 + 5)
    assert {(x["pci"], x["gpu"]) for x in found.evidence["xids"]} == {("10000:e1:00", 1), ("0000:e1:00", 2)}
    assert found.summary.startswith("XID 79 on GPU 1 ")
    for address in ("10000:e1:00.0", "0000:e1:00.0"):
        d = tmp_path / "sys" / "bus" / "pci" / "devices" / address
        d.mkdir(parents=True)
        (d / "vendor").write_text("0x10de\n")
        (d / "class").write_text("0x030200\n")
    assert host.gpus_missing([vmd, domain0], tmp_path / "sys", replayed=False).verdict is Verdict.OK
    assert host.gpus_missing([domain0], tmp_path / "sys", replayed=False).evidence["missing"] == ["10000:e1:00.0"]


def test_doctor_reads_a_saved_kernel_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = saved_log(tmp_path / "kmsg", record(2, 1000, "NVRM: Xid (PCI:0000:18:00): 13, pid=1, early"))
    code = main(["doctor", "--backend", "replay:demo", "--json", "--kmsg", str(log),
                 "--only", "hardware.xid_since_boot"])
    doc = json.loads(capsys.readouterr().out)
    (found,) = [f for f in doc["findings"] if f["check"] == "hardware.xid_since_boot"]
    assert found["evidence"]["xids"][0]["xid"] == 13 and code == doc["exit_status"]
    main(["doctor", "--backend", "replay:demo", "--json", "--only", "hardware.xid_since_boot"])
    (found,) = json.loads(capsys.readouterr().out)["findings"]
    assert found["verdict"] == "not_applicable" and "replayed" in found["summary"]
    with pytest.raises(Unreadable):
        KernelLog(tmp_path / "absent").xids()
