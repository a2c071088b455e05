"""The replay backend: a recorded capture played through the real nvml source.

`replay:PATH[,loop][,speed=X][,gpus=N]` selects it; `PATH` may be `demo` for the bundled H200
capture. The data is loudly labelled: `gpumon_build_info{backend="replay"}`, the console and a
warning in the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gpumon.model import Sample, Tier
from gpumon.sources.capture import load_capture
from gpumon.sources.capture_nvml import CaptureNvml
from gpumon.sources.nvml import NvmlSource

DEMO_CAPTURE = Path(__file__).resolve().parent.parent / "demo" / "h200"
MAX_GPUS = 1024


@dataclass(frozen=True)
class ReplaySpec:
    path: Path
    loop: bool = False
    speed: float = 1.0
    gpus: int | None = None

    @property
    def is_demo(self) -> bool:
        return self.path == DEMO_CAPTURE

    @property
    def name(self) -> str:
        """How the capture is named to users (gpumon_build_info, the DEMO DATA banner)."""
        return "bundled H200 demo capture" if self.is_demo else str(self.path)


def parse_replay_spec(spec: str) -> ReplaySpec:
    """Parse `replay:PATH[,loop][,speed=X][,gpus=N]`; raises ValueError naming the bad part."""
    body = spec.removeprefix("replay:")
    path, *options = body.split(",")
    if not path:
        raise ValueError("replay needs a capture path: replay:PATH (or replay:demo)")
    loop, speed, gpus = False, 1.0, None
    for option in options:
        name, _, value = (part.strip() for part in option.partition("="))
        try:
            if name == "loop" and not value:
                loop = True
            elif name == "speed":
                speed = float(value)
                if not 0 < speed <= 1000:
                    raise ValueError
            elif name == "gpus":
                gpus = int(value)
                if not 0 < gpus <= MAX_GPUS:
                    raise ValueError
            else:
                raise KeyError
        except KeyError:
            raise ValueError(f"unknown replay option {option!r} (loop, speed=X, gpus=N)") from None
        except ValueError:
            raise ValueError(f"bad replay option {option!r}: speed is 0-1000, gpus 1-{MAX_GPUS}") from None
    return ReplaySpec(DEMO_CAPTURE if path == "demo" else Path(path), loop, speed, gpus)


class ReplaySource(NvmlSource):
    """The nvml source over a capture, plus the recorded load phase so demo data explains itself."""

    nvml: CaptureNvml

    def read(self, index: int, tier: Tier) -> Sample:
        sample = super().read(index, tier)
        if tier is Tier.FAST:
            phase = self.nvml.phase(index)
            if phase is not None:
                labels = (*self.devices[index].labels, ("phase", phase))
                sample.add("gpumon_replay_phase", labels, 1.0)
        return sample


def replay_source(spec: ReplaySpec, opt_ins: frozenset[str] = frozenset()) -> ReplaySource:
    """An NvmlSource over the capture. Raises CaptureError if it cannot be read."""
    capture = load_capture(spec.path)
    nvml = CaptureNvml(capture, gpus=spec.gpus, speed=spec.speed, loop=spec.loop)
    return ReplaySource(nvml, backend="replay", capture=spec.name, opt_ins=opt_ins)
