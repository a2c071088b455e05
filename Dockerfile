# syntax=docker/dockerfile:1
# gpumon's container image, the one deploy/kubernetes/base/daemonset.yaml runs:
#   docker build -t ghcr.io/gpumon/gpumon:0.1.0 .
# NVML (libnvidia-ml.so.1) is not in the image: the NVIDIA container toolkit mounts the host driver's
# copy when the container runs with NVIDIA_VISIBLE_DEVICES set (`docker run --gpus all ...`).

# Build stage: a virtual environment with gpumon and its dependencies (all of them have wheels, so no
# compiler), copied whole into the runtime stage.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gpumon ./gpumon
# gpumon/rules/bundled is a symlink to ../../rules: without this the wheel has no bundled rules.
COPY rules ./rules
RUN python -m venv /opt/gpumon \
    && /opt/gpumon/bin/pip install --no-compile . \
    && /opt/gpumon/bin/python -m compileall -q /opt/gpumon/lib

# Runtime stage: the same base (the venv's interpreter path must match), no build context, no pip cache.
FROM python:3.11-slim
LABEL org.opencontainers.image.title="gpumon" \
      org.opencontainers.image.description="NVIDIA GPU telemetry exporter and alerting daemon" \
      org.opencontainers.image.source="https://github.com/gpumon/gpumon" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed non-root uid/gid (65532, as distroless's "nonroot"), matching runAsUser in the DaemonSet.
RUN groupadd --system --gid 65532 gpumon \
    && useradd --system --uid 65532 --gid 65532 --home-dir /var/lib/gpumon --no-create-home \
       --shell /usr/sbin/nologin gpumon \
    && install -d -o 65532 -g 65532 -m 0700 /var/lib/gpumon \
    && install -d -m 0755 /etc/gpumon
COPY --from=build /opt/gpumon /opt/gpumon
ENV PATH=/opt/gpumon/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=utility
USER 65532:65532
WORKDIR /var/lib/gpumon
EXPOSE 9948
# Arguments go after the image name: --config /etc/gpumon/gpumon.yaml (the DaemonSet), --backend ..., etc.
ENTRYPOINT ["gpumon", "run"]
