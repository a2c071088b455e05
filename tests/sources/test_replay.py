"""The replay backend: parsing `replay:PATH[,loop][,speed=X][,gpus=N]` and the phase series."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpumon.model import Labels, Tier
from gpumon.sources.capture import Capture, CaptureError
from gpumon.sources.capture_nvml import CaptureNvml
from gpumon.sources.replay import DEMO_CAPTURE, MAX_GPUS, ReplaySource, ReplaySpec, parse_replay_spec, replay_source
from tests.support.clock import FakeClock

COMPUTE_AT = 10.0  # seconds into the bundled trace: the `compute` phase


# --- parse_replay_spec -------------------------------------------------------------------------


def test_demo_spec() -> None:
    spec = parse_replay_spec("replay:demo")
    assert spec == ReplaySpec(DEMO_CAPTURE)
    assert spec.path == DEMO_CAPTURE and spec.is_demo
    assert (spec.loop, spec.speed, spec.gpus) == (False, 1.0, None)
    assert (DEMO_CAPTURE / "trace.jsonl").is_file()


def test_options() -> None:
    spec = parse_replay_spec("replay:/data/capture,loop,speed=2.5,gpus=4")
    assert spec == ReplaySpec(Path("/data/capture"), loop=True, speed=2.5, gpus=4)
    assert not spec.is_demo
    assert parse_replay_spec("replay:demo,gpus=8").gpus == 8
    assert parse_replay_spec("replay:demo,speed=1000").speed == 1000
    assert parse_replay_spec(f"replay:demo,gpus={MAX_GPUS}").gpus == MAX_GPUS
    assert parse_replay_spec("replay:cap/trace.jsonl,loop").path == Path("cap/trace.jsonl")


def test_spaces_around_options_are_tolerated() -> None:
    assert parse_replay_spec("replay:demo, loop, speed = 2").speed == 2.0
    assert parse_replay_spec("replay:demo, loop").loop


@pytest.mark.parametrize(("spec", "needle"), [
    ("replay:demo,bogus", "unknown replay option 'bogus'"),
    ("replay:demo,loop=yes", "unknown replay option"),
    ("replay:demo,", "unknown replay option"),
    ("replay:demo,speed=0", "'speed=0'"),
    ("replay:demo,speed=-1", "'speed=-1'"),
    ("replay:demo,speed=abc", "'speed=abc'"),
    ("replay:demo,speed=nan", "'speed=nan'"),
    ("replay:demo,speed=inf", "'speed=inf'"),
    ("replay:demo,speed=1001", "'speed=1001'"),
    ("replay:demo,speed", "'speed'"),
    ("replay:demo,gpus=0", "'gpus=0'"),
    ("replay:demo,gpus=-3", "'gpus=-3'"),
    ("replay:demo,gpus=1.5", "'gpus=1.5'"),
    ("replay:demo,gpus=many", "'gpus=many'"),
    (f"replay:demo,gpus={MAX_GPUS + 1}", f"'gpus={MAX_GPUS + 1}'"),
    ("replay:", "needs a capture path"),
    ("replay:,loop", "needs a capture path"),
])
def test_bad_specs_raise_readable_errors(spec: str, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_replay_spec(spec)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize("spec", ["replay:demo,speed=0", "replay:demo,gpus=0"])
def test_range_errors_say_the_range(spec: str) -> None:
    with pytest.raises(ValueError, match=rf"speed is 0-1000, gpus 1-{MAX_GPUS}"):
        parse_replay_spec(spec)


@given(st.text(max_size=60))
def test_fuzz_only_value_error(body: str) -> None:
    try:
        spec = parse_replay_spec("replay:" + body)
    except ValueError:
        return
    assert isinstance(spec, ReplaySpec)
    assert str(spec.path)
    assert 0 < spec.speed <= 1000
    assert spec.gpus is None or 1 <= spec.gpus <= MAX_GPUS


@given(path=st.text(st.characters(exclude_characters=",", exclude_categories=["Cs"]), min_size=1,
                    max_size=20).filter(lambda p: p != "demo"),
       loop=st.booleans(), speed=st.floats(min_value=0.001, max_value=1000),
       gpus=st.none() | st.integers(1, MAX_GPUS))
def test_roundtrip(path: str, loop: bool, speed: float, gpus: int | None) -> None:
    options = (["loop"] if loop else []) + [f"speed={speed!r}"] + ([f"gpus={gpus}"] if gpus else [])
    spec = parse_replay_spec(",".join([f"replay:{path}", *options]))
    assert spec == ReplaySpec(Path(path), loop, speed, gpus)


# --- ReplaySource ------------------------------------------------------------------------------


def phase_series(sample_values: list[tuple[str, Labels, float]]) -> list[tuple[dict[str, str], float]]:
    return [(dict(labels), value) for name, labels, value in sample_values if name == "gpumon_replay_phase"]


@pytest.fixture
def source(capture: Capture, clock: FakeClock) -> ReplaySource:
    src = ReplaySource(CaptureNvml(capture, clock=clock), backend="replay")
    src.open()
    return src


def test_phase_on_fast_polls(source: ReplaySource, clock: FakeClock) -> None:
    clock.advance(COMPUTE_AT)
    series = phase_series(source.read(0, Tier.FAST).values)
    device = source.devices[0]
    assert series == [({"gpu": "0", "uuid": device.uuid, "phase": "compute"}, 1.0)]
    assert phase_series(source.read(0, Tier.SLOW).values) == []
    assert phase_series(source.read(0, Tier.STATIC).values) == []


def test_phase_follows_the_trace(source: ReplaySource, capture: Capture, clock: FakeClock) -> None:
    t0 = capture.traces[0][0]["t"]
    seen = []
    for ph in capture.phases:
        clock.now = 1000.0 + (ph["start"] + ph["end"]) / 2 - t0
        series = phase_series(source.read(0, Tier.FAST).values)
        assert len(series) == 1
        seen.append(series[0][0]["phase"])
    assert seen == [ph["name"] for ph in capture.phases]


def test_no_phase_series_outside_phases(source: ReplaySource) -> None:
    assert phase_series(source.read(0, Tier.FAST).values) == []  # the trace starts before `idle`


def test_phase_per_fanned_out_gpu(capture: Capture, clock: FakeClock) -> None:
    src = ReplaySource(CaptureNvml(capture, clock=clock, gpus=2), backend="replay")
    src.open()
    clock.advance(COMPUTE_AT)
    phases = [phase_series(src.read(i, Tier.FAST).values) for i in range(2)]
    assert phases[0][0][0]["phase"] == "compute"
    assert phases[1][0][0]["gpu"] == "1"
    assert phases[1][0][0]["uuid"] == src.devices[1].uuid != src.devices[0].uuid


def test_replay_source_from_spec() -> None:
    src = replay_source(ReplaySpec(DEMO_CAPTURE, loop=True, speed=3.0, gpus=2))
    assert isinstance(src, ReplaySource)
    assert src.backend == "replay"
    assert (src.nvml.gpu_count, src.nvml.speed, src.nvml.loop) == (2, 3.0, True)


def test_replay_source_missing_capture(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="nothing-here"):
        replay_source(ReplaySpec(tmp_path / "nothing-here"))
