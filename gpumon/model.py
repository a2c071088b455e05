"""The values that flow from sources through the sampler into the store."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

# Prometheus's staleness marker: a NaN with this exact bit pattern ends a series at that instant.
STALE_NAN: float = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]

# Label pairs in a fixed order; a series is identified by (metric name, labels).
Labels = tuple[tuple[str, str], ...]


class Tier(enum.StrEnum):
    """How often a metric is read: every fast poll, every slow poll, or once per (re)initialisation."""

    FAST = "fast"
    SLOW = "slow"
    STATIC = "static"


@dataclass(frozen=True)
class Device:
    """Static facts about one GPU, read once when the device is opened and again after re-init."""

    index: int
    uuid: str
    name: str
    pci_bus_id: str
    architecture: str
    gpm_supported: bool
    driver_version: str
    cuda_driver_version: str
    # "v2": memory used excludes the driver's reserved memory, which is exported on its own; "v1"
    # (drivers before R510): used includes it and nothing says how much it is.
    memory_info: str = "v2"

    @property
    def labels(self) -> Labels:
        """The identity labels every per-GPU series carries."""
        return (("gpu", str(self.index)), ("uuid", self.uuid))


@dataclass(slots=True)
class Sample:
    """One poll's values for one unit of a source (a GPU, a fabric, the daemon itself) and one tier.

    A new sample replaces the previous one with the same (unit, tier) as a whole, so a metric that
    was not read this time disappears from the exposition instead of going stale.
    """

    unit: str  # what the sample replaces in the store: the latest of (unit, tier) is exported
    tier: str
    timestamp: float
    values: list[tuple[str, Labels, float]] = field(default_factory=list)
    gpu: int | None = None  # the GPU the values belong to, when they belong to one

    def add(self, metric: str, labels: Labels, value: float) -> None:
        self.values.append((metric, labels, value))


class BackendUnavailable(Exception):
    """The chosen backend cannot start (NVML library missing, driver not loaded, bad capture)."""
