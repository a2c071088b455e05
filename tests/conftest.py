"""Shared fixtures: the bundled H200 capture, deterministic clocks, free loopback ports."""

from __future__ import annotations

import copy
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpumon.sources.capture import Capture, load_capture
from gpumon.sources.replay import DEMO_CAPTURE

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


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def port() -> Iterator[int]:
    yield free_port()
