"""gpumon's Grafana dashboards: the generator (grafana.generate) and its output (dashboards/)."""
