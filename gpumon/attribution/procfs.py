"""What /proc says about a process NVML lists on a GPU: its name, its user, and where its cgroup puts
it (a Kubernetes pod and container, a Slurm job).

NVML reports PIDs as the host sees them. They mean the same process in `/proc` only if that procfs
belongs to the host's (initial) PID namespace, which `host_pid_namespace` checks the way the kernel
numbers namespaces; without it (a container without `hostPID: true`) nothing is read, since
`/proc/<pid>` would be some other process of the container's own.

Everything read here can be hostile or vanish mid-read: files are read with a size cap, lines that
do not parse are skipped, and a process that exits (or whose PID is taken by a new process while it
is being read: its start time changes) yields no facts rather than another process's.
"""

from __future__ import annotations

import functools
import os
import pwd
import re
from dataclasses import dataclass
from pathlib import Path

# include/linux/proc_ns.h: the initial PID namespace's inode number, the same on every boot.
PROC_PID_INIT_INO = 0xEFFFFFFC
MAX_READ = 64 * 1024  # a cgroup file of a deeply nested process is a few hundred bytes
MAX_MAPS = 16 * 1024 * 1024  # a PyTorch process maps thousands of files: ~1 MB of maps
# The CUDA libraries a process has mapped, by file name: libcudart.so.12.4.127 (the toolkit),
# libcudart.so.12 (pip wheels: the major only), libcudart-d0da41ae.so.11.0 (bundled, with a hash).
_LIBRARY = re.compile(rb"/lib(cudart|nccl|cublas)(?:-[0-9a-f]{8})?\.so\.([0-9]+(?:\.[0-9]+)*)\s*$", re.MULTILINE)
MAX_NAME = 64

# A pod's cgroup, as the kubelet names it: cgroupfs driver `/kubepods/burstable/pod<uid>/...`,
# systemd driver `.../kubepods-burstable-pod<uid with _ for ->.slice/...`. Static pods have a
# 32-hex-digit config hash as their UID.
_POD = re.compile(r"(?:/|-)pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32})"
                  r"(?:\.slice)?(?:/|$)")
# The container's own cgroup below the pod's: containerd, CRI-O and Docker spell it differently.
_CONTAINER = re.compile(r"/(?:cri-containerd-|crio-|docker-|containerd-)?([0-9a-f]{64})(?:\.scope)?(?:/|$)")
# Slurm's task/cgroup plugin: v1 `/slurm[_<node>]/uid_<uid>/job_<id>/step_<s>/...`, v2
# `/system.slice/slurmstepd.scope/job_<id>/step_<s>/...`.
_SLURM_JOB = re.compile(r"/job_([0-9]{1,20})(?:/|$)")
_SLURM_UID = re.compile(r"/uid_([0-9]{1,10})/job_")


@dataclass(frozen=True)
class ProcessFacts:
    """What /proc said about one process. Empty strings where it said nothing."""

    pid: int
    start_time: int  # clock ticks after boot (/proc/<pid>/stat field 22): with pid, the process's identity
    name: str = ""
    uid: int | None = None
    pod_uid: str = ""
    container_id: str = ""
    job_id: str = ""


