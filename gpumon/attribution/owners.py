"""Who holds each GPU and each GPU process, from what the attribution sources last read.

The kubelet source and the job-mapping source write their latest view here (whole, replaced at
once: readers on other threads never see half an update); the process source asks it who a
process belongs to. Nothing here guesses: a process whose pod UID no view names has no pod.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from gpumon.attribution.procfs import ProcessFacts, user_name


@dataclass(frozen=True)
class Holder:
    """A pod's container the kubelet gave a GPU to, through `resource` (nvidia.com/gpu, ...)."""

    namespace: str
    pod: str
    container: str
    resource: str


@dataclass(frozen=True)
class KubeView:
    """One answer of the kubelet, joined with its pod log directories."""

    devices: dict[str, tuple[Holder, ...]]  # device id as the device plugin names it -> holders
    pods: dict[str, tuple[str, str]]  # pod UID -> (namespace, pod name)
    containers: dict[str, str]  # container id -> container name
    at: float  # when the kubelet answered (time.time())


@dataclass(frozen=True)
class Job:
    id: str
    user: str = ""


@dataclass(frozen=True)
class Owner:
    """The labels that say whose a process is; empty where nothing says."""

    namespace: str = ""
    pod: str = ""
    container: str = ""
    job: str = ""
    user: str = ""

    def labels(self) -> tuple[tuple[str, str], ...]:
        return (("owner_namespace", self.namespace), ("owner_pod", self.pod),
                ("owner_container", self.container), ("job_id", self.job), ("user", self.user))


@dataclass
class Owners:
    kube: KubeView | None = None
    jobs: dict[str, tuple[Job, ...]] = field(default_factory=dict)  # mapping file name ("0", "2.1") -> jobs
    # Bumped on every update, so the process source knows when to recompute labels it cached.
    version: int = 0
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    def set_kube(self, view: KubeView | None) -> None:
        self.kube = view
        self.version = next(self._counter)

    def set_jobs(self, jobs: dict[str, tuple[Job, ...]]) -> None:
        self.jobs = jobs
        self.version = next(self._counter)

    def holders(self, uuid: str, index: int) -> tuple[Holder, ...]:
        """The pods' containers holding a GPU: device plugins name it by UUID, or (GKE) `nvidia<index>`."""
        kube = self.kube
        if kube is None:
            return ()
        return kube.devices.get(uuid) or kube.devices.get(f"nvidia{index}", ())

    def gpu_jobs(self, index: int) -> tuple[Job, ...]:
        return self.jobs.get(str(index), ())

    def of_process(self, facts: ProcessFacts, gpu: int) -> Owner:
        """The process's pod (its cgroup's pod UID, named by the kubelet's view) and job (its
        cgroup's, else the GPU's when the mapping gives the GPU to exactly one job)."""
        namespace = pod = container = ""
        kube = self.kube
        if facts.pod_uid and kube is not None:
            namespace, pod = kube.pods.get(facts.pod_uid, ("", ""))
            if pod:
                container = kube.containers.get(facts.container_id, "")
        job, user = facts.job_id, user_name(facts.uid)
        if not job and len(mapped := self.gpu_jobs(gpu)) == 1:
            job, user = mapped[0].id, user or mapped[0].user
        return Owner(namespace, pod, container, job, user)
