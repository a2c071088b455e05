"""The kubelet's PodResources API: the protocol buffer definition and the modules grpcio-tools
generates from it (podresources_pb2*.py, checked in; `python -m gpumon.kubelet.generate`)."""
