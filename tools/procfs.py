"""A fake /proc tree holding the processes a GPU runs, written as the kernel shows them.

What gpumon reads, and only that: `<pid>/stat` (52 fields, the name in parentheses, start time in
field 22), `<pid>/comm` (the name and a newline), `<pid>/status` (`Uid:` with real, effective, saved
and filesystem ids), `<pid>/cgroup` (`id:controllers:path` lines; one `0::` line under cgroup v2,
one line per hierarchy under v1, as a systemd host has them), and `1/ns/pid` and `self/ns/pid`
(symlinks whose text names the namespace, `pid:[4026531836]` for the host's).

The cgroup paths are those the kubelet (cgroupfs and systemd drivers; containerd, CRI-O, Docker) and
Slurm's task/cgroup plugin (v1 and v2) create: see `kube_cgroup` and `slurm_cgroup`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

HOST_PID_NS = "pid:[4026531836]"  # include/linux/proc_ns.h PROC_PID_INIT_INO
V1_CONTROLLERS = ("cpu,cpuacct", "memory", "devices", "pids", "cpuset", "blkio", "freezer")


def kube_cgroup(pod_uid: str, container_id: str, *, qos: str = "burstable", driver: str = "systemd",
                runtime: str = "containerd", version: int = 2) -> str:
    """/proc/<pid>/cgroup of a container's process, as the kubelet lays the cgroups out."""
    if driver == "systemd":
        scope = {"containerd": "cri-containerd", "crio": "crio", "docker": "docker"}[runtime]
        escaped = pod_uid.replace("-", "_")
        if qos == "guaranteed":
            pod = f"/kubepods.slice/kubepods-pod{escaped}.slice"
        else:
            pod = f"/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{escaped}.slice"
        path = f"{pod}/{scope}-{container_id}.scope"
    else:
        pod = f"/kubepods/pod{pod_uid}" if qos == "guaranteed" else f"/kubepods/{qos}/pod{pod_uid}"
        path = f"{pod}/{container_id}"
    return _lines(path, version, systemd_path="/")


def slurm_cgroup(job_id: int, uid: int, *, version: int = 2, node: str = "") -> str:
    """/proc/<pid>/cgroup of a Slurm job step's task, as task/cgroup lays them out."""
    if version == 2:
        return _lines(f"/system.slice/slurmstepd.scope/job_{job_id}/step_0/user/task_0", 2)
    root = f"/slurm_{node}" if node else "/slurm"
    return _lines(f"{root}/uid_{uid}/job_{job_id}/step_0/task_0", 1, systemd_path="/system.slice/slurmd.service")


def host_cgroup(unit: str = "/user.slice/user-1000.slice/session-3.scope", version: int = 2) -> str:
    """A process outside any pod or job."""
    return _lines(unit, version, systemd_path=unit)


def _lines(path: str, version: int, systemd_path: str = "/") -> str:
    if version == 2:
        return f"0::{path}\n"
    lines = [f"{len(V1_CONTROLLERS) + 1}:name=systemd:{systemd_path}"]
    lines += [f"{len(V1_CONTROLLERS) - i}:{c}:{path}" for i, c in enumerate(V1_CONTROLLERS)]
    return "\n".join([*lines, "0::/"]) + "\n"


class FakeProc:
    """A /proc under `root`; `host=False` makes it another PID namespace's."""

    def __init__(self, root: Path, *, host: bool = True) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        namespace = HOST_PID_NS if host else "pid:[4026532451]"
        for who in ("1", "self"):
            (root / who / "ns").mkdir(parents=True, exist_ok=True)
            link = root / who / "ns" / "pid"
            if link.is_symlink():
                link.unlink()
            os.symlink(namespace, link)

    def add(self, pid: int, name: str = "python3", *, cgroup: str = "", uid: int = 1000, start_time: int = 4242,
            comm: bytes | None = None) -> None:
        """A process; `comm` replaces the name's file content (for odd bytes)."""
        d = self.root / str(pid)
        d.mkdir(parents=True, exist_ok=True)
        stat = [str(pid), f"({name})", "S", "1", str(pid), str(pid), "0", "-1", "4194560"]
        stat += ["0"] * 12 + [str(start_time)] + ["0"] * 30  # field 22 is the start time
        (d / "stat").write_text(" ".join(stat) + "\n")
        (d / "comm").write_bytes(comm if comm is not None else name[:15].encode() + b"\n")
        (d / "status").write_text(f"Name:\t{name[:15]}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{pid}\n"
                                  f"Pid:\t{pid}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
        (d / "cgroup").write_text(cgroup or host_cgroup())

    def maps(self, pid: int, *paths: str) -> None:
        """/proc/<pid>/maps mapping each file (as the kernel writes a file mapping: address range,
        permissions, offset, device, inode, path), among the anonymous mappings a process has."""
        lines = ["55d0c0a00000-55d0c0a21000 r--p 00000000 00:00 0          [heap]"]
        for i, path in enumerate(paths):
            start = 0x7F0000000000 + i * 0x1000000
            lines.append(f"{start:x}-{start + 0x80000:x} r-xp 00000000 fd:01 {1048576 + i:<10} {path}")
        lines.append("7ffc1e1e0000-7ffc1e201000 rw-p 00000000 00:00 0          [stack]")
        (self.root / str(pid) / "maps").write_text("\n".join(lines) + "\n")

    def remove(self, pid: int) -> None:
        shutil.rmtree(self.root / str(pid), ignore_errors=True)
