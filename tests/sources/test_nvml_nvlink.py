"""NVLink through gpumon's nvml source on both fake NVMLs, on the SYNTHETIC 8-GPU HGX H200 capture in
tests/fixtures/nvlink8 (generated, not recorded: see its README.md).

Every expected number is read from the capture files here, never typed in: per-link state and
error counters from probe.json and the playing trace record, per-link rates from the record's GPM
lists, the totals from the GPM totals and the fields 138/139 KiB counters, the link speed from field 90
(MB/s) and the utilisation ratio from the per-link rates over that speed.
"""

from __future__ import annotations

import itertools
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpumon.model import Sample, Tier
from gpumon.sources.capture import load_capture
from gpumon.sources.nvml import NvmlSource
from gpumon.sources.nvml_readers import NVLINK_ERRORS
from tests.fixtures.nvlink8 import generate
from tests.support.clock import FakeClock
from tests.support.nvml import NvmlFake
from tools.fakenvml import environment

CAPTURE_DIR = generate.OUT_DIR
CAPTURE = load_capture(CAPTURE_DIR)
T0 = CAPTURE.traces[0][0]["t"]
MIB = 2**20
GPUS = len(CAPTURE.traces)
Series = dict[tuple[str, str, str, str], float]  # (metric, gpu, link, type or direction) -> value


def middle_of(phase: str) -> float:
    p = next(p for p in CAPTURE.phases if p["name"] == phase)
    return float((p["start"] + p["end"]) / 2 - T0)


def record_at(gpu: int, position: float) -> dict[str, Any]:
    """The trace record the fakes play at `position` seconds (the last one not after it)."""
    trace = CAPTURE.traces[gpu]
    return [r for r in trace if r["t"] - trace[0]["t"] <= position][-1]


def probe(gpu: int, key: str) -> Any:
    entry = CAPTURE.probe["devices"][gpu]["parametrized"].get(key)
    return None if entry is None else entry.get("ok")


def active_links(gpu: int) -> list[int]:
    links = []
    for link in range(36):
        state = probe(gpu, f"nvmlDeviceGetNvLinkState({link})")
        if state is None:  # recorded as an error: the end of the links
            break
        if state == 1:
            links.append(link)
    return links


def series(sample: Sample, gpu: int) -> Series:
    out: Series = {}
    for name, labels, value in sample.values:
        d = dict(labels)
        if "nvlink" in name:
            out[(name, str(gpu), d.get("link", ""), d.get("type", d.get("direction", "")))] = value
    return out


def opened(nvml: Any, clock: FakeClock) -> NvmlSource:
    source = NvmlSource(nvml, clock=clock)
    source.open()
    clock.advance(1.0)  # GPM needs two samples at least 100 ms apart
    return source


def polled(source: NvmlSource) -> Series:
    got: Series = {}
    for gpu in range(GPUS):
        for tier in (Tier.SLOW, Tier.FAST):  # open() took the first GPM sample, 1 s before
            got.update(series(source.read(gpu, tier), gpu))
    return got


def speed(gpu: int) -> float:
    """Field 90, NVLINK_SPEED_MBPS_COMMON, in bytes per second (MB is 10^6 bytes)."""
    return float(CAPTURE.probe["devices"][gpu]["fields"]["by_id"]["90"]["value"]) * 1e6


