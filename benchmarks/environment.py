"""What every benchmark runs against: the fake libnvidia-ml.so.1 or this machine's NVML, gpumon's
command line, and a description of the machine (the numbers mean little without it)."""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from gpumon.sources.replay import DEMO_CAPTURE
from tools import fakenvml


def fake_library(work: Path) -> Path:
    """Build the fake libnvidia-ml.so.1 into this run's own directory, so nothing else that cleans
    build/ can pull it away mid-run."""
    return fakenvml.build(work / "fakenvml")


def nvml_env(library: Path | None, **fake: Any) -> dict[str, str]:
    """The environment for a process that should load the fake library (or real NVML if None)."""
    if library is None:
        return {k: v for k, v in os.environ.items() if not k.startswith("FAKENVML_")}
    return fakenvml.environment(library, capture=DEMO_CAPTURE, **fake)


def real_nvml_present() -> str | None:
    """None when the real libnvidia-ml.so.1 loads and initialises, else why not."""
    try:
        lib = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError as exc:
        return f"libnvidia-ml.so.1 cannot be loaded ({exc}): no NVIDIA driver on this machine"
    rc = lib.nvmlInit_v2()
    if rc != 0:
        return f"nvmlInit_v2 failed with NVML error {rc} (driver not loaded, or no permission)"
    lib.nvmlShutdown()
    return None


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "loadavg_start": os.getloadavg(),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def gpumon_argv(port: int, state: Path, rules: Path | None = None) -> list[str]:
    argv = [sys.executable, "-m", "gpumon", "run", "--backend", "nvml", "--listen", f"127.0.0.1:{port}",
            "--state-dir", str(state), "--fast-interval", "1s", "--log-level", "warning", "--log-format", "json"]
    return argv + (["--rules", str(rules)] if rules else [])
