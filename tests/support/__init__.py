"""What the tests share: clocks, ports, the fake NVML harness and its faults, TLS material, the
real servers as subprocesses, deployment tools. Fixtures that use these live in tests/conftest.py."""
