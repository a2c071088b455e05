"""Clocks a test controls."""

from __future__ import annotations


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class StartAt:
    """A clock for CaptureNvml that holds its trace at `position` from nvmlInit on, as
    FAKENVML_SPEED=0 FAKENVML_START=position does for the fake library: nvmlInit reads 0, every
    later call `position`."""

    def __init__(self, position: float) -> None:
        self.position = position
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return 0.0 if self.calls == 1 else self.position
