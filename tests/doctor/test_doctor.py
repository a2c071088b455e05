"""`gpumon doctor` on the replayed H200 capture: healthy, every check ok or not applicable; with each
fault written into a copy of the capture, the check that should name it does, with its evidence, next
step and exit status; the JSON validates against docs/doctor.schema.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gpumon.cli import main
from gpumon.doctor import host
from gpumon.doctor.checks import GpuView, Verdict, run_gpu_checks
from gpumon.model import Device, Sample
from tests.support.nvml import edited_capture

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "doctor.schema.json").read_text())


def doctor(capsys: pytest.CaptureFixture[str], backend: str, *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["doctor", "--backend", backend, "--json", *args])
    doc = json.loads(capsys.readouterr().out)
    jsonschema.validate(doc, SCHEMA)
    return code, doc


def finding(doc: dict[str, Any], check: str) -> dict[str, Any]:
    (found,) = [f for f in doc["findings"] if f["check"] == check]
    return found


def test_the_healthy_capture_is_all_ok_or_not_applicable(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = doctor(capsys, "replay:demo")
    assert code == 0 and doc["status"] == "ok" and doc["exit_status"] == 0
    assert {f["verdict"] for f in doc["findings"]} <= {"ok", "not_applicable"}
    assert finding(doc, "hardware.temperature")["evidence"]["slowdown_c"] == 89
    assert finding(doc, "driver.version")["evidence"]["driver"] == ["580.159.04"]
    assert finding(doc, "application.algorithm_and_data")["verdict"] == "not_applicable"


def edit_last(records: list[dict[str, Any]], **values: Any) -> None:
    for r in records:
        r.update(values)


FAULTS: dict[str, tuple[Any, str, str, str]] = {
    # name: (edit, check, verdict, a word of the next step)
    "slowdown temperature": (lambda probe, records: edit_last(records, temp_c=89), "hardware.temperature", "fail",
                             "airflow"),
    "PCIe Gen3 x8": (lambda probe, records: probe["devices"][0]["getters"].update(
        nvmlDeviceGetCurrPcieLinkGeneration={"ok": 3}, nvmlDeviceGetCurrPcieLinkWidth={"ok": 8}),
        "hardware.pcie_link", "warn", "Reseat"),
    "uncorrectable ECC": (lambda probe, records: [probe["devices"][0]["parametrized"].update(
        {"nvmlDeviceGetTotalEccErrors(1,0)": {"ok": 2}}), [r["fields"].update(ecc_dbe_vol=2) for r in records]],
        "hardware.ecc", "fail", "reset the GPU"),
    "fabric registration failed": (lambda probe, records: probe["devices"][0]["getters"].update(
        nvmlDeviceGetGpuFabricInfoV={"ok": {"state": 3, "status": 999, "cliqueId": 0, "healthMask": 0}}),
        "hardware.fabric", "fail", "fabricmanager"),
    "fabric bandwidth degraded": (lambda probe, records: probe["devices"][0]["getters"].update(
        nvmlDeviceGetGpuFabricInfoV={"ok": {"state": 3, "status": 0, "cliqueId": 1,
                                            "healthMask": 1 | 2 << 2 | 2 << 4 | 2 << 6}}),
        "hardware.fabric", "warn", "NVSwitch trays"),
    "fabric configuration incorrect": (lambda probe, records: probe["devices"][0]["getters"].update(
        nvmlDeviceGetGpuFabricInfoV={"ok": {"state": 3, "status": 0, "healthMask": 6 << 8 | 1 << 14}}),
        "hardware.fabric", "fail", "firmware"),
    "fabric manager disconnected": (lambda probe, records: probe["devices"][0]["getters"].update(
        nvmlDeviceGetGpuFabricInfoV={"ok": {"state": 3, "status": 0, "healthMask": 1 << 8 | 2 << 14}}),
        "hardware.fabric", "fail", "global fabric manager"),
    "fabric unhealthy (v3 summary)": (lambda probe, records: probe["devices"][0]["getters"].update(
        nvmlDeviceGetGpuFabricInfoV={"ok": {"state": 3, "status": 0, "healthMask": 0, "healthSummary": 2}}),
        "hardware.fabric", "fail", "NVSwitch trays"),
    "fabric at limited capacity (v3 summary)": (lambda probe, records: probe["devices"][0]["getters"].update(
        nvmlDeviceGetGpuFabricInfoV={"ok": {"state": 3, "status": 0, "healthMask": 0, "healthSummary": 3}}),
        "hardware.fabric", "warn", "NVSwitch trays"),
    "pending row remap": (lambda probe, records: probe["devices"][0]["getters"].update(
        nvmlDeviceGetRemappedRows={"ok": [0, 1, 1, 0]}), "hardware.row_remap", "warn", "Schedule a GPU reset"),
}


@pytest.mark.parametrize("fault", FAULTS, ids=list(FAULTS))
def test_each_fault_is_named_with_its_evidence_and_next_step(fault: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    edit, check, verdict, step = FAULTS[fault]
    capture = edited_capture(tmp_path / "capture", edit)
    code, doc = doctor(capsys, f"replay:{capture}")
    found = finding(doc, check)
    assert found["verdict"] == verdict, found
    assert step in found["next_step"] and found["evidence"]
    assert code == {"fail": 2, "warn": 1}[verdict]
    assert doc["findings"][0]["verdict"] == verdict  # worst first
    others = [f for f in doc["findings"] if f["check"] != check]
    assert {f["verdict"] for f in others} <= {"ok", "not_applicable"}, others


def test_the_pcie_link_finding_says_what_it_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit = FAULTS["PCIe Gen3 x8"][0]
    code, doc = doctor(capsys, f"replay:{edited_capture(tmp_path / 'capture', edit)}", "--only", "hardware.pcie_link")
    assert code == 1
    assert [f["check"] for f in doc["findings"]] == ["hardware.pcie_link"]
    assert finding(doc, "hardware.pcie_link")["evidence"] == {"generation": 3, "width": 8, "max_generation": 5,
                                                              "max_width": 16}
    assert "2x less host bandwidth" in finding(doc, "hardware.pcie_link")["summary"]


def test_an_xid_79_is_explained(tmp_path: Path) -> None:
    sample = Sample("gpu0", "fast", 0.0, gpu=0)
    sample.add("gpumon_xid_errors_total", (("gpu", "0"), ("uuid", "GPU-a"), ("xid", "79")), 1.0)
    (xid,) = [f for f in run_gpu_checks(GpuView(0, "GPU-a", [sample])) if f.check == "hardware.xid"]
    assert xid.verdict is Verdict.FAIL and "fell off the bus" in xid.next_step and xid.evidence == {"xids": {"79": 1}}


def fake_pci(root: Path, *devices: tuple[str, str, str]) -> Path:
    for address, vendor, klass in devices:
        d = root / "bus" / "pci" / "devices" / address
        d.mkdir(parents=True)
        (d / "vendor").write_text(vendor + "\n")
        (d / "class").write_text(klass + "\n")
    return root


def test_a_gpu_on_the_bus_that_nvml_does_not_see_fails(tmp_path: Path) -> None:
    sysfs = fake_pci(tmp_path, ("0000:18:00.0", "0x10de", "0x030200"), ("0000:2a:00.0", "0x10de", "0x030200"),
                     ("0000:05:00.0", "0x10de", "0x068000"),  # an NVSwitch: a bridge, not a GPU
                     ("0000:00:01.0", "0x8086", "0x060400"))
    seen = [Device(0, "GPU-a", "NVIDIA H200", "00000000:18:00.0", "hopper", True, "580", "13.0")]
    missing = host.gpus_missing(seen, sysfs, replayed=False)
    assert missing.verdict is Verdict.FAIL and missing.evidence["missing"] == ["0000:2a:00.0"]
    assert "dmesg" in missing.next_step
    both = [*seen, Device(1, "GPU-b", "NVIDIA H200", "00000000:2A:00.0", "hopper", True, "580", "13.0")]
    assert host.gpus_missing(both, sysfs, replayed=False).verdict is Verdict.OK
    assert host.gpus_missing(seen, sysfs, replayed=True).verdict is Verdict.NOT_APPLICABLE


def test_only_and_unknown_checks(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = doctor(capsys, "replay:demo", "--only", "workload")
    assert code == 0
    assert {f["check"].split(".")[0] for f in doc["findings"]} == {"workload"}
    assert main(["doctor", "--backend", "replay:demo", "--only", "hardwar"]) == 64
    assert "unknown check 'hardwar'" in capsys.readouterr().err
    assert main(["doctor", "--backend", "replay:demo", "--only", "workload.straggler_across_hosts"]) == 64
    assert "runs with --fleet" in capsys.readouterr().err


def test_the_terminal_report_has_no_colour_off_a_tty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = edited_capture(tmp_path / "capture", FAULTS["slowdown temperature"][0])
    assert main(["doctor", "--backend", f"replay:{capture}"]) == 2
    out = capsys.readouterr().out
    assert "\033[" not in out and "DEMO DATA" in out
    lines = out.splitlines()
    assert lines[1].startswith("gpumon doctor: 1 fail")
    assert lines[2].startswith("FAIL  GPU 0  hardware.temperature")
    assert "next: Check airflow" in out


def test_the_example_application_rules_load_in_gpumon_and_prometheus() -> None:
    import shutil
    import subprocess

    example = ROOT / "rules" / "examples" / "application.rules.yml"
    assert main(["rules", "check", str(example)]) == 0
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool not found: run the tests with `make test`"
    checked = subprocess.run([promtool, "check", "rules", str(example)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(("streak", "verdict"), [(700.0, Verdict.WARN), (30.0, Verdict.OK)])
def test_in_the_daemon_held_idle_needs_ten_minutes_without_a_break(streak: float, verdict: Verdict) -> None:
    sample = Sample("gpu0", "fast", 0.0, gpu=0)
    ids = (("gpu", "0"), ("uuid", "GPU-a"))
    sample.add("gpumon_compute_processes", ids, 1.0)
    sample.add("gpumon_sm_active_ratio", ids, 0.0)
    sample.add("gpumon_gpu_idle_held_streak_seconds", ids, streak)
    sample.add("gpumon_gpu_job_info", (*ids, ("gpu_instance", ""), ("job_id", "77"), ("user", "bob"),
                                       ("origin", "mapping")), 1.0)
    (held,) = [f for f in run_gpu_checks(GpuView(0, "GPU-a", [sample])) if f.check == "workload.held_idle"]
    assert held.verdict is verdict
    assert verdict is Verdict.OK or held.summary == "held by job 77 with SMs idle for 12 minutes"


def job_gpu(index: int, sm: float, job: str = "77") -> GpuView:
    sample = Sample(f"gpu{index}", "fast", 0.0, gpu=index)
    ids = (("gpu", str(index)), ("uuid", f"GPU-{index}"))
    sample.add("gpumon_sm_active_ratio", ids, sm)
    sample.add("gpumon_gpu_job_info", (*ids, ("gpu_instance", ""), ("job_id", job), ("user", "bob"),
                                       ("origin", "mapping")), 1.0)
    return GpuView(index, f"GPU-{index}", [sample])


def test_a_straggler_among_one_jobs_gpus_is_named() -> None:
    from gpumon.doctor.checks import straggler

    slow = straggler([job_gpu(0, 0.91), job_gpu(1, 0.88), job_gpu(2, 0.30), job_gpu(3, 0.05, job="other")])
    assert slow.verdict is Verdict.WARN and slow.gpu is None
    assert slow.summary == "job 77: GPU 2 at 30% SM activity, its other GPUs up to 91%"
    assert slow.evidence == {"job 77": {"0": 0.91, "1": 0.88, "2": 0.3}} and "GPU 2" in slow.next_step
    assert straggler([job_gpu(0, 0.91), job_gpu(1, 0.80)]).verdict is Verdict.OK
    assert straggler([job_gpu(0, 0.91), job_gpu(1, 0.10, job="b")]).verdict is Verdict.NOT_APPLICABLE


def host_with_processes(tmp_path: Path, trainer_libs: list[str], display_libs: list[str]) -> tuple[str, Path]:
    """The shared-GPU capture's idle start (its trainer and a display server on GPU 0) with a fake /proc
    in which both belong to Slurm job 77 and map the given libraries."""
    from tests.fixtures.procs import generate
    from tools.procfs import FakeProc, slurm_cgroup

    proc = FakeProc(tmp_path / "proc")
    for pid, libs in ((generate.TRAINER, trainer_libs), (generate.DISPLAY, display_libs)):
        proc.add(pid, "python3", cgroup=slurm_cgroup(77, 1001), uid=1001)
        proc.maps(pid, "/usr/lib/x86_64-linux-gnu/libc.so.6", *libs)
    config = tmp_path / "gpumon.yaml"
    config.write_text(f'attribution: {{processes: {{proc_root: "{tmp_path / "proc"}"}}}}\n')
    return f"replay:{generate.OUT_DIR}", config


CUDART_13 = "/opt/venv/lib/python3.11/site-packages/nvidia/cuda_runtime/lib/libcudart.so.13"


@pytest.mark.parametrize(("trainer", "display", "verdict", "words"), [
    ([CUDART_13, "/opt/venv/lib/libnccl.so.2.27.3"], [CUDART_13], "ok", "2 GPU process(es) map a CUDA runtime"),
    (["/usr/local/cuda-14.0/lib64/libcudart.so.14.0.35"], [CUDART_13], "fail", "driver version is insufficient"),
    (["/opt/torch/lib/libcudart-9335f6a2.so.13.1.52"], [], "warn", "minor-version compatibility"),
    ([CUDART_13, "/opt/a/libnccl.so.2.27.3"], [CUDART_13, "/opt/b/libnccl.so.2.21.5"], "warn",
     "job 77 runs NCCL 2.21.5 and 2.27.3"),
])
def test_the_cuda_runtime_each_gpu_process_maps_against_the_driver(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], trainer: list[str], display: list[str], verdict: str,
        words: str) -> None:
    backend, config = host_with_processes(tmp_path, trainer, display)
    code, doc = doctor(capsys, backend, "--config", str(config), "--only", "driver.cuda_runtime")
    found = finding(doc, "driver.cuda_runtime")
    assert found["verdict"] == verdict and words in found["summary"], found
    assert code == {"ok": 0, "warn": 1, "fail": 2}[verdict]
    assert found["evidence"]["driver_cuda"] == "13.0"


def test_a_process_whose_maps_cannot_be_read_is_not_a_finding(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                              ) -> None:
    backend, config = host_with_processes(tmp_path, [CUDART_13], [])
    for maps in (tmp_path / "proc").glob("*/maps"):
        maps.unlink()  # as another user's process reads without CAP_SYS_PTRACE: EACCES
    code, doc = doctor(capsys, backend, "--config", str(config), "--only", "driver.cuda_runtime")
    found = finding(doc, "driver.cuda_runtime")
    assert code == 0 and found["verdict"] == "not_applicable" and "not readable" in found["summary"]


def test_persistence_off_and_a_recommended_reset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def edit(probe: dict[str, Any], records: list[dict[str, Any]]) -> None:
        device = probe["devices"][0]
        device["getters"]["nvmlDeviceGetPersistenceMode"] = {"ok": 0}
        device["fields"]["by_id"]["230"] = {"ret": 0, "type": 1, "value": 4}  # NVML_GPU_RECOVERY_ACTION_DRAIN_AND_RESET
    code, doc = doctor(capsys, f"replay:{edited_capture(tmp_path / 'capture', edit)}", "--only",
                       "driver.persistence_mode", "hardware.recovery_action")
    assert code == 2
    assert finding(doc, "hardware.recovery_action")["summary"] == "NVML recommends a drain and a GPU reset"
    persistence = finding(doc, "driver.persistence_mode")
    assert persistence["verdict"] == "warn" and "nvidia-persistenced" in persistence["next_step"]


def test_rdma_ports_down_or_below_the_best_rate_of_their_kind(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from tools.ibsysfs import IbSysfs

    fabric = IbSysfs(tmp_path / "sys")
    for i, rate in enumerate(("400 Gb/sec (4X NDR)", "400 Gb/sec (4X NDR)", "200 Gb/sec (4X HDR)")):
        fabric.add_device(f"mlx5_{i}", ["pci0000:00", f"0000:00:0{i + 1}.0", f"0000:0{i + 1}:00.0"], rate=rate)
    config = tmp_path / "gpumon.yaml"
    config.write_text(f'interconnect: {{infiniband: {{root: "{fabric.ib_root}"}}}}\n')
    code, doc = doctor(capsys, "replay:demo", "--config", str(config), "--only", "interconnect")
    slow = finding(doc, "interconnect.infiniband")
    assert code == 1 and slow["verdict"] == "warn" and slow["summary"].endswith(": mlx5_2/1")
    assert slow["evidence"]["mlx5_2/1"]["rate"] == 25e9 and slow["evidence"]["mlx5_0/1"]["rate"] == 50e9
    fabric.link_down("mlx5_2", 1)
    code, doc = doctor(capsys, "replay:demo", "--config", str(config), "--only", "interconnect")
    assert code == 1 and finding(doc, "interconnect.infiniband")["summary"] == "RDMA port(s) down: mlx5_2/1"


def test_an_unreadable_backend_is_one_sentence_and_a_failure(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--backend", "replay:/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpumon: /nonexistent: capture not found") and "Traceback" not in err


def test_a_gpu_bound_to_another_driver_is_not_missing(tmp_path: Path) -> None:
    sysfs = fake_pci(tmp_path, ("0000:18:00.0", "0x10de", "0x030200"), ("0000:2a:00.0", "0x10de", "0x030200"))
    drivers = tmp_path / "bus" / "pci" / "drivers"
    (drivers / "vfio-pci").mkdir(parents=True)
    (sysfs / "bus" / "pci" / "devices" / "0000:2a:00.0" / "driver").symlink_to(drivers / "vfio-pci")  # a VM's
    seen = [Device(0, "GPU-a", "NVIDIA H200", "00000000:18:00.0", "hopper", True, "580", "13.0")]
    assert host.gpus_missing(seen, sysfs, replayed=False).verdict is Verdict.OK


def test_a_link_of_width_zero_is_not_a_division() -> None:
    sample = Sample("gpu0", "slow", 0.0, gpu=0)
    ids = (("gpu", "0"), ("uuid", "GPU-a"))
    for name, value in (("gpumon_pcie_link_generation", 1.0), ("gpumon_pcie_link_width", 0.0),
                        ("gpumon_pcie_link_max_generation", 5.0), ("gpumon_pcie_link_max_width", 16.0)):
        sample.add(name, ids, value)
    (link,) = [f for f in run_gpu_checks(GpuView(0, "GPU-a", [sample])) if f.check == "hardware.pcie_link"]
    assert link.verdict is Verdict.NOT_APPLICABLE


def test_a_fleet_with_no_gpumon_was_not_checked() -> None:
    from gpumon.doctor import fleet

    assert fleet.exit_status([]) == 3
    assert fleet.exit_status([fleet.Host("a:9948", {"hardware.ecc": Verdict.OK})]) == 0


def test_the_daemon_reads_each_processes_maps_once_until_it_changes(tmp_path: Path) -> None:
    from gpumon.attribution.procfs import Procfs
    from tools.procfs import FakeProc

    proc = FakeProc(tmp_path / "proc")
    proc.add(4242, "python3", start_time=100)
    proc.maps(4242, CUDART_13)
    procfs = Procfs(tmp_path / "proc")
    reads: list[int] = []
    real = procfs.libraries
    procfs.libraries = lambda pid: reads.append(pid) or real(pid)  # type: ignore[method-assign]
    now = [0.0]
    libraries = host.MappedLibraries(procfs, clock=lambda: now[0])
    assert libraries.libraries(4242) == {"cudart": "13"}
    proc.maps(4242, CUDART_13, "/opt/venv/lib/libnccl.so.2.27.3")  # NCCL loads when the process group starts
    now[0] = 60.0
    assert libraries.libraries(4242) == {"cudart": "13"} and reads == [4242]  # not read again yet
    now[0] = libraries.reread_after(4242) + 1
    assert libraries.libraries(4242) == {"cudart": "13", "nccl": "2.27.3"} and len(reads) == 2
    proc.remove(4242)
    proc.add(4242, "other", start_time=900)  # the PID names another process: read at once
    proc.maps(4242)
    assert libraries.libraries(4242) == {} and len(reads) == 3
    assert libraries.libraries(1) is None  # no such process
    libraries.next_round()
    libraries.next_round()  # a round in which 4242 was not asked for: forgotten
    assert libraries.libraries(4242) == {} and len(reads) == 4


def test_a_proc_of_another_pid_namespace_is_not_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tools.procfs import FakeProc

    backend, config = host_with_processes(tmp_path, [CUDART_13], [])
    FakeProc(tmp_path / "proc", host=False)  # a container's /proc: its PIDs are not NVML's
    code, doc = doctor(capsys, backend, "--config", str(config), "--only", "driver.cuda_runtime")
    found = finding(doc, "driver.cuda_runtime")
    assert code == 0 and found["verdict"] == "not_applicable" and "hostPID" in found["summary"]


def test_the_fabric_finding_names_the_configuration_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = edited_capture(tmp_path / "capture", lambda probe, records: probe["devices"][0]["getters"].update(
        nvmlDeviceGetGpuFabricInfoV={"ok": {"state": 3, "status": 0, "healthMask": 5 << 8 | 2 << 12,
                                            "healthSummary": 2}}))
    _, doc = doctor(capsys, f"replay:{capture}", "--only", "hardware.fabric")
    found = finding(doc, "hardware.fabric")
    assert found["summary"] == "the NVLink fabric reports the GPU's configuration incorrect: insufficient_nvlinks"
    assert found["evidence"]["incorrect_configuration"] == ["insufficient_nvlinks"]
    assert (found["evidence"]["health_summary"], found["evidence"]["partition_assigned"]) == ("unhealthy", 0.0)
