"""The fake library under the sanitizers: a C client (smoke.c) under AddressSanitizer and UBSan
with leak checking, and under ThreadSanitizer, on the H200 capture and on the MIG capture (whose
instances are destroyed and made again while its threads use them); gpumon's nvml and MIG sources
through pynvml's ctypes structs under AddressSanitizer."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fixtures.mig import generate as mig_capture
from tools.fakenvml import SANITIZERS, SOURCE_DIR, WARNINGS, build, compiler, environment, nvml_include_dir

SMOKE_FAULTS = """\
lost 2 0 0.3                  # GPU 2 is off the bus at first
xid 1 0.05 79
xid 0 0.1 48
hang nvmlDeviceGetBrand 60 3  # released by nvmlShutdown
"""

MIG_SMOKE_FAULTS = "lost 1 0 0.2\n"  # GPU 1 (a fanned-out copy) is off the bus at first: its MIG calls too

SANITIZER_OPTIONS = {"UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}

PYNVML_SESSION = textwrap.dedent("""
    import time, pynvml
    from gpumon.model import Tier
    from gpumon.sources.nvml import NvmlSource
    source = NvmlSource(pynvml, opt_ins=frozenset({"process_pids"}))
    source.open()
    source.start_events(lambda gpu, xid, at: print("xid", gpu, xid, flush=True))
    time.sleep(0.3)
    for tier in Tier:
        for gpu in range(len(source.devices)):
            source.read(gpu, tier)
    source.close()
    print("errors", source.error_counts())
""")

MIG_PYNVML_SESSION = textwrap.dedent("""
    import time, pynvml
    from gpumon.model import Tier
    from gpumon.sources.mig import MigSource
    from gpumon.sources.nvml import NvmlSource
    gpus = NvmlSource(pynvml)
    gpus.open()
    source = MigSource(gpus)
    units = source.open()
    series = set()
    for _ in range(12):  # about 0.6 s, over the reconfiguration at speed 50
        for unit in units:
            for tier in (Tier.SLOW, Tier.FAST):
                series |= {n for s in source.poll(unit, tier) for n, _, _ in s.values}
        time.sleep(0.05)
    source.close()
    gpus.close()
    print(sorted(n for n in series if n.startswith("gpumon_mig_sm")), source.reconfigurations > 0)
    print("errors", gpus.error_counts())
""")


@pytest.fixture(scope="module")
def asan_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("fakenvml-asan"), sanitize="address")


def run_smoke(library: Path, sanitize: str, tmp_path: Path, options: dict[str, str]) -> None:
    """Build smoke.c against `library` with the same sanitizer and run it on four GPUs, then its
    MIG part on two GPUs of the MIG capture."""
    smoke = tmp_path / "smoke"
    cmd = [compiler(), "-std=c11", "-g", "-O1", *WARNINGS, "-Wno-deprecated-declarations", *SANITIZERS[sanitize],
           "-pthread", f"-I{nvml_include_dir()}", str(SOURCE_DIR / "smoke.c"), str(library),
           f"-Wl,-rpath,{library.parent}", "-o", str(smoke)]
    compiled = subprocess.run(cmd, capture_output=True, text=True)
    assert compiled.returncode == 0 and not compiled.stderr, compiled.stderr
    faults = tmp_path / "faults.txt"
    faults.write_text(SMOKE_FAULTS)
    env = environment(library, gpus=4, speed=200, faults=faults) | options  # speed: the trace loops often
    run = subprocess.run([str(smoke)], capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 0 and run.stdout == "ok\n", run.stdout + run.stderr
    assert "Sanitizer" not in run.stderr and "runtime error" not in run.stderr, run.stderr
    mig_faults = tmp_path / "mig-faults.txt"
    mig_faults.write_text(MIG_SMOKE_FAULTS)
    env = environment(library, capture=mig_capture.OUT_DIR, gpus=2, speed=200, faults=mig_faults) | options
    run = subprocess.run([str(smoke), "mig"], capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 0 and run.stdout == "ok\n", run.stdout + run.stderr
    assert "Sanitizer" not in run.stderr and "runtime error" not in run.stderr, run.stderr


def test_c_client_runs_clean_with_leak_checking(asan_library: Path, tmp_path: Path) -> None:
    run_smoke(asan_library, "address", tmp_path, SANITIZER_OPTIONS | {"ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1"})


def test_c_client_from_many_threads_has_no_data_race(tmp_path: Path) -> None:
    library = build(tmp_path / "tsan", sanitize="thread")
    run_smoke(library, "thread", tmp_path, {"TSAN_OPTIONS": "halt_on_error=1"})


def test_gpumon_through_pynvml_runs_clean(asan_library: Path, tmp_path: Path) -> None:
    """PYTHONMALLOC=malloc puts pynvml's ctypes buffers on the sanitized heap, so a struct that is
    larger in nvml.h than in pynvml (a write past its end) is caught. Python itself leaks at exit
    by design, so leaks are only checked in the C client above."""
    asan_runtime = subprocess.run([compiler(), "-print-file-name=libasan.so"], capture_output=True, text=True,
                                  check=True).stdout.strip()
    faults = tmp_path / "faults.txt"
    faults.write_text("xid 1 0.1 79\n")
    env = environment(asan_library, gpus=2, speed=20, faults=faults)
    env |= SANITIZER_OPTIONS | {"ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1", "LD_PRELOAD": asan_runtime,
                                "PYTHONMALLOC": "malloc"}
    run = subprocess.run([sys.executable, "-c", PYNVML_SESSION], capture_output=True, text=True, timeout=60,
                         env=env, cwd=Path(__file__).parents[3])
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines() == ["xid 1 79", "errors {}"], run.stdout + run.stderr
    assert "Sanitizer" not in run.stderr and "runtime error" not in run.stderr, run.stderr


def test_gpumon_mig_through_pynvml_runs_clean(asan_library: Path, tmp_path: Path) -> None:
    """The MIG structs (nvmlDeviceAttributes_t, nvmlGpuInstanceInfo_t, process lists of MIG devices)
    as pynvml allocates them, written by the library under AddressSanitizer, across a reconfiguration."""
    asan_runtime = subprocess.run([compiler(), "-print-file-name=libasan.so"], capture_output=True, text=True,
                                  check=True).stdout.strip()
    env = environment(asan_library, capture=mig_capture.OUT_DIR, gpus=2, speed=50, start=18)
    env |= SANITIZER_OPTIONS | {"ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1", "LD_PRELOAD": asan_runtime,
                                "PYTHONMALLOC": "malloc"}
    run = subprocess.run([sys.executable, "-c", MIG_PYNVML_SESSION], capture_output=True, text=True, timeout=60,
                         env=env, cwd=Path(__file__).parents[3])
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[-2:] == ["['gpumon_mig_sm_active_ratio', 'gpumon_mig_sm_occupancy_ratio'] True",
                                            "errors {}"], run.stdout + run.stderr  # after gpumon's log lines
    assert "Sanitizer" not in run.stderr and "runtime error" not in run.stderr, run.stderr
