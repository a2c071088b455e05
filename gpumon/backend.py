"""The sources a configuration asks for, built and opened: the GPUs (real NVML, or a replayed
capture, with `auto` falling back to the bundled one), InfiniBand and NCCL RAS. `gpumon run` and
`gpumon snapshot` both start here.

Adding a source: a module in gpumon/sources/ implementing `Source` or `AsyncSource`
(gpumon/sources/base.py), and one line in `build_backend` below.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog

from gpumon.attribution.owners import Owners
from gpumon.attribution.procfs import Procfs
from gpumon.config import Config
from gpumon.health import Health
from gpumon.model import BackendUnavailable, Device
from gpumon.rounds import Rounds
from gpumon.sampler import Intervals, Sampler
from gpumon.sources.base import AsyncSource, Source
from gpumon.sources.infiniband import InfinibandSource
from gpumon.sources.jobs import JobMapSource
from gpumon.sources.mig import MigSource
from gpumon.sources.nccl_ras import NcclRasSource
from gpumon.sources.nvml import NvmlSource
from gpumon.sources.processes import ProcessSource
from gpumon.sources.replay import DEMO_CAPTURE, ReplaySpec, parse_replay_spec, replay_source
from gpumon.store import Store

log = structlog.get_logger("gpumon")


@dataclass
class Backend:
    """The GPU source (what `backend` names) and every source the sampler polls, GPUs first."""

    gpus: NvmlSource
    sources: list[Source | AsyncSource]

    @property
    def name(self) -> str:
        return self.gpus.backend

    @property
    def capture(self) -> str:
        """The replayed capture's name, "" for real GPUs."""
        return self.gpus.capture

    @property
    def devices(self) -> list[Device]:
        return self.gpus.devices

    @property
    def demo_note(self) -> str:
        if not self.capture:
            return ""
        return (f"gpumon is replaying a recorded capture ({self.capture}), not reading real GPUs. "
                "Every value here is from that recording.")


def gpu_source(config: Config, replay: ReplaySpec | None = None) -> NvmlSource:
    """NVML, or the capture `replay` (or config.backend) names. Raises BackendUnavailable."""
    if replay is None and config.backend.startswith("replay:"):
        replay = parse_replay_spec(config.backend)
    if replay is not None:
        return replay_source(replay, config.opt_ins)
    import pynvml

    return NvmlSource(pynvml, backend="nvml", opt_ins=config.opt_ins)


def build_backend(config: Config, replay: ReplaySpec | None = None) -> Backend:
    """Every source the configuration enables. Raises BackendUnavailable."""
    gpus = gpu_source(config, replay)
    mig = MigSource(gpus)
    sources: list[Source | AsyncSource] = [gpus, mig]
    owners = Owners()
    processes = config.attribution.processes
    if processes.enabled:
        # A replayed capture's PIDs are not this host's: its /proc is read only when proc_root points
        # somewhere else (a fake tree, in tests).
        replayed_here = bool(gpus.capture) and processes.proc_root == Path("/proc")
        sources.append(ProcessSource(gpus, owners, procfs=None if replayed_here else Procfs(processes.proc_root),
                                     max_per_gpu=processes.max_per_gpu, per_process="process_pids" in config.opt_ins,
                                     utilization=processes.utilization))
    if config.attribution.kubernetes.enabled:
        from gpumon.sources.kubelet import KubeletSource  # imports grpc: only where Kubernetes is

        sources.append(KubeletSource(config.attribution.kubernetes, gpus, owners, mig))
    if config.attribution.jobs.mapping_dir is not None:
        sources.append(JobMapSource(config.attribution.jobs.mapping_dir, gpus, owners))
    ib, ras = config.interconnect.infiniband, config.interconnect.nccl_ras
    if ib.enabled:
        # Replayed GPUs are not on this host's PCIe tree: no GPU-NIC affinity for them.
        sources.append(InfinibandSource(ib.root, rescan_interval=ib.rescan_interval,
                                        slow_interval=config.sampler.slow_interval, gpus=lambda: gpus.devices,
                                        pci_root=None if gpus.capture else ib.pci_root))
    if ras.enabled:
        sources.append(NcclRasSource(ras.address.host, ras.address.port, timeout=ras.timeout,
                                     timeout_factor=ras.timeout_factor,
                                     interval=ras.interval or config.sampler.slow_interval))
    return Backend(gpus, sources)


def intervals_of(config: Config) -> Intervals:
    return Intervals(config.sampler.fast_interval, config.sampler.slow_interval, config.sampler.deadline)


async def open_sampler(config: Config, store: Store, rounds: Rounds | None = None,
                       health: Health | None = None) -> tuple[Sampler, Backend]:
    """Build the sources and open them; `auto` retries with the bundled capture when NVML cannot be
    loaded. Raises BackendUnavailable."""
    backend = build_backend(config)
    sampler = Sampler(backend.sources, store, intervals_of(config), rounds=rounds, health=health)
    try:
        await sampler.open()
    except BackendUnavailable as exc:
        if config.backend != "auto":
            raise
        log.warning("NVML unavailable; backend auto falls back to the bundled H200 capture (DEMO DATA)",
                    reason=str(exc))
        backend = build_backend(config, ReplaySpec(DEMO_CAPTURE, loop=True))
        sampler = Sampler(backend.sources, store, intervals_of(config), rounds=rounds, health=health)
        await sampler.open()
    return sampler, backend
