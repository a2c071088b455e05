"""Which pods hold each GPU: the kubelet's PodResources API, and the kubelet's pod log directories to
name the pods and containers that processes' cgroups point at.

`List` over the kubelet's unix socket gives every pod's containers and the devices each was given,
by resource (`nvidia.com/gpu`, `nvidia.com/mig-*`, ...). Device plugins name a GPU by its UUID, by
`<UUID>::<replica>` when it is time-sliced (NVIDIA's plugin), by its index (`deviceIDStrategy:
index`) or, on GKE, `nvidia<index>`; a MIG device by its MIG UUID, or on GKE `nvidia<index>/gi<gpu
instance>`, tied to its GPU instance through the MIG source's layout. The answer carries no pod UID,
and a process's cgroup carries nothing else: the kubelet's log directories join the two,
`/var/log/pods/<namespace>_<pod>_<uid>/` and
`/var/log/containers/<pod>_<namespace>_<container>-<container id>.log` (the kubelet's
BuildPodLogsDirectory and logSymlink; names cannot contain `_`).

It runs on its own task every `refresh_interval`, never per scrape; each call has a timeout and a
receive limit above gRPC's 4 MiB default (a large node's answer exceeds it). When the kubelet fails
the last good answer is kept, and its age exported, so owners do not vanish with a kubelet restart.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import structlog

from gpumon.attribution.owners import Holder, KubeView, Owners
from gpumon.config import KubernetesConfig
from gpumon.model import Sample, Tier
from gpumon.sources.base import Schedule, Unit
from gpumon.sources.mig import MigSource
from gpumon.sources.nvml import NvmlSource

log = structlog.get_logger("gpumon.kubelet")
# grpc's C core logs to stderr on its own (set before grpc is first imported, in this module's calls);
# only its errors belong beside gpumon's one-line logs.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

_POD_DIR = re.compile(r"^([a-z0-9][a-z0-9.-]*)_([a-z0-9][a-z0-9.-]*)_([0-9a-f-]{32,36})$")
_CONTAINER_LOG = re.compile(r"^([a-z0-9][a-z0-9.-]*)_([a-z0-9][a-z0-9.-]*)_([a-z0-9][a-z0-9-]*)-([0-9a-f]{64})\.log$")
MAX_LOG_ENTRIES = 100_000  # a node runs at most a few hundred pods; beyond this the directory is not the kubelet's


class KubeletSource:
    name = "kubelet"
    schedule = Schedule.ASYNC

    def __init__(self, settings: KubernetesConfig, gpus: NvmlSource, owners: Owners, mig: MigSource | None = None
                 ) -> None:
        self.settings = settings
        self.gpus = gpus
        self.mig = mig  # MIG devices' UUIDs, to tie `nvidia.com/mig-*` devices to their GPU instances
        self.owners = owners
        self.interval = settings.refresh_interval
        self._channel: Any = None
        self._stub: Any = None
        self._view: KubeView | None = None
        self._up = False
        self._errors: Counter[str] = Counter()
        self._last_error = ""

    async def open(self) -> list[Unit]:
        """Nothing is connected yet: a kubelet that is not there is a state (up 0), not a failure."""
        return [Unit("kubelet")]

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None

    def _connect(self) -> Any:
        # Imported here: grpc costs ~20 MiB of memory, which a host without Kubernetes should not pay.
        import grpc

        from gpumon.kubelet import podresources_pb2_grpc

        if self._stub is None:
            limit = self.settings.max_message_bytes
            self._channel = grpc.aio.insecure_channel(
                f"unix://{self.settings.socket}",
                options=[("grpc.max_receive_message_length", limit), ("grpc.enable_retries", 0)])
            self._stub = podresources_pb2_grpc.PodResourcesListerStub(self._channel)  # type: ignore[no-untyped-call]
        return self._stub

    async def poll(self, unit: Unit, tier: Tier) -> list[Sample]:
        import grpc

        from gpumon.kubelet import podresources_pb2

        try:
            answer = await self._connect().List(podresources_pb2.ListPodResourcesRequest(),
                                                timeout=self.settings.timeout)
            if not isinstance(answer, podresources_pb2.ListPodResourcesResponse):
                # grpc.aio hands back None for an answer that does not parse as the message
                self._failed("malformed", "the answer is not a ListPodResourcesResponse")
                return self._samples(unit)
            devices = self._devices(answer)
            pods, containers = await asyncio.to_thread(
                read_log_dirs, self.settings.pod_logs_dir, self.settings.container_logs_dir)
        except grpc.aio.AioRpcError as exc:
            self._failed(exc.code().name.lower(), exc.details() or "")
        except OSError as exc:
            self._failed("unreadable", str(exc))
        else:
            self._view = KubeView(devices, pods, containers, time.time())
            self.owners.set_kube(self._view)
            if not self._up:
                log.info("kubelet answering", socket=str(self.settings.socket), pods=len(pods))
            self._up, self._last_error = True, ""
        return self._samples(unit)

    def _failed(self, error: str, details: str) -> None:
        self._errors[error] += 1
        if self._up or self._last_error != error:  # once per change of state, not every refresh
            log.warning("kubelet PodResources unavailable; keeping its last answer", socket=str(self.settings.socket),
                        error=error, details=details[:200],
                        answer_age_s=None if self._view is None else round(time.time() - self._view.at))
        self._up, self._last_error = False, error

    def _devices(self, answer: Any) -> dict[str, tuple[Holder, ...]]:
        """Device id (as the plugin names it, replica suffix removed) -> the containers holding it."""
        held: dict[str, list[Holder]] = {}
        for pod in answer.pod_resources:
            for container in pod.containers:
                for devices in container.devices:
                    resource = devices.resource_name
                    if not any(fnmatch.fnmatchcase(resource, p) for p in self.settings.resources):
                        continue
                    holder = Holder(pod.namespace, pod.name, container.name, resource)
                    for device_id in devices.device_ids:
                        key = device_id.split("::", 1)[0]  # a time-sliced replica of the GPU
                        if holder not in held.setdefault(key, []):
                            held[key].append(holder)
        return {key: tuple(holders) for key, holders in held.items()}

    def _samples(self, unit: Unit) -> list[Sample]:
        """One sample per GPU (its holders; empty when none, replacing what it held before) and one
        of the source's own state."""
        now = time.time()
        view = self._view
        out = []
        for device in self.gpus.devices:
            sample = Sample(f"{unit.key}:gpu{device.index}", Tier.SLOW.value, now, gpu=device.index)
            if view is not None:
                holders = (view.devices.get(device.uuid) or view.devices.get(f"nvidia{device.index}")
                           or view.devices.get(str(device.index)) or ())
                held = [("", h) for h in holders]
                # MIG devices: by MIG UUID (NVIDIA's plugin) or GKE's `nvidia<gpu>/gi<gpu instance>`.
                for mig_uuid, (gi, _) in (self.mig.instances(device.index) if self.mig is not None else {}).items():
                    for h in view.devices.get(mig_uuid) or view.devices.get(f"nvidia{device.index}/gi{gi}") or ():
                        if (str(gi), h) not in held:
                            held.append((str(gi), h))
                for gi_label, h in held:
                    sample.add("gpumon_gpu_owner_info", (*device.labels, ("gpu_instance", gi_label),
                                                         ("owner_namespace", h.namespace), ("owner_pod", h.pod),
                                                         ("owner_container", h.container), ("resource", h.resource)),
                               1.0)
            out.append(sample)
        # Refreshed by its own task and re-sent each refresh: kept as long as the slow tier's samples.
        own = Sample(unit.key, Tier.SLOW.value, now)
        if view is not None:
            own.add("gpumon_kubelet_answer_age_seconds", (), max(0.0, now - view.at))
            own.add("gpumon_kubelet_gpu_holders", (), sum(len(h) for h in view.devices.values()))
        own.add("gpumon_kubelet_up", (), 1.0 if self._up else 0.0)
        for error, count in sorted(self._errors.items()):
            own.add("gpumon_kubelet_errors_total", (("error", error),), count)
        return [*out, own]


def read_log_dirs(pod_logs: Path, container_logs: Path) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """(pod UID -> (namespace, pod), container id -> container name) from the kubelet's log
    directories; entries of another shape are skipped. Raises OSError when pod_logs is unreadable."""
    pods: dict[str, tuple[str, str]] = {}
    with os.scandir(pod_logs) as entries:
        for n, entry in enumerate(entries):
            if n >= MAX_LOG_ENTRIES:
                break
            if m := _POD_DIR.match(entry.name):
                pods[m.group(3)] = (m.group(1), m.group(2))
    containers: dict[str, str] = {}
    try:
        with os.scandir(container_logs) as entries:
            for n, entry in enumerate(entries):
                if n >= MAX_LOG_ENTRIES:
                    break
                # A name longer than 255 bytes is cut short by the kubelet and loses its id: skipped.
                if m := _CONTAINER_LOG.match(entry.name):
                    containers[m.group(4)] = m.group(3)
    except OSError:
        pass  # names of pods without names of containers still help
    return pods, containers