def expected(position: float) -> Series:
    """What gpumon must export at `position`, from the capture files alone."""
    want: Series = {}
    for gpu in range(GPUS):
        rec = record_at(gpu, position)
        want[("gpumon_nvlink_speed_bytes_per_second", str(gpu), "", "")] = speed(gpu)
        for direction in ("rx", "tx"):
            want[(f"gpumon_nvlink_total_{direction}_bytes_per_second", str(gpu), "", "")] = (
                rec["gpm"][f"nvlink_{direction}_mibps"] * MIB)
            # fields 138/139 hold one counter per link: the metric is their sum (scopeId UINT_MAX)
            want[(f"gpumon_nvlink_{direction}_bytes_total", str(gpu), "", "")] = (
                sum(rec["fields"][f"nvlink_{direction}_kib"]) * 1024.0)
        for link in active_links(gpu):
            want[("gpumon_nvlink_up", str(gpu), str(link), "")] = 1.0
            counts = rec.get("nvlink_errors", {}).get(str(link))
            for code, name in NVLINK_ERRORS.items():
                if name == "crc_data":  # NVLink 4.0 has none: no series (and no error counted)
                    continue
                value = counts[code] if counts else probe(gpu, f"nvmlDeviceGetNvLinkErrorCounter({link},{code})")
                want[("gpumon_nvlink_errors_total", str(gpu), str(link), name)] = float(value)
            for direction in ("rx", "tx"):
                rate = rec["gpm"][f"nvlink_{direction}_mibps_per_link"][link] * MIB
                want[(f"gpumon_nvlink_{direction}_bytes_per_second", str(gpu), str(link), "")] = rate
                want[("gpumon_nvlink_utilization_ratio", str(gpu), str(link), direction)] = rate / speed(gpu)
    return want


# --- the capture itself --------------------------------------------------------------------------


def test_committed_capture_is_what_the_generator_makes() -> None:
    assert generate.stale() == [], "regenerate: .venv/bin/python -m tests.fixtures.nvlink8.generate"


def test_capture_is_small_and_says_it_is_synthetic() -> None:
    sizes = {name: (CAPTURE_DIR / name).stat().st_size for name in generate.FILES}
    assert sum(sizes.values()) < 800_000, sizes  # 18 per-link byte counters per record and direction
    assert "NOT RECORDED ON HARDWARE" in CAPTURE.probe["synthetic"]
    assert "SYNTHETIC" in (CAPTURE_DIR / "README.md").read_text()


def test_capture_totals_agree_with_links_and_throughput_counters() -> None:
    """GPM totals are the sum of the per-link rates, and fields 138/139 (KiB) grow by the GPM
    totals over each gap: the three views of NVLink traffic a collector can take agree."""
    for gpu in range(GPUS):
        trace = CAPTURE.traces[gpu]
        for prev, rec in itertools.pairwise(trace):
            gpm, dt = rec["gpm"], rec["t"] - prev["t"]
            for direction, field in (("rx", "nvlink_rx_kib"), ("tx", "nvlink_tx_kib")):
                total = gpm[f"nvlink_{direction}_mibps"]
                assert total == pytest.approx(sum(gpm[f"nvlink_{direction}_mibps_per_link"]), abs=0.06)
                grown = (sum(rec["fields"][field]) - sum(prev["fields"][field])) / 1024 / dt
                assert grown == pytest.approx(total, rel=1e-3, abs=0.02)
                for link, (now, before) in enumerate(zip(rec["fields"][field], prev["fields"][field], strict=True)):
                    rate = gpm[f"nvlink_{direction}_mibps_per_link"][link]
                    assert (now - before) / 1024 / dt == pytest.approx(rate, rel=1e-3, abs=0.01)
                # No link runs above its capacity (field 90, NVLINK_SPEED_MBPS_COMMON, in MB/s).
                capacity = CAPTURE.probe["devices"][gpu]["fields"]["by_id"]["90"]["value"] * 1e6
                assert max(gpm[f"nvlink_{direction}_mibps_per_link"]) * MIB < capacity


# --- gpumon's nvml source, on each fake ----------------------------------------------------------


@pytest.mark.parametrize("phase", ["idle", "compute", "bursty"])
def test_source_exports_the_captures_nvlink(nvml_fake: NvmlFake, phase: str) -> None:
    position = middle_of(phase)
    source = opened(nvml_fake.start(CAPTURE_DIR, gpus=GPUS, at=position), FakeClock())
    got = polled(source)
    want = expected(position)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9), key
    source.close()


def test_down_link_has_no_series_and_the_others_do(nvml_fake: NvmlFake) -> None:
    source = opened(nvml_fake.start(CAPTURE_DIR, gpus=GPUS, at=middle_of("compute")), FakeClock())
    got = polled(source)
    down_gpu, down_link = generate.DOWN_LINK
    for gpu in range(GPUS):
        links = {k[2] for k in got if k[1] == str(gpu) and k[0] == "gpumon_nvlink_up"}
        want = set(map(str, range(generate.LINKS))) - ({str(down_link)} if gpu == down_gpu else set())
        assert links == want, gpu
    assert not [k for k in got if k[1:3] == (str(down_gpu), str(down_link))]  # no rate, no utilisation
    ratios = {k[1:] for k in got if k[0] == "gpumon_nvlink_utilization_ratio"}
    assert len(ratios) == 2 * (GPUS * generate.LINKS - 1)
    assert (str(down_gpu), str((down_link + 1) % generate.LINKS), "rx") in ratios
    source.close()


