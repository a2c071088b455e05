"""The capture loader, and what only CaptureNvml does: play a trace by an injected clock, at a speed,
looped, fanned out, labelled by phase. What both fakes answer alike is in test_nvml_api.py."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pynvml
import pytest

from gpumon.model import BackendUnavailable
from gpumon.sources.capture import Capture, CaptureError, load_capture
from gpumon.sources.capture_nvml import CaptureNvml
from tests.support.clock import FakeClock
from tests.support.nvml import record_at

PHASES = ["idle", "compute", "membw", "pcie", "memfull", "bursty", "idle2"]
RECORDED_UUID = "GPU-5d0c1a2e-0000-4000-8000-00000000c0de"
RECORDED_BUS_ID = "00000000:00:06.0"
COMPUTE_AT = 10.0  # seconds into the trace: inside the `compute` phase (8.5 s .. 16.4 s)


# --- helpers -----------------------------------------------------------------------------------


def offset(capture: Capture, i: int, gpu: int = 0) -> float:
    """Seconds from the start of the trace to record i."""
    trace = capture.traces[gpu]
    return float(trace[i]["t"] - trace[0]["t"])


def make(capture: Capture, clock: FakeClock, **kw: Any) -> CaptureNvml:
    fake = CaptureNvml(capture, clock=clock, **kw)
    fake.nvmlInit()
    return fake


def write_trace(path: Path, lines: list[str]) -> Path:
    """A trace, and beside it a probe.json with an (empty) entry for each GPU, unless one is there."""
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    probe = path.with_name("probe.json")
    if not probe.exists():
        probe.write_text(json.dumps({"devices": [{}] * 8}))
    return path


GOOD = '{"t": 1.0, "gpu": 0, "power_mw": 1000}'


def gpm_get(fake: CaptureNvml, s1: Any, s2: Any, metric_ids: list[int]) -> Any:
    mg = pynvml.c_nvmlGpmMetricsGet_t()
    mg.version = pynvml.NVML_GPM_METRICS_GET_VERSION
    mg.numMetrics = len(metric_ids)
    mg.sample1, mg.sample2 = s1, s2
    for j, metric_id in enumerate(metric_ids):
        mg.metrics[j].metricId = metric_id
    return fake.nvmlGpmMetricsGet(mg)


@pytest.fixture
def fake(capture: Capture, clock: FakeClock) -> CaptureNvml:
    return make(capture, clock)


# --- load_capture ------------------------------------------------------------------------------


def test_bundled_capture_loads(demo_path: Path) -> None:
    cap = load_capture(demo_path)
    assert cap.path == demo_path
    assert len(cap.traces) == 1
    trace = cap.traces[0]
    assert len(trace) == 168
    times = [r["t"] for r in trace]
    assert times == sorted(times)
    assert all(r["gpu"] == 0 for r in trace)
    assert [p["name"] for p in cap.phases] == PHASES
    assert len(cap.devices) == 1
    assert 41.9 < cap.duration(0) < 42.1  # 168 samples every 0.25 s


def test_a_trace_without_its_probe_is_refused_in_one_sentence(tmp_path: Path, demo_path: Path) -> None:
    """Played without probe.json the GPU had no name and no GPM: SM activity disappeared silently
    although the trace records it. Now the capture is refused, naming the missing file."""
    shutil.copy(demo_path / "trace.jsonl", tmp_path / "trace.jsonl")
    for path in (tmp_path, tmp_path / "trace.jsonl"):
        with pytest.raises(CaptureError, match=r"probe\.json: not found; a capture needs probe\.json beside"):
            load_capture(path)


def test_a_probe_without_an_entry_for_a_traced_gpu_is_refused(tmp_path: Path) -> None:
    (tmp_path / "probe.json").write_text('{"devices": [{}]}')
    write_trace(tmp_path / "trace.jsonl", ['{"t": 1.0, "gpu": 0}', '{"t": 1.0, "gpu": 1}'])
    with pytest.raises(CaptureError, match="no device entry for GPU 1"):
        load_capture(tmp_path)


def test_missing_capture_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(CaptureError, match="nowhere") as info:
        load_capture(missing)
    assert str(missing) in str(info.value)
    assert isinstance(info.value, BackendUnavailable)  # the daemon reports it as an unusable backend


def test_directory_without_trace_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match=r"trace\.jsonl"):
        load_capture(tmp_path)


def test_corrupt_line_names_file_and_line(tmp_path: Path) -> None:
    write_trace(tmp_path / "trace.jsonl", [GOOD, GOOD, "{not json", GOOD])
    with pytest.raises(CaptureError, match=r"trace\.jsonl:3: invalid JSON"):
        load_capture(tmp_path)


@pytest.mark.parametrize("line", [
    "[1, 2, 3]",
    '"a string"',
    '{"gpu": 0}',
    '{"t": 2.0}',
    '{"t": "2.0", "gpu": 0}',
    '{"t": 2.0, "gpu": "0"}',
    '{"t": 2.0, "gpu": 0.5}',
    '{"t": 2.0, "gpu": true}',
    '{"t": true, "gpu": 0}',
    '{"t": NaN, "gpu": 0}',
    '{"t": Infinity, "gpu": 0}',
    '{"t": 1e999, "gpu": 0}',
    '{"t": 1' + "0" * 400 + ', "gpu": 0}',  # an int too large for a float
])
def test_bad_record_names_its_line(tmp_path: Path, line: str) -> None:
    write_trace(tmp_path / "trace.jsonl", [GOOD, line, GOOD])
    with pytest.raises(CaptureError, match=r"trace\.jsonl:2: "):
        load_capture(tmp_path)


@pytest.mark.parametrize("lines", [[], [""], ["", "   ", ""]])
def test_empty_trace_is_an_error(tmp_path: Path, lines: list[str]) -> None:
    write_trace(tmp_path / "trace.jsonl", lines)
    with pytest.raises(CaptureError, match="no samples"):
        load_capture(tmp_path)


def test_blank_lines_are_skipped_and_records_sorted_per_gpu(tmp_path: Path) -> None:
    write_trace(tmp_path / "trace.jsonl", [
        '{"t": 3.0, "gpu": 1}', "", '{"t": 2.0, "gpu": 0}', '{"t": 1.0, "gpu": 1}', '{"t": 1.0, "gpu": 0}'])
    cap = load_capture(tmp_path / "trace.jsonl")
    assert [[r["t"] for r in tr] for tr in cap.traces] == [[1.0, 2.0], [1.0, 3.0]]
    assert [tr[0]["gpu"] for tr in cap.traces] == [0, 1]


def test_undecodable_trace_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "probe.json").write_text('{"devices": [{}]}')
    (tmp_path / "trace.jsonl").write_bytes(b'{"t": 1.0, "gpu": 0}\n\xff\xfe\n')
    with pytest.raises(CaptureError, match="cannot read"):
        load_capture(tmp_path)


def test_corrupt_probe_names_file_and_line(tmp_path: Path) -> None:
    write_trace(tmp_path / "trace.jsonl", [GOOD])
    (tmp_path / "probe.json").write_text('{\n  "devices": [\n    oops\n  ]\n}\n')
    with pytest.raises(CaptureError, match=r"probe\.json:3: invalid JSON"):
        load_capture(tmp_path)


@pytest.mark.parametrize("probe", ["[]", '{"devices": {}}', '{"devices": [1]}', "3"])
def test_probe_of_wrong_shape_is_an_error(tmp_path: Path, probe: str) -> None:
    write_trace(tmp_path / "trace.jsonl", [GOOD])
    (tmp_path / "probe.json").write_text(probe)
    with pytest.raises(CaptureError, match=r"probe\.json"):
        load_capture(tmp_path)


@pytest.mark.parametrize("phases", [
    "{}", "[1]", '[{"name": "x"}]', '[{"name": "x", "start": "0", "end": 1}]', '[{"start": 0, "end": 1}]',
])
def test_phases_of_wrong_shape_is_an_error(tmp_path: Path, phases: str) -> None:
    write_trace(tmp_path / "trace.jsonl", [GOOD])
    (tmp_path / "phases.json").write_text(phases)
    with pytest.raises(CaptureError, match=r"phases\.json"):
        load_capture(tmp_path)


def test_corrupt_phases_names_file_and_line(tmp_path: Path) -> None:
    write_trace(tmp_path / "trace.jsonl", [GOOD])
    (tmp_path / "phases.json").write_text('[\n{"name": "a",\n')
    with pytest.raises(CaptureError, match=r"phases\.json:\d+: invalid JSON"):
        load_capture(tmp_path)


def test_duration_of_short_and_degenerate_traces(tmp_path: Path, clock: FakeClock) -> None:
    write_trace(tmp_path / "trace.jsonl", [GOOD])
    assert load_capture(tmp_path).duration(0) == 0.25
    # All records at one instant: no span to divide by, yet it must play.
    write_trace(tmp_path / "trace.jsonl", [GOOD, GOOD, GOOD])
    cap = load_capture(tmp_path)
    assert cap.duration(0) > 0
    fake = make(cap, clock)
    clock.advance(7.3)
    assert fake.nvmlDeviceGetPowerUsage(fake.nvmlDeviceGetHandleByIndex(0)) == 1000


# --- CaptureNvml: lifecycle --------------------------------------------------------------------


def test_calls_before_init_raise_uninitialized(capture: Capture, clock: FakeClock) -> None:
    fake = CaptureNvml(capture, clock=clock)
    for call in (fake.nvmlDeviceGetCount, lambda: fake.nvmlDeviceGetHandleByIndex(0),
                 fake.nvmlSystemGetDriverVersion, fake.nvmlSystemGetCudaDriverVersion,
                 lambda: fake.nvmlDeviceGetHandleByUUID(RECORDED_UUID),
                 fake.nvmlGpmSampleAlloc, fake.nvmlEventSetCreate, fake.elapsed):
        with pytest.raises(pynvml.NVMLError_Uninitialized):
            call()


@pytest.mark.parametrize("kw", [{"gpus": 0}, {"gpus": -1}, {"speed": 0}, {"speed": -2.0},
                                {"speed": math.nan}, {"speed": math.inf}])
def test_bad_options_are_refused(capture: Capture, kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CaptureNvml(capture, **kw)


def test_system_answers(fake: CaptureNvml) -> None:
    assert fake.nvmlSystemGetDriverVersion() == "580.159.04"
    assert fake.nvmlSystemGetCudaDriverVersion() == 13000
    assert fake.nvmlDeviceGetCount() == 1
    h = fake.nvmlDeviceGetHandleByIndex(0)
    assert fake.nvmlDeviceGetIndex(h) == 0
    assert fake.nvmlDeviceGetUUID(h) == RECORDED_UUID
    assert fake.nvmlDeviceGetHandleByUUID(RECORDED_UUID) is h
    assert fake.nvmlDeviceGetHandleByUUID(RECORDED_UUID.encode()) is h
    with pytest.raises(pynvml.NVMLError_NotFound):
        fake.nvmlDeviceGetHandleByUUID("GPU-nope")
    for bad in (-1, 1):
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            fake.nvmlDeviceGetHandleByIndex(bad)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlDeviceGetPowerUsage(object())  # not one of its handles


# --- CaptureNvml: values over time -------------------------------------------------------------


@pytest.mark.parametrize("i", [0, 1, 40, 100, 166, 167])
def test_values_follow_the_trace(capture: Capture, clock: FakeClock, i: int) -> None:
    fake = make(capture, clock)
    h = fake.nvmlDeviceGetHandleByIndex(0)
    clock.advance(offset(capture, i) + 0.1)
    rec = capture.traces[0][i]
    assert record_at(capture, offset(capture, i) + 0.1) is rec
    assert fake.nvmlDeviceGetPowerUsage(h) == rec["power_mw"]
    assert fake.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU) == rec["temp_c"]
    assert fake.nvmlDeviceGetTotalEnergyConsumption(h) == rec["energy_mj_call"]
    assert fake.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM) == rec["sm_clock_mhz"]
    assert fake.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM) == rec["mem_clock_mhz"]
    assert fake.nvmlDeviceGetCurrentClocksEventReasons(h) == rec["clocks_event_reasons"]
    assert fake.nvmlDeviceGetPerformanceState(h) == rec["pstate"]
    u = fake.nvmlDeviceGetUtilizationRates(h)
    assert (u.gpu, u.memory) == (rec["util"]["gpu"], rec["util"]["memory"])
    m = fake.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    assert (m.total, m.used, m.free, m.reserved) == tuple(rec["mem"][k] for k in ("total", "used", "free", "reserved"))
    m1 = fake.nvmlDeviceGetMemoryInfo(h)
    assert m1.used == rec["mem"]["used"] + rec["mem"]["reserved"] and not hasattr(m1, "reserved")  # as the driver
    procs = fake.nvmlDeviceGetComputeRunningProcesses(h)
    assert [(p.pid, p.usedGpuMemory) for p in procs] == [(p["pid"], p["used"]) for p in rec["procs"]]


def test_speed_plays_faster(capture: Capture, clock: FakeClock) -> None:
    fake = make(capture, clock, speed=2)
    h = fake.nvmlDeviceGetHandleByIndex(0)
    rec = capture.traces[0][80]
    clock.advance((offset(capture, 80) + 0.1) / 2)
    assert fake.nvmlDeviceGetPowerUsage(h) == rec["power_mw"]
    assert fake.nvmlDeviceGetTotalEnergyConsumption(h) == rec["energy_mj_call"]


def test_loop_wraps_after_the_trace(capture: Capture, clock: FakeClock) -> None:
    fake = make(capture, clock, loop=True)
    h = fake.nvmlDeviceGetHandleByIndex(0)
    duration = capture.duration(0)
    clock.advance(duration - 0.05)
    assert fake.nvmlDeviceGetTotalEnergyConsumption(h) == capture.traces[0][-1]["energy_mj_call"]
    clock.advance(0.05 + offset(capture, 40) + 0.1)  # second time round
    assert fake.nvmlDeviceGetTotalEnergyConsumption(h) == capture.traces[0][40]["energy_mj_call"]
    clock.advance(5 * duration)
    assert fake.nvmlDeviceGetTotalEnergyConsumption(h) == capture.traces[0][40]["energy_mj_call"]


def test_phase_follows_phases_json(capture: Capture, clock: FakeClock) -> None:
    fake = make(capture, clock)
    t0 = capture.traces[0][0]["t"]
    assert fake.phase(0) is None  # the trace starts before the first labelled phase
    for ph in capture.phases:
        target = (ph["start"] + ph["end"]) / 2 - t0
        clock.now = 1000.0 + target
        assert fake.phase(0) == ph["name"]


# --- CaptureNvml: fan-out ----------------------------------------------------------------------


def test_fan_out_to_four_gpus(capture: Capture, clock: FakeClock) -> None:
    fake = make(capture, clock, gpus=4)
    assert fake.nvmlDeviceGetCount() == 4
    handles = [fake.nvmlDeviceGetHandleByIndex(i) for i in range(4)]
    assert len({id(h) for h in handles}) == 4
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlDeviceGetHandleByIndex(4)
    uuids = [fake.nvmlDeviceGetUUID(h) for h in handles]
    assert uuids[0] == RECORDED_UUID
    assert len(set(uuids)) == 4 and all(u.startswith("GPU-") for u in uuids)
    buses = [fake.nvmlDeviceGetPciInfo(h).busId for h in handles]
    assert buses[0] == RECORDED_BUS_ID
    assert len(set(buses)) == 4
    for h, uuid in zip(handles, uuids, strict=True):
        assert fake.nvmlDeviceGetHandleByUUID(uuid) is h
        assert fake.nvmlDeviceGetIndex(h) == h.index
        pci = fake.nvmlDeviceGetPciInfo(h)
        assert pci.busId.lower().endswith(f"{pci.bus:02x}:{pci.device:02x}.0")
        assert fake.nvmlDeviceGetName(h) == "NVIDIA H200"  # static facts are the recorded GPU's

    # Phase-shifted by a quarter of the trace each: different records at the same instant.
    clock.advance(0.1)
    duration = capture.duration(0)
    energies = [fake.nvmlDeviceGetTotalEnergyConsumption(h) for h in handles]
    assert len(set(energies)) == 4
    for k, energy in enumerate(energies):
        assert energy == record_at(capture, k * duration / 4 + 0.1)["energy_mj_call"]
    assert [fake.phase(k) for k in range(4)] == [None, "compute", "membw", "memfull"]


def test_fan_out_identities_never_collide(capture: Capture, clock: FakeClock) -> None:
    dev = capture.probe["devices"][0]["getters"]
    dev["nvmlDeviceGetUUID"]["ok"] = "GPU-11111111-2222-3333-4444-000000000002"
    dev["nvmlDeviceGetPciInfo"]["ok"]["busId"] = "00000000:12:00.0"
    fake = make(capture, clock, gpus=40)
    handles = [fake.nvmlDeviceGetHandleByIndex(i) for i in range(40)]
    assert len({fake.nvmlDeviceGetUUID(h) for h in handles}) == 40
    buses = [fake.nvmlDeviceGetPciInfo(h).busId for h in handles]
    assert len(set(buses)) == 40
    assert buses[0] == "00000000:12:00.0"
    assert all(len(b) == len("00000000:00:00.0") for b in buses)  # well-formed bus ids


# --- CaptureNvml: recorded errors and unknown calls --------------------------------------------


def test_recorded_probe_error_raises_that_class(capture: Capture, clock: FakeClock) -> None:
    getters = capture.probe["devices"][0]["getters"]
    getters["nvmlDeviceGetName"] = {"err": "NVMLError_NoPermission(4)", "us_first": 1.0, "us_med": 1.0,
                                    "us_p90": 1.0}
    fake = make(capture, clock)
    h = fake.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError) as info:
        fake.nvmlDeviceGetName(h)
    assert type(info.value) is pynvml.NVMLError_NoPermission
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlDeviceGetFanSpeed(h)  # recorded as NotSupported on the H200
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlDeviceGetTemperatureThreshold(h, 15)  # recorded parametrised error


@pytest.mark.parametrize(("err", "cls"), [
    ("NVMLError_Unknown", pynvml.NVMLError_Unknown),
    ("NVMLError_GpuIsLost(15)", pynvml.NVMLError_GpuIsLost),
    (pynvml.NVML_ERROR_TIMEOUT, pynvml.NVMLError_Timeout),
    ("NVMLError_SomethingNew(10)", pynvml.NVMLError_Timeout),  # unknown name: its code decides
    ("garbage", pynvml.NVMLError_Unknown),
])
def test_recorded_error_forms(capture: Capture, clock: FakeClock, err: Any, cls: type) -> None:
    for rec in capture.traces[0]:
        rec["temp_c"] = {"err": err}
    fake = make(capture, clock)
    with pytest.raises(pynvml.NVMLError) as info:
        fake.nvmlDeviceGetTemperature(fake.nvmlDeviceGetHandleByIndex(0), 0)
    assert type(info.value) is cls


def test_unknown_functions_and_pynvml_passthrough(fake: CaptureNvml) -> None:
    h = fake.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        fake.nvmlDeviceGetAPIRestriction(h, 0)  # neither implemented nor recorded
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        fake.nvmlDeviceGetAccountingStats(h, 1)
    with pytest.raises(AttributeError):
        fake.nvmlNoSuchFunctionAnywhere  # noqa: B018
    assert fake.NVML_CLOCK_SM == pynvml.NVML_CLOCK_SM
    assert fake.NVML_GPM_METRICS_GET_VERSION == pynvml.NVML_GPM_METRICS_GET_VERSION
    assert fake.nvmlMemory_v2 == pynvml.nvmlMemory_v2
    assert fake.c_nvmlGpmMetricsGet_t is pynvml.c_nvmlGpmMetricsGet_t
    assert fake.NVMLError is pynvml.NVMLError
    assert fake.NVMLError_NotSupported is pynvml.NVMLError_NotSupported


# --- CaptureNvml: GPM --------------------------------------------------------------------------


def gpm_window(capture: Capture, start: float, end: float, key: str) -> float:
    """Mean of a GPM metric over the records whose interval lies in (start, end] of the trace."""
    trace = capture.traces[0]
    t0 = trace[0]["t"]
    values = [float(r["gpm"][key]) for r in trace if start < r["t"] - t0 <= end]
    assert values
    return sum(values) / len(values)


def test_gpm_averages_the_records_in_between(fake: CaptureNvml, capture: Capture, clock: FakeClock) -> None:
    h = fake.nvmlDeviceGetHandleByIndex(0)
    support = fake.nvmlGpmQueryDeviceSupport(h)
    assert support.isSupportedDevice == 1
    s1, s2 = fake.nvmlGpmSampleAlloc(), fake.nvmlGpmSampleAlloc()
    clock.advance(COMPUTE_AT)
    fake.nvmlGpmSampleGet(h, s1)
    clock.advance(1.0)
    fake.nvmlGpmSampleGet(h, s2)
    mg = gpm_get(fake, s1, s2, [2, 5, 11, 210])
    sm, tensor, fp64, missing = (mg.metrics[j] for j in range(4))
    assert sm.nvmlReturn == 0 and tensor.nvmlReturn == 0
    assert sm.value == pytest.approx(gpm_window(capture, COMPUTE_AT, COMPUTE_AT + 1, "sm_util"))
    assert tensor.value == pytest.approx(gpm_window(capture, COMPUTE_AT, COMPUTE_AT + 1, "any_tensor_util"))
    assert tensor.value > 80  # a bf16 matmul keeps the tensor pipes busy
    assert fp64.nvmlReturn == 0 and fp64.value == 0.0  # not in the trace: probe.json's value
    assert missing.nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED
    fake.nvmlGpmSampleFree(s1)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        gpm_get(fake, s1, s2, [2])  # a freed sample


def test_gpm_without_samples_is_invalid(fake: CaptureNvml) -> None:
    h = fake.nvmlDeviceGetHandleByIndex(0)
    s1, s2 = fake.nvmlGpmSampleAlloc(), fake.nvmlGpmSampleAlloc()
    fake.nvmlGpmSampleGet(h, s2)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        gpm_get(fake, s1, s2, [2])  # s1 never sampled
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        gpm_get(fake, None, None, [2])


def test_gpm_same_instant_gives_the_current_record(fake: CaptureNvml, capture: Capture,
                                                   clock: FakeClock) -> None:
    h = fake.nvmlDeviceGetHandleByIndex(0)
    s1, s2 = fake.nvmlGpmSampleAlloc(), fake.nvmlGpmSampleAlloc()
    clock.advance(COMPUTE_AT)
    fake.nvmlGpmSampleGet(h, s1)
    fake.nvmlGpmSampleGet(h, s2)
    mg = gpm_get(fake, s1, s2, [5])
    assert mg.metrics[0].value == record_at(capture, COMPUTE_AT)["gpm"]["any_tensor_util"]


def test_gpm_window_across_the_loop(fake: CaptureNvml, capture: Capture, clock: FakeClock) -> None:
    h = fake.nvmlDeviceGetHandleByIndex(0)
    duration = capture.duration(0)
    s1, s2 = fake.nvmlGpmSampleAlloc(), fake.nvmlGpmSampleAlloc()
    clock.advance(duration - 0.6)
    fake.nvmlGpmSampleGet(h, s1)
    clock.advance(1.2)  # wraps: the last records, then the first ones
    fake.nvmlGpmSampleGet(h, s2)
    trace = capture.traces[0]
    t0 = trace[0]["t"]
    expected = [r["gpm"]["pcie_tx_mibps"] for r in trace
                if r["t"] - t0 > duration - 0.6 or r["t"] - t0 <= 0.6]
    assert len(expected) >= 4
    mg = gpm_get(fake, s1, s2, [20])
    assert mg.metrics[0].value == pytest.approx(sum(expected) / len(expected))


def test_gpm_recorded_errors(capture: Capture, clock: FakeClock) -> None:
    for rec in capture.traces[0]:
        rec["gpm"]["sm_util"] = {"err": 3}
    fake = make(capture, clock)
    h = fake.nvmlDeviceGetHandleByIndex(0)
    s1, s2 = fake.nvmlGpmSampleAlloc(), fake.nvmlGpmSampleAlloc()
    fake.nvmlGpmSampleGet(h, s1)
    clock.advance(1)
    fake.nvmlGpmSampleGet(h, s2)
    mg = gpm_get(fake, s1, s2, [2, 5])
    assert [mg.metrics[j].nvmlReturn for j in range(2)] == [pynvml.NVML_ERROR_NOT_SUPPORTED, 0]

    for rec in capture.traces[0]:
        rec["gpm"] = {"err": "NVMLError_Unknown"}  # the whole nvmlGpmMetricsGet failed
    with pytest.raises(pynvml.NVMLError_Unknown):
        gpm_get(fake, s1, s2, [2])

    for rec in capture.traces[0]:
        rec["gpm_sample"] = {"err": "NVMLError_GpuIsLost"}
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        fake.nvmlGpmSampleGet(h, s1)


# --- a copied capture ---------------------------------------------------------------------------


def test_recorded_event_files_roundtrip(tmp_path: Path, demo_path: Path, clock: FakeClock) -> None:
    """A capture copied elsewhere (as the recorder writes it) plays the same."""
    for name in ("trace.jsonl", "probe.json", "phases.json"):
        shutil.copy(demo_path / name, tmp_path / name)
    cap = load_capture(tmp_path)
    assert json.loads((tmp_path / "phases.json").read_text()) == cap.phases
    fake = make(cap, clock)
    clock.advance(COMPUTE_AT)
    assert fake.phase(0) == "compute"
