"""XIDs from the kernel log since boot: the NVIDIA driver logs each one as
`NVRM: Xid (PCI:0000:18:00): 79, pid=..., GPU has fallen off the bus.`, including those from before
gpumon started and those of a GPU NVML no longer sees (an XID 79 is often the last word of a GPU that
fell off the bus). Since boot only while the ring buffer holds the kernel's first record (sequence 0):
once it wrapped, since its oldest record.

/dev/kmsg hands out one record per read(2), `priority,sequence,microseconds since boot,flags;message`
followed by continuation lines that start with a space; a record overwritten while we read yields EPIPE
once and the next read goes on with the oldest record left; the end is EAGAIN on a non-blocking file.
Reading it needs CAP_SYSLOG where kernel.dmesg_restrict is 1 (most distributions).
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

KMSG = Path("/dev/kmsg")
# The driver prints bus:device without the function; MIG adds " GPU-I:nn" inside the parentheses. The
# domain is "%04x": four hex digits, more behind a VMD controller (10000:e1:00).
_XID = re.compile(r"NVRM: Xid \(PCI:([0-9a-fA-F]{4,8}):([0-9a-fA-F]{2}:[0-9a-fA-F]{2})[^)]*\): ([0-9]+),\s*(.*)")
# priority,sequence,microseconds since boot[,flags...]: ASCII digits only (str.isdigit() takes "²", which
# int() then refuses).
_PREFIX = re.compile(r"([0-9]+),([0-9]+),([0-9]+)(?:,|\Z)")
MAX_RECORDS = 1 << 20  # a ring buffer holds far fewer records: a bound against a file that never ends
# The daemon reads the log in its slow round's callback, on the event loop, ~3.5 µs a record: a ring of
# 1 MB holds ~10,000 records, one of 16 MB (log_buf_len's largest common setting) ~150,000, half a
# second. So the first read of it is spread over rounds, this many each (~15 ms; benchmarks/doctor.py,
# docs/performance.md).
ROUND_RECORDS = 4096


class Unreadable(Exception):
    """The kernel log cannot be read; the message says why in words a person can act on."""


@dataclass(frozen=True)
class Record:
    sequence: int  # 0 for the kernel's first record since boot
    seconds_since_boot: float
    message: str


@dataclass(frozen=True)
class KernelXid:
    pci: str  # "0000:18:00", lower case: NVML's bus id without its function, as sysfs writes the domain
    xid: int
    seconds_since_boot: float
    text: str  # the rest of the driver's line


def records(lines: Iterable[str]) -> Iterator[Record]:
    """The records among /dev/kmsg's lines; a line that is not one (junk in a saved log) is skipped."""
    for line in lines:
        prefix, sep, message = line.partition(";")
        match = _PREFIX.match(prefix)
        if sep and match is not None:
            yield Record(int(match[2]), int(match[3]) / 1e6, message)


def xid_of(record: Record) -> KernelXid | None:
    match = _XID.search(record.message)
    if match is None:
        return None
    pci = f"{int(match[1], 16):04x}:{match[2].lower()}"  # "00000000:18:00" and "0000:18:00" alike
    return KernelXid(pci, int(match[3]), record.seconds_since_boot, match[4].strip()[:200])


def parse(lines: Iterable[str]) -> Iterator[KernelXid]:
    for record in records(lines):
        if (x := xid_of(record)) is not None:
            yield x


