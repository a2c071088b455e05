"""A kubelet for tests: the real PodResources gRPC service on a unix socket (grpcio, from the
kubelet's published proto in gpumon/kubelet), answering what a test says, plus the kubelet's pod
log directories. It can also hang, refuse, answer garbage or answer more than a client accepts."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from gpumon.kubelet import podresources_pb2 as pb
from gpumon.kubelet import podresources_pb2_grpc as pb_grpc


@dataclass
class Pod:
    namespace: str
    name: str
    uid: str
    containers: dict[str, dict[str, list[str]]]  # container name -> resource -> device ids
    container_ids: dict[str, str] = field(default_factory=dict)  # container name -> 64-hex id


def answer(pods: list[Pod]) -> pb.ListPodResourcesResponse:
    """What a kubelet answers for these pods, with the CPU and memory parts real ones carry."""
    out = pb.ListPodResourcesResponse()
    for p in pods:
        pod = out.pod_resources.add(name=p.name, namespace=p.namespace)
        for name, resources in p.containers.items():
            c = pod.containers.add(name=name, cpu_ids=[2, 3])
            c.memory.add(memory_type="memory", size=1 << 30)
            for resource, ids in resources.items():
                d = c.devices.add(resource_name=resource, device_ids=ids)
                d.topology.nodes.add(ID=0)
    return out


class Kubelet(pb_grpc.PodResourcesListerServicer):
    """`mode`: "answer" (the pods), "hang" (never answers), "error" (an INTERNAL status)."""

    def __init__(self, pods: list[Pod]) -> None:
        self.pods = pods
        self.mode = "answer"
        self.calls = 0
        self.release = threading.Event()

    def List(self, request: pb.ListPodResourcesRequest, context: Any) -> Any:
        self.calls += 1
        if self.mode == "hang":
            self.release.wait(30)
        if self.mode == "error":
            context.abort(grpc.StatusCode.INTERNAL, "podresources: internal error")
        return answer(self.pods)


GARBAGE = b"\x0a\xff\xff\xff\xff\x0f not a ListPodResourcesResponse"


class _Garbage(grpc.GenericRpcHandler):
    """List answered with bytes that do not parse as the message (a broken or hostile server)."""

    def service(self, details: Any) -> Any:
        if details.method != "/v1.PodResourcesLister/List":
            return None
        return grpc.unary_unary_rpc_method_handler(lambda request, context: GARBAGE,
                                                   request_deserializer=bytes, response_serializer=bytes)


@contextmanager
def serving(socket: Path, kubelet: Kubelet, *, garbage: bool = False) -> Iterator[Kubelet]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         options=[("grpc.max_send_message_length", 256 * 1024 * 1024)])
    if garbage:
        server.add_generic_rpc_handlers((_Garbage(),))
    else:
        pb_grpc.add_PodResourcesListerServicer_to_server(kubelet, server)
    server.add_insecure_port(f"unix://{socket}")
    server.start()
    try:
        yield kubelet
    finally:
        kubelet.release.set()
        server.stop(grace=None)


def log_dirs(root: Path, pods: list[Pod]) -> tuple[Path, Path]:
    """/var/log/pods and /var/log/containers for these pods, as the kubelet lays them out."""
    pod_logs, container_logs = root / "pods", root / "containers"
    pod_logs.mkdir(parents=True, exist_ok=True)
    container_logs.mkdir(parents=True, exist_ok=True)
    for p in pods:
        pod_dir = pod_logs / f"{p.namespace}_{p.name}_{p.uid}"
        for name in p.containers:
            (pod_dir / name).mkdir(parents=True, exist_ok=True)
            (pod_dir / name / "0.log").write_text("")
            if (cid := p.container_ids.get(name)) is not None:
                link = container_logs / f"{p.name}_{p.namespace}_{name}-{cid}.log"
                if not link.is_symlink():
                    link.symlink_to(pod_dir / name / "0.log")
    return pod_logs, container_logs