class Procfs:
    def __init__(self, root: Path = Path("/proc")) -> None:
        self.root = root
        # The UID the kernel shows for a user outside our user namespace (systemd's PrivateUsers=yes):
        # not the process's user, so it is reported as unknown, never as "nobody".
        self.overflow_uid = _int(self._read(root / "sys" / "kernel" / "overflowuid"), 65534)

    def host_pid_namespace(self) -> bool | None:
        """True when this procfs shows the host's PID namespace, False when another; None when it
        cannot tell (no procfs there)."""
        # pid 1's link needs ptrace rights and may be hidden (hidepid, ProtectProc); our own never is.
        for who in ("1", "self"):
            try:
                link = os.readlink(self.root / who / "ns" / "pid")
            except OSError:
                continue
            return link == f"pid:[{PROC_PID_INIT_INO}]"
        return None

    def facts(self, pid: int) -> ProcessFacts | None:
        """The process's facts, or None when it is gone (or changed while being read)."""
        directory = self.root / str(pid)
        before = self._start_time(directory)
        if before is None:
            return None
        name = _clean(self._read(directory / "comm") or "")
        uid = _uid(self._read(directory / "status") or "")
        if uid == self.overflow_uid:
            uid = None
        cgroup = self._read(directory / "cgroup") or ""
        if self._start_time(directory) != before:  # the PID was reused while we read it
            return None
        pod_uid, container_id, job_id, slurm_uid = parse_cgroup(cgroup)
        return ProcessFacts(pid, before, name, uid if uid is not None else slurm_uid, pod_uid, container_id, job_id)

    def libraries(self, pid: int) -> dict[str, str] | None:
        """{"cudart": "12.4.127", "nccl": "2.21.5", ...}: the CUDA libraries the process has mapped
        (/proc/<pid>/maps), each with the version its file name carries; None when the maps cannot be
        read (gone, or another user's process without CAP_SYS_PTRACE)."""
        try:
            with open(self.root / str(pid) / "maps", "rb") as f:
                maps = f.read(MAX_MAPS)
        except OSError:
            return None
        found: dict[str, str] = {}
        for m in _LIBRARY.finditer(maps):
            name, version = m.group(1).decode(), m.group(2).decode()
            if len(version) > len(found.get(name, "")):  # the most precise of its spellings
                found[name] = version
        return found

    def start_time(self, pid: int) -> int | None:
        """When the process with this PID started (clock ticks since boot); None when there is none."""
        return self._start_time(self.root / str(pid))

    def alive(self, pid: int, start_time: int) -> bool:
        """Whether the process read earlier is still the one with this PID."""
        return self._start_time(self.root / str(pid)) == start_time

    def _start_time(self, directory: Path) -> int | None:
        stat = self._read(directory / "stat")
        if not stat:
            return None
        # The name (field 2) is in parentheses and may hold spaces and ")": fields follow the last ")".
        fields = stat[stat.rfind(")") + 1:].split()
        try:
            return int(fields[19])  # field 22 of the whole line
        except (IndexError, ValueError):
            return None

    @staticmethod
    def _read(path: Path) -> str | None:
        try:
            with open(path, "rb") as f:
                return f.read(MAX_READ).decode("utf-8", "replace")
        except OSError:  # gone (ENOENT, ESRCH), or not ours to read
            return None


def parse_cgroup(text: str) -> tuple[str, str, str, int | None]:
    """(pod UID, container id, Slurm job id, Slurm uid) from /proc/<pid>/cgroup, v1 or v2, any line;
    empty where the paths say nothing. Lines that are not `id:controllers:path` are skipped."""
    pod = container = job = ""
    uid: int | None = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        path = parts[2].strip()
        if not pod and (m := _POD.search(path)):
            pod = m.group(1).replace("_", "-")
            if c := _CONTAINER.search(path):
                container = c.group(1)
        if not job and (m := _SLURM_JOB.search(path)):
            job = m.group(1)
            if u := _SLURM_UID.search(path):
                uid = int(u.group(1))
    return pod, container, job, uid


@functools.lru_cache(maxsize=1024)
def user_name(uid: int | None) -> str:
    """The user's name from this host's passwd, else the number ("" when unknown)."""
    if uid is None:
        return ""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return str(uid)


def _int(text: str | None, default: int) -> int:
    try:
        return int((text or "").strip())
    except ValueError:
        return default


def _uid(status: str) -> int | None:
    for line in status.splitlines():
        if line.startswith("Uid:"):
            fields = line.split()
            return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
    return None


def _clean(comm: str) -> str:
    """The process name as a label value: no control characters, no newline, at most MAX_NAME long."""
    name = comm[:-1] if comm.endswith("\n") else comm
    return "".join(c if c.isprintable() else "\ufffd" for c in name)[:MAX_NAME]
