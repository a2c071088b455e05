"""The console page as the server renders it: figures in a person's units, owners in words, the card's
colour from its GPU's alerts, and everything a user or a label can put on the page escaped."""

from __future__ import annotations

import math

from gpumon.console.page import alert_level, cards, owner_text, render, shown
from gpumon.model import Device, Sample

GPU0 = Device(0, "NVIDIA H200", "GPU-a", "00000000:18:00.0", "hopper", True, "580", "13.0")


def test_figures_in_units_a_person_reads() -> None:
    assert shown("gpumon_sm_active_ratio", 0.456) == "46%"
    assert shown("gpumon_memory_total_bytes", 150754820096) == "140.4 GiB"
    assert shown("gpumon_pcie_rx_bytes_per_second", 2048) == "2.0 KiB/s"
    assert shown("gpumon_power_draw_watts", 691.2) == "691 W"
    assert shown("gpumon_gpu_temperature_celsius", 53.4) == "53 °C"
    assert shown("gpumon_gpu_temperature_celsius", None) == shown("gpumon_power_draw_watts", math.nan) == "–"


def test_owners_checks_and_the_idle_streak_reach_the_card() -> None:
    s = Sample("gpu0", "fast", 1.0, gpu=0)
    gpu = (("gpu", "0"), ("uuid", "GPU-a"))
    s.add("gpumon_sm_active_ratio", gpu, 0.5)
    s.add("gpumon_temperature_threshold_celsius", (*gpu, ("threshold", "shutdown")), 92.0)
    s.add("gpumon_temperature_threshold_celsius", (*gpu, ("threshold", "slowdown")), 89.0)
    s.add("gpumon_gpu_owner_info", (*gpu, ("owner_namespace", "ml"), ("owner_pod", "train-0")), 1.0)
    s.add("gpumon_gpu_job_info", (*gpu, ("job_id", "77"), ("user", "alice")), 1.0)
    s.add("gpumon_health_check_status", (*gpu, ("check", "hardware.ecc")), 2.0)
    s.add("gpumon_health_check_status", (*gpu, ("check", "hardware.temperature")), 0.0)
    s.add("gpumon_gpu_idle_held_streak_seconds", gpu, 75.0)
    (card,) = cards([GPU0], [s])
    assert card.values == {"gpumon_sm_active_ratio": 0.5, "gpumon_temperature_threshold_celsius": 89.0}
    assert card.owners == ["job 77 (alice)", "pod ml/train-0"] and card.checks == [("hardware.ecc", "fail")]
    assert owner_text("gpumon_process_info", {"pid": "42", "name": "python3"}) == "python3 42"
    page = render(devices=[GPU0], fresh=[s], alerts=[], silences=[], demo_note="", backend="nvml", interval_s=1.0,
                  writes=(True, ""), history_s=600.0)
    assert "held idle for 75 s" in page and "hardware.ecc: fail" in page and "pod ml/train-0" in page


def test_a_cards_colour_follows_its_gpus_alerts() -> None:
    firing = {"labels": {"alertname": "GpuLost", "gpu": "0", "severity": "critical"}, "state": "firing"}
    pending = {"labels": {"alertname": "GpuHot", "gpu": "0", "severity": "critical"}, "state": "pending"}
    other = {"labels": {"alertname": "GpuLost", "gpu": "1", "severity": "critical"}, "state": "firing"}
    assert alert_level([firing, other], 0) == "firing-critical"
    assert alert_level([pending, other], 0) == "alerting"
    assert alert_level([other], 0) == ""


def test_what_users_and_labels_put_on_the_page_is_escaped() -> None:
    evil = '"><script>alert(1)</script>'
    device = Device(0, evil, "GPU-a", "00000000:18:00.0", "hopper", True, "580", "13.0")
    alert = {"labels": {"alertname": evil, "gpu": "0", "uuid": evil}, "annotations": {"summary": evil,
             "description": evil}, "state": "firing", "activeAt": evil}
    silence = {"id": evil, "matchers": [evil], "endsAt": evil, "comment": evil, "createdBy": evil,
               "status": {"state": "active"}}
    page = render(devices=[device], fresh=[], alerts=[alert], silences=[silence], demo_note=evil, backend=evil,
                  interval_s=1.0, writes=(False, evil), history_s=600.0)
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    assert 'id="silence-form"' not in page  # writes refused: no form, the reason instead


def test_a_mig_gpu_lists_its_instances() -> None:
    s = Sample("mig0", "fast", 1.0, gpu=0)
    for gi, profile, sm in (("9", "1g.18gb", 0.25), ("2", "3g.71gb", 0.9)):
        labels = (("gpu", "0"), ("uuid", "GPU-a"), ("gpu_instance", gi), ("mig_profile", profile))
        s.add("gpumon_mig_sm_active_ratio", labels, sm)
        s.add("gpumon_mig_memory_total_bytes", labels, 17.5 * 2**30)
        s.add("gpumon_mig_compute_processes", labels, 1.0)
    (card,) = cards([GPU0], [s])
    assert card.mig["2"] == {"profile": "3g.71gb", "gpumon_mig_sm_active_ratio": 0.9,
                             "gpumon_mig_memory_total_bytes": 17.5 * 2**30, "gpumon_mig_compute_processes": 1.0}
    page = render(devices=[GPU0], fresh=[s], alerts=[], silences=[], demo_note="", backend="nvml", interval_s=1.0,
                  writes=(True, ""), history_s=600.0)
    assert page.index('data-instance="2"') < page.index('data-instance="9"')  # in GPU instance order
    assert "<td>90%</td><td>–</td><td>17.5 GiB</td><td>1</td>" in page
    plain = render(devices=[GPU0], fresh=[], alerts=[], silences=[], demo_note="", backend="nvml", interval_s=1.0,
                   writes=(True, ""), history_s=600.0)
    assert 'data-field="mig" hidden' in plain  # no MIG: no table
