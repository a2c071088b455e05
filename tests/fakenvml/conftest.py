"""Fixtures for the tests of, and on, the fake libnvidia-ml.so.1."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gpumon.sources.replay import DEMO_CAPTURE
from tests.fakenvml import build, loaded, variables


@pytest.fixture(scope="session")
def libfakenvml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake library, built once per test session with -Wall -Wextra -Werror."""
    return build(tmp_path_factory.mktemp("fakenvml"))


@dataclass
class Fake:
    """The fake library loaded into this process's pynvml; configure() before nvmlInit."""

    nvml: Any  # the real pynvml module, bound to the fake library
    library: Path
    monkeypatch: pytest.MonkeyPatch
    tmp_path: Path

    def configure(self, *, faults: str | None = None, capture: Path = DEMO_CAPTURE, **settings: Any) -> None:
        """Set FAKENVML_* for the next nvmlInit: gpus, speed, start, loop, latency; faults is the
        text of a faults file."""
        if faults is not None:
            path = self.tmp_path / "faults.txt"
            path.write_text(faults)
            settings["faults"] = path
        for name, value in variables(capture=capture, **settings).items():
            self.monkeypatch.setenv(name, value)


@pytest.fixture
def fake(libfakenvml: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Fake]:
    import os
    for name in [n for n in os.environ if n.startswith("FAKENVML_")]:
        monkeypatch.delenv(name)
    with loaded(libfakenvml) as nvml:
        f = Fake(nvml, libfakenvml, monkeypatch, tmp_path)
        f.configure()
        yield f