def test_traffic_rises_in_compute_and_utilisation_stays_below_one(nvml_fake: NvmlFake) -> None:
    by_phase = {}
    for phase in ("idle", "compute"):
        source = opened(nvml_fake.start(CAPTURE_DIR, gpus=GPUS, at=middle_of(phase)), FakeClock())
        by_phase[phase] = polled(source)
        source.close()
    capacity = speed(0)  # bytes/s per link and direction
    for phase, got in by_phase.items():
        rates = {(*k[1:3], k[0].split("_")[2]): v for k, v in got.items()
                 if k[0] in ("gpumon_nvlink_rx_bytes_per_second", "gpumon_nvlink_tx_bytes_per_second")}
        exported = {k[1:]: v for k, v in got.items() if k[0] == "gpumon_nvlink_utilization_ratio"}
        assert exported.keys() == rates.keys()
        assert all(exported[k] == pytest.approx(rate / capacity, rel=1e-9) for k, rate in rates.items())
        ratios = list(exported.values())
        assert len(ratios) == 2 * (GPUS * generate.LINKS - 1)
        assert all(0 <= r < 1 for r in ratios), phase
        # The ratio gpumon's per-link rate gives against link capacity is the generator's load.
        assert sum(ratios) / len(ratios) == pytest.approx(
            max(generate.PHASE_LOAD[phase], generate.IDLE_MIBPS * MIB / capacity), rel=0.02)


def test_error_counters_rise_on_the_marginal_link(nvml_fake: NvmlFake) -> None:
    gpu, link = generate.ERROR_LINK
    seen = []
    for position in (middle_of("idle"), middle_of("compute"), middle_of("idle2")):
        source = opened(nvml_fake.start(CAPTURE_DIR, gpus=GPUS, at=position), FakeClock())
        got = polled(source)
        source.close()
        seen.append({name: got[("gpumon_nvlink_errors_total", str(gpu), str(link), name)]
                     for name in NVLINK_ERRORS.values() if name != "crc_data"})
        assert ("gpumon_nvlink_errors_total", str(gpu), str(link), "crc_data") not in got  # NVLink 4.0
        assert source.error_counts() == {}  # and not an error either
        others = {k: v for k, v in got.items()
                  if k[0] == "gpumon_nvlink_errors_total" and k[1:3] != (str(gpu), str(link))}
        assert set(others.values()) == {0.0}
    assert seen[0]["replay"] < seen[1]["replay"] < seen[2]["replay"]
    assert seen[0]["crc_flit"] < seen[2]["crc_flit"] and seen[0]["ecc_data"] < seen[2]["ecc_data"]
    assert all(seen[0][n] <= seen[1][n] <= seen[2][n] for n in seen[0])


# --- `gpumon run --backend nvml` on the fake library, scraped -------------------------------------


@pytest.mark.integration
def test_gpumon_run_exports_nvlink_and_passes_promtool(libfakenvml: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.processes import Gpumon, need

    position = middle_of("compute")
    for name, value in environment(libfakenvml, capture=CAPTURE_DIR, speed=0, start=position).items():
        monkeypatch.setenv(name, value)
    with Gpumon(tmp_path, backend="nvml") as g:
        time.sleep(1.3)  # one more fast round, so GPM series are present
        status, body = g.get("/metrics")
        log = g.log
    assert status == 200
    got: Series = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.name.startswith("gpumon_nvlink_"):
                got[(s.name, s.labels["gpu"], s.labels.get("link", ""),
                     s.labels.get("type", s.labels.get("direction", "")))] = s.value
    want = expected(position)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9), key
    assert '"level": "error"' not in log, log
    check = subprocess.run([need("promtool"), "check", "metrics"], input=body, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
