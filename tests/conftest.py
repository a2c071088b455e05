"""Shared fixtures: the bundled H200 capture, deterministic clocks, free loopback ports, and the two
fake NVMLs (gpumon's CaptureNvml and the fake libnvidia-ml.so.1) behind one interface."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpumon.sources.capture import Capture, load_capture
from gpumon.sources.replay import DEMO_CAPTURE
from tests.support.clock import FakeClock
from tests.support.net import free_port
from tests.support.nvml import CaptureFake, LibraryFake, NvmlFake
from tools.fakenvml import build, loaded

_CAPTURE = load_capture(DEMO_CAPTURE)


@pytest.fixture(autouse=True)
def _fresh_log_rate_limit() -> None:
    """Log repeats are limited per process: one test's burst must not hide another test's lines."""
    from gpumon import logs

    logs.RATE_LIMIT.reset()


@pytest.fixture
def demo_path() -> Path:
    return DEMO_CAPTURE


@pytest.fixture
def capture() -> Capture:
    """A private deep copy of the H200 capture; tests may edit it to inject recorded errors."""
    return copy.deepcopy(_CAPTURE)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def port() -> Iterator[int]:
    yield free_port()


@pytest.fixture(scope="session")
def libfakenvml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake library, built once per test session with -Wall -Wextra -Werror."""
    return build(tmp_path_factory.mktemp("fakenvml"))


@pytest.fixture
def library(libfakenvml: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[LibraryFake]:
    """The fake library bound to this process's pynvml for one test, no FAKENVML_* leaking in."""
    for name in [n for n in os.environ if n.startswith("FAKENVML_")]:
        monkeypatch.delenv(name)
    with loaded(libfakenvml) as nvml:
        fake = LibraryFake(nvml, libfakenvml, monkeypatch, tmp_path)
        fake.configure()
        yield fake


@pytest.fixture(params=["capture", "library"])
def nvml_fake(request: pytest.FixtureRequest) -> NvmlFake:
    """Each of the two fakes in turn: a contract test runs on both."""
    if request.param == "library":
        fake: NvmlFake = request.getfixturevalue("library")
        return fake
    return CaptureFake()
