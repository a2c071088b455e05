"""XIDs from the kernel log since boot: the NVIDIA driver logs each one as
`NVRM: Xid (PCI:0000:18:00): 79, pid=..., GPU has fallen off the bus.`, including those from before
gpumon started and those of a GPU NVML no longer sees (an XID 79 is often the last word of a GPU that
fell off the bus).

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

KMSG = Path("/dev/kmsg")
# The driver prints bus:device without the function; MIG adds " GPU-I:nn" inside the parentheses.
_XID = re.compile(r"NVRM: Xid \(PCI:([0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2})[^)]*\): (\d+),\s*(.*)")
MAX_READS = 1 << 20  # a ring buffer holds far fewer records: a bound against a file that never ends


class Unreadable(Exception):
    """The kernel log cannot be read; the message says why in words a person can act on."""


@dataclass(frozen=True)
class KernelXid:
    pci: str  # "0000:18:00", lower case: NVML's bus id without its function
    xid: int
    seconds_since_boot: float
    text: str  # the rest of the driver's line


def parse(records: Iterable[str]) -> Iterator[KernelXid]:
    for record in records:
        prefix, sep, message = record.partition(";")
        if not sep:
            continue
        fields = prefix.split(",")
        match = _XID.search(message)
        if match is None or len(fields) < 3 or not fields[2].isdigit():
            continue
        yield KernelXid(match[1].lower(), int(match[2]), int(fields[2]) / 1e6, match[3].strip()[:200])


class KernelLog:
    """Reads new records on each `xids()` call, from where the last call left off: the daemon keeps one
    open and pays only for what the kernel logged since its last slow round."""

    def __init__(self, path: Path = KMSG) -> None:
        self.path = path
        self._fd: int | None = None

    def xids(self) -> list[KernelXid]:
        return list(parse(self._records()))

    def _records(self) -> Iterator[str]:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            except FileNotFoundError:
                raise Unreadable(f"{self.path} does not exist (a container without the host's /dev/kmsg)") from None
            except PermissionError:
                raise Unreadable(f"{self.path} needs root or CAP_SYSLOG (kernel.dmesg_restrict=1)") from None
            except OSError as exc:
                raise Unreadable(f"{self.path}: {exc.strerror}") from None
        partial = ""
        for _ in range(MAX_READS):
            try:
                chunk = os.read(self._fd, 8192)
            except BlockingIOError:  # /dev/kmsg: nothing more for now
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # records were overwritten under us: go on with what is left
                    continue
                if exc.errno == errno.EPERM:
                    raise Unreadable(f"{self.path} needs root or CAP_SYSLOG (kernel.dmesg_restrict=1)") from None
                raise Unreadable(f"{self.path}: {exc.strerror}") from None
            if not chunk:  # a regular file (a saved log, tests): its end
                break
            # One record per read on /dev/kmsg; a regular file gives many lines at once.
            lines = (partial + chunk.decode("utf-8", "replace")).split("\n")
            partial = lines.pop()
            yield from (line for line in lines if line and not line.startswith(" "))
        if partial and not partial.startswith(" "):
            yield partial

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
    at a time, so what it read earlier is kept here; a few dozen entries at most)."""

    def __init__(self, log: KernelLog) -> None:
        self.log = log
        self.seen: dict[tuple[str, int], Tally] = {}
        self.unreadable = ""  # why the log cannot be read, once it could not

    def read(self) -> None:
        try:
            xids = self.log.xids()
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
