"""What every benchmark module reports with: a percentile, and a progress line on stderr."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The value below which a fraction `q` of `values` lies (nearest rank; the largest for q near 1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def progress(line: str) -> None:
    print(f"  .. {line}", file=sys.stderr, flush=True)