class KernelLog:
    """Reads new records on each `xids()` call, from where the last call left off: the daemon keeps one
    open and pays only for what the kernel logged since its last slow round, `limit` records at most
    (the rest stays for the next call)."""

    def __init__(self, path: Path = KMSG) -> None:
        self.path = path
        self._fd: int | None = None
        self._pending: deque[str] = deque()  # lines read but not yet handed out (a regular file's chunk)
        self._partial = ""  # a line a regular file's chunk cut
        self.first: Record | None = None  # the oldest record read: sequence 0 when none was lost before it
        self.records_read = 0
        self.overruns = 0  # times records were overwritten before this reader got to them (EPIPE)
        self.at_end = False  # the last call read everything the kernel had logged

    def xids(self, limit: int | None = None) -> list[KernelXid]:
        found = []
        for record in records(self._lines(MAX_RECORDS if limit is None else limit)):
            if self.first is None:
                self.first = record
            self.records_read += 1
            if (x := xid_of(record)) is not None:
                found.append(x)
        return found

    def _lines(self, limit: int) -> Iterator[str]:
        """Up to `limit` records' first lines (continuation lines, which start with a space, left out)."""
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            except FileNotFoundError:
                raise Unreadable(f"{self.path} does not exist (a container without the host's /dev/kmsg)") from None
            except PermissionError:
                raise Unreadable(f"{self.path} needs root or CAP_SYSLOG (kernel.dmesg_restrict=1)") from None
            except OSError as exc:
                raise Unreadable(f"{self.path}: {exc.strerror}") from None
        self.at_end = False
        handed = 0
        while handed < limit:
            if self._pending:
                line = self._pending.popleft()
                if line and not line.startswith(" "):
                    handed += 1
                    yield line
                continue
            try:
                chunk = os.read(self._fd, 8192)
            except BlockingIOError:  # /dev/kmsg: nothing more for now
                self.at_end = True
                return
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # records were overwritten under us: go on with what is left
                    self.overruns += 1
                    handed += 1  # counted as a record: a file that answers EPIPE forever ends too
                    continue
                if exc.errno == errno.EPERM:
                    raise Unreadable(f"{self.path} needs root or CAP_SYSLOG (kernel.dmesg_restrict=1)") from None
                raise Unreadable(f"{self.path}: {exc.strerror}") from None
            if not chunk:  # a regular file (a saved log, tests): its end
                self.at_end = True
                if self._partial and not self._partial.startswith(" "):
                    yield self._partial
                self._partial = ""
                return
            # One record per read on /dev/kmsg; a regular file gives many lines at once.
            lines = (self._partial + chunk.decode("utf-8", "replace")).split("\n")
            self._partial = lines.pop()
            self._pending.extend(lines)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def seconds_since_boot() -> float:
    """The kernel log's clock (local_clock, as CLOCK_MONOTONIC counts)."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


@dataclass
class Tally:
    count: int
    last_seconds_since_boot: float
    text: str


class XidsSinceBoot:
    """Every XID the kernel logged since boot, per GPU address and code (the daemon reads the log a round
    at a time, so what it read earlier is kept here; a few dozen entries at most). Since boot only where
    the ring buffer kept the kernel's first record: `oldest_seconds_since_boot` says where it starts
    otherwise."""

    def __init__(self, log: KernelLog) -> None:
        self.log = log
        self.seen: dict[tuple[str, int], Tally] = {}
        self.unreadable = ""  # why the log cannot be read, once it could not

    def read(self, limit: int | None = None) -> None:
        """What the kernel logged since the last call, `limit` records at most (MAX_RECORDS: all)."""
        try:
            xids = self.log.xids(limit)
        except Unreadable as exc:
            self.unreadable = str(exc)
            return
        self.unreadable = ""
        for x in xids:
            tally = self.seen.get((x.pci, x.xid))
            if tally is None:
                self.seen[(x.pci, x.xid)] = Tally(1, x.seconds_since_boot, x.text)
            else:
                tally.count += 1
                tally.last_seconds_since_boot, tally.text = x.seconds_since_boot, x.text

    @property
    def caught_up(self) -> bool:
        """Everything the kernel had logged was read (the daemon's first rounds read a large ring in parts)."""
        return self.log.at_end

    @property
    def oldest_seconds_since_boot(self) -> float | None:
        """When the oldest record read was logged, where records before it were overwritten (the ring
        buffer wrapped: its first record's sequence number is not 0); None when the log goes back to
        boot, or nothing was read."""
        first = self.log.first
        return first.seconds_since_boot if first is not None and first.sequence > 0 else None
