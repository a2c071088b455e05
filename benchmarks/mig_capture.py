"""A capture of one H200 split into seven 1g.18gb instances, for the poll benchmark: made at run time
from the synthetic MIG capture's files (tests/fixtures/mig, read as data) by giving every record seven
GPU instances of one compute instance each, with the loads of the capture's own instances in turn."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

MIG_CAPTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "mig"  # data only
INSTANCES = 7  # the most 1g instances an H100/H200 takes


def seven_instances(record: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(record)
    layout = out["mig"]
    gis, devices = layout["gpu_instances"], layout["devices"]
    one_g = next(d for d in devices if d["name"].endswith(" 1g.18gb"))
    new_gis, new_devices, procs = [], [], []
    for k in range(INSTANCES):
        gi = 7 + k
        model = gis[k % len(gis)]
        new_gis.append(dict(model, gi=gi, profile="1g.18gb", profile_id=19, placement=[k, 1]))
        pid = 6100 + k
        device = dict(copy.deepcopy(one_g), gi=gi, ci=0, uuid=f"MIG-7a1c0e42-{gi:04x}-4000-8000-0000000b0000",
                      procs=[{"pid": pid, "used": one_g["mem"]["used"]}])
        new_devices.append(device)
        procs.append({"pid": pid, "used": one_g["mem"]["used"], "gi": gi, "ci": 0})
    layout["gpu_instances"], layout["devices"] = new_gis, new_devices
    out["procs"] = procs
    return out


def write(directory: Path, source: Path = MIG_CAPTURE) -> Path:
    """The seven-instance capture in `directory` (created); returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "probe.json").write_text((source / "probe.json").read_text())
    (directory / "phases.json").write_text((source / "phases.json").read_text())
    lines = [json.loads(line) for line in (source / "trace.jsonl").read_text().splitlines() if line.strip()]
    (directory / "trace.jsonl").write_text("".join(json.dumps(seven_instances(r), separators=(",", ":")) + "\n"
                                                   for r in lines))
    return directory
