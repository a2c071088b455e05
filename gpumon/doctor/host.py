"""Checks of the host rather than of one GPU: GPUs on the PCI bus that NVML does not see, the driver,
and the diagnosis layers only the application can see."""

from __future__ import annotations

from pathlib import Path

from gpumon.doctor.checks import Finding, Verdict
from gpumon.model import Device

NVIDIA = "0x10de"
GPU_CLASSES = ("0x0300", "0x0302")  # VGA and 3D controllers; NVSwitches are bridges (0x0680)


def nvidia_gpus_on_the_bus(sysfs: Path) -> list[str]:
    """PCI addresses (domain:bus:device.function, lower case) of NVIDIA display and 3D controllers."""
    found = []
    try:
        entries = sorted((sysfs / "bus" / "pci" / "devices").iterdir())
    except OSError:
        return []
    for entry in entries:
        try:
            vendor = (entry / "vendor").read_text().strip().lower()
            klass = (entry / "class").read_text().strip().lower()
        except OSError:
            continue
        if vendor == NVIDIA and klass.startswith(GPU_CLASSES):
            found.append(entry.name.lower())
    return found


def _address(bus_id: str) -> str:
    """NVML's "00000000:18:00.0" as sysfs names it, "0000:18:00.0"."""
    domain, _, rest = bus_id.lower().partition(":")
    return f"{domain[-4:]}:{rest}"


def gpus_missing(devices: list[Device], sysfs: Path, replayed: bool) -> Finding:
    check = "hardware.gpus_missing"
    if replayed:
        return Finding(check, Verdict.NOT_APPLICABLE, "replayed GPUs are not this host's: the PCI bus is not compared",
                       {"nvml_gpus": len(devices)})
    on_bus = nvidia_gpus_on_the_bus(sysfs)
    seen = {_address(d.pci_bus_id) for d in devices if d.pci_bus_id}
    missing = [a for a in on_bus if a not in seen]
    evidence = {"nvml_gpus": len(devices), "pci_gpus": len(on_bus), "missing": missing}
    if not on_bus:
        return Finding(check, Verdict.NOT_APPLICABLE, f"no NVIDIA GPU listed in {sysfs}/bus/pci/devices", evidence)
    if missing:
        return Finding(check, Verdict.FAIL, f"{len(missing)} GPU(s) on the PCI bus that NVML does not see: "
                       + ", ".join(missing), evidence,
                       "A GPU fell off the bus or failed to initialise: check `dmesg` for XID 79 or NVRM errors, "
                       "then drain the node and power-cycle it.")
    return Finding(check, Verdict.OK, f"all {len(on_bus)} NVIDIA GPU(s) on the PCI bus are seen by NVML", evidence)


def driver(devices: list[Device]) -> Finding:
    versions = sorted({d.driver_version for d in devices if d.driver_version})
    cuda = sorted({d.cuda_driver_version for d in devices if d.cuda_driver_version})
    evidence = {"driver": versions, "cuda_supported": cuda}
    if not versions:
        return Finding("driver.version", Verdict.NOT_APPLICABLE, "driver version not readable", evidence)
    return Finding("driver.version", Verdict.OK, f"driver {', '.join(versions)}, supports CUDA up to "
                   f"{', '.join(cuda) or 'unknown'}", evidence)


def application_layers() -> Finding:
    return Finding("application.algorithm_and_data", Verdict.NOT_APPLICABLE,
                   "algorithm (gradient norms) and data (input drift) live inside the application: publish them "
                   "beside gpumon's metrics (docs/doctor.md, rules/examples/)")
