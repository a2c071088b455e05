"""gpumon: NVIDIA GPU telemetry exporter and alerting daemon."""

__version__ = "0.1.0"
