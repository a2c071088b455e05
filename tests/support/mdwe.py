"""Run a command under the seccomp filter systemd installs for MemoryDenyWriteExecute=yes.

    python -m tests.support.mdwe COMMAND [ARG...]

Like systemd (src/shared/seccomp-util.c), the filter makes mmap() with PROT_WRITE and PROT_EXEC together,
and mprotect()/pkey_mprotect() adding PROT_EXEC, fail with EPERM; everything else is allowed. It lets the
tests run gpumon as the hardened unit would, without systemd as PID 1.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

# (AUDIT_ARCH_*, mmap, mprotect, pkey_mprotect) per machine.
ARCHES = {
    "x86_64": (0xC000003E, 9, 10, 329),
    "aarch64": (0xC00000B7, 222, 226, 288),
}
PROT_WRITE, PROT_EXEC = 0x2, 0x4
EPERM = 1
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
RET_ALLOW, RET_ERRNO = 0x7FFF0000, 0x00050000
LD_W_ABS, ALU_AND_K, JEQ_K, RET_K = 0x20, 0x54, 0x15, 0x06
OFF_NR, OFF_ARCH, OFF_ARG2 = 0, 4, 32  # struct seccomp_data; the low 32 bits of args[2] (little endian)


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter))]


def program(machine: str) -> list[tuple[int, int, int, int]]:
    """The BPF program as (code, jt, jf, k); jumps count instructions after the next one."""
    arch, nr_mmap, nr_mprotect, nr_pkey_mprotect = ARCHES[machine]
    allow, deny = 12, 13
    prog = [
        (LD_W_ABS, 0, 0, OFF_ARCH),                        # 0
        (JEQ_K, 0, allow - 2, arch),                       # 1: another ABI: not ours to judge
        (LD_W_ABS, 0, 0, OFF_NR),                          # 2
        (JEQ_K, 0, 7 - 4, nr_mmap),                        # 3
        (LD_W_ABS, 0, 0, OFF_ARG2),                        # 4: mmap(prot)
        (ALU_AND_K, 0, 0, PROT_WRITE | PROT_EXEC),         # 5
        (JEQ_K, deny - 7, allow - 7, PROT_WRITE | PROT_EXEC),  # 6
        (JEQ_K, 9 - 8, 0, nr_mprotect),                    # 7
        (JEQ_K, 0, allow - 9, nr_pkey_mprotect),           # 8
        (LD_W_ABS, 0, 0, OFF_ARG2),                        # 9: mprotect(prot)
        (ALU_AND_K, 0, 0, PROT_EXEC),                      # 10
        (JEQ_K, deny - 12, allow - 12, PROT_EXEC),         # 11
        (RET_K, 0, 0, RET_ALLOW),                          # 12
        (RET_K, 0, 0, RET_ERRNO | EPERM),                  # 13
    ]
    return prog


def install() -> None:
    """Apply the filter to this process and everything it executes from now on."""
    prog = program(platform.machine())
    filters = (SockFilter * len(prog))(*(SockFilter(*ins) for ins in prog))
    fprog = SockFprog(len(prog), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


if __name__ == "__main__":
    install()
    os.execvp(sys.argv[1], sys.argv[1:])
