"""What a GPU's latest samples say to accounting, whichever source and tier they come from."""

from __future__ import annotations

from gpumon.accounting.ledger import Owner
from gpumon.accounting.service import reading
from gpumon.model import Sample

IDS = (("gpu", "0"), ("uuid", "GPU-a"))


def fast(t: float) -> Sample:
    s = Sample("gpu0", "fast", t, gpu=0)
    s.add("gpumon_gpu_utilization_ratio", IDS, 0.9)
    s.add("gpumon_sm_active_ratio", IDS, 0.02)
    s.add("gpumon_power_draw_watts", IDS, 150.0)
    return s


def test_the_kubelets_pods_win_over_jobs_and_processes_whatever_their_tier() -> None:
    slow = Sample("gpu0", "slow", 1.0, gpu=0)
    slow.add("gpumon_energy_joules_total", IDS, 5000.0)
    kubelet = Sample("kubelet:gpu0", "slow", 1.0, gpu=0)  # refreshed on its own task, kept as slow
    kubelet.add("gpumon_gpu_owner_info", (*IDS, ("owner_namespace", "ml"), ("owner_pod", "p"),
                                          ("owner_container", "c"), ("resource", "nvidia.com/gpu")), 1.0)
    processes = Sample("processes:gpu0", "fast", 2.0, gpu=0)
    processes.add("gpumon_process_info", (*IDS, ("pid", "7"), ("kind", "compute"), ("name", "x"),
                                          ("owner_namespace", ""), ("owner_pod", ""), ("owner_container", ""),
                                          ("job_id", "77"), ("user", "bob")), 1.0)
    cache: dict[int, object] = {}
    for t in (2.0, 3.0):  # the second time from the cache, for the slow samples
        r = reading(0, [fast(t), slow, kubelet, processes], cache)  # type: ignore[arg-type]
        assert r is not None
        assert (r.at, r.uuid, r.activity, r.signal, r.held, r.power_w, r.energy_j) == (
            t, "GPU-a", 0.02, "sm_active", True, 150.0, 5000.0)
        assert r.owners == (Owner("ml", "p", "c"),)
    r = reading(0, [fast(4.0), processes])
    assert r is not None and r.owners == (Owner(job="77", user="bob"),)


def test_without_gpm_util_gpu_decides_and_says_so() -> None:
    s = Sample("gpu0", "fast", 1.0, gpu=0)
    s.add("gpumon_gpu_utilization_ratio", IDS, 0.4)
    r = reading(0, [s])
    assert r is not None and (r.activity, r.signal, r.held, r.owners) == (0.4, "gpu_utilization", False, ())


def test_nothing_before_the_first_fast_poll() -> None:
    static = Sample("gpu0", "static", 1.0, gpu=0)
    assert reading(0, [static]) is None
