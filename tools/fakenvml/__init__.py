"""Build and load the fake libnvidia-ml.so.1 (the C sources beside this file).

The library answers NVML calls from a recorded capture, so unmodified nvidia-ml-py (and any other
NVML client) runs on a machine without a GPU. How it behaves and which variables drive it:
docs/testing.md. Build one by hand with `python -m tools.fakenvml OUTDIR`.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SOURCE_DIR = Path(__file__).resolve().parent
LIBRARY_SOURCES = ("core.c", "capture.c", "faults.c", "device.c", "mig.c", "gpm.c", "events.c")
LIBRARY_NAME = "libnvidia-ml.so.1"
CJSON_HEADER = Path("/usr/include/cjson/cJSON.h")
WARNINGS = ("-Wall", "-Wextra", "-Werror")
SANITIZERS = {  # what `build(sanitize=...)` adds to the compiler's command line
    "address": ("-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"),
    "thread": ("-fsanitize=thread",),
}
NVML_UNINITIALIZED = 1


class BuildError(RuntimeError):
    """The fake library could not be built; the message says what is missing or what cc said."""


def nvml_include_dir() -> Path:
    """The directory holding nvml.h, from the `nvidia-nvml-dev` wheel in this environment."""
    try:
        files = importlib.metadata.files("nvidia-nvml-dev") or []
    except importlib.metadata.PackageNotFoundError:
        raise BuildError("nvml.h not found: install the test extras (pip install -e '.[test]', "
                         "which brings nvidia-nvml-dev)") from None
    for f in files:
        if f.name == "nvml.h":
            return Path(str(f.locate())).parent
    raise BuildError("the nvidia-nvml-dev package holds no nvml.h")


def compiler() -> str:
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        raise BuildError("no C compiler: install one (Debian: build-essential), or set CC")
    return cc


def build(out_dir: Path, *, default_capture: Path | None = None, sanitize: str | None = None) -> Path:
    """Compile the library into out_dir/libnvidia-ml.so.1 and return its path.

    default_capture is the capture used when FAKENVML_CAPTURE is unset (gpumon's bundled H200
    capture unless given); sanitize is "address" (ASan and UBSan) or "thread" (TSan).
    """
    if not CJSON_HEADER.is_file():
        raise BuildError(f"{CJSON_HEADER} not found: install Debian's libcjson-dev (make system-deps does)")
    if default_capture is None:
        from gpumon.sources.replay import DEMO_CAPTURE
        default_capture = DEMO_CAPTURE
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / LIBRARY_NAME
    # json.dumps quotes the path as a C string literal (quotes and backslashes escaped).
    capture_literal = json.dumps(str(default_capture), ensure_ascii=False)
    cmd = [compiler(), "-std=c11", "-g", "-O1" if sanitize else "-O2", *WARNINGS,
           *(SANITIZERS[sanitize] if sanitize else ()), "-fPIC", "-shared", "-fvisibility=hidden", "-pthread",
           f"-I{nvml_include_dir()}", f"-DFAKENVML_DEFAULT_CAPTURE={capture_literal}",
           f"-Wl,-soname,{LIBRARY_NAME}", "-Wl,-z,defs", "-o", str(out),
           *(str(SOURCE_DIR / s) for s in LIBRARY_SOURCES), "-lcjson", "-lm"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"building {out} failed:\n{' '.join(cmd)}\n{result.stdout}{result.stderr}")
    if result.stderr.strip():  # -Werror makes warnings fail, but say so if anything was printed
        raise BuildError(f"building {out} printed diagnostics:\n{result.stderr}")
    return out


def environment(library: Path, base: Mapping[str, str] | None = None, **settings: Any) -> dict[str, str]:
    """An environment for a subprocess that loads the fake library by LD_LIBRARY_PATH.

    settings: capture, gpus, speed, start, loop, latency, faults (a path) -> FAKENVML_*. Variables
    not given are removed, so nothing leaks in from the caller's environment.
    """
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("FAKENVML_")}
    old = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = str(library.parent) + (f":{old}" if old else "")
    env.update(variables(**settings))
    return env


def variables(**settings: Any) -> dict[str, str]:
    """FAKENVML_* variables for the given settings (None: leave at the library's default)."""
    out = {}
    for key, value in settings.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = int(value)
        out[f"FAKENVML_{key.upper()}"] = str(value)
    return out


@contextmanager
def loaded(library: Path) -> Iterator[Any]:
    """The real pynvml module, bound to the fake library for the duration (in this process).

    pynvml loads libnvidia-ml.so.1 once per process and caches function pointers and error
    strings; all three are restored afterwards so other tests see the pynvml they expect. On the
    way out NVML is shut down as often as it was initialised, so the next test starts clean.
    """
    import pynvml

    lib = ctypes.CDLL(str(library))
    saved = (pynvml.nvmlLib, dict(pynvml._nvmlGetFunctionPointer_cache),
             dict(pynvml.NVMLError._errcode_to_string), pynvml._nvmlLib_refcount)
    pynvml.nvmlLib = lib
    pynvml._nvmlGetFunctionPointer_cache.clear()
    pynvml.NVMLError._errcode_to_string.clear()
    try:
        yield pynvml
    finally:
        for _ in range(1000):
            if lib.nvmlShutdown() == NVML_UNINITIALIZED:
                break
        pynvml.nvmlLib = saved[0]
        pynvml._nvmlGetFunctionPointer_cache.clear()
        pynvml._nvmlGetFunctionPointer_cache.update(saved[1])
        pynvml.NVMLError._errcode_to_string.clear()
        pynvml.NVMLError._errcode_to_string.update(saved[2])
        pynvml._nvmlLib_refcount = saved[3]
