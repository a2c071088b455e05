"""The doctor's checks: each reads what gpumon already polled for one GPU (or the host) and says ok,
warn, fail or not applicable, with the numbers it read and one next step a person can act on.

The checks are pure functions of a `GpuView` (one GPU's latest series, as the store holds them), so
the same code serves `gpumon doctor` (one poll) and, later, the daemon's slow tier.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gpumon.model import Labels, Sample


class Verdict(enum.IntEnum):
    """Ordered by how bad: the report sorts worst first and the exit status is the worst's."""

    NOT_APPLICABLE = 0
    OK = 1
    WARN = 2
    FAIL = 3

    @property
    def word(self) -> str:
        return {0: "n/a", 1: "ok", 2: "warn", 3: "fail"}[self.value]

    @property
    def json_word(self) -> str:
        """As docs/doctor.schema.json spells it."""
        return "not_applicable" if self is Verdict.NOT_APPLICABLE else self.word

    @property
    def exit_status(self) -> int:
        """`gpumon doctor`'s exit status when this is the worst verdict: 0 ok, 1 warn, 2 fail."""
        return {Verdict.FAIL: 2, Verdict.WARN: 1}.get(self, 0)


@dataclass(frozen=True)
class Finding:
    check: str  # e.g. "hardware.temperature"
    verdict: Verdict
    summary: str  # one line
    evidence: dict[str, Any] = field(default_factory=dict)  # the numbers read
    next_step: str = ""  # one line a person can act on; "" when ok
    gpu: int | None = None  # None: the host


class GpuView:
    """One GPU's latest series: `value(name, **labels)` and `values(name)`."""

    def __init__(self, index: int, uuid: str, samples: Iterable[Sample]) -> None:
        self.index = index
        self.uuid = uuid
        self._series: dict[str, list[tuple[dict[str, str], float]]] = {}
        for sample in samples:
            for name, labels, value in sample.values:
                self._series.setdefault(name, []).append((_extra(labels), value))
        # Counters' increase over the daemon's recent history, (labels, increase, seconds covered); empty
        # for `gpumon doctor`, which reads one poll.
        self._increases: dict[str, list[tuple[dict[str, str], float, float]]] = {}

    def add_increase(self, name: str, labels: Labels, increase: float, seconds: float) -> None:
        self._increases.setdefault(name, []).append((_extra(labels), increase, seconds))

    def increases(self, name: str) -> list[tuple[dict[str, str], float, float]]:
        return self._increases.get(name, [])

    def values(self, name: str) -> list[tuple[dict[str, str], float]]:
        """(labels beyond gpu and uuid, value) of every series of `name`."""
        return self._series.get(name, [])

    def value(self, name: str, **labels: str) -> float | None:
        return next((v for lb, v in self.values(name) if all(lb.get(k) == want for k, want in labels.items())), None)

    def has(self, name: str) -> bool:
        return name in self._series

    @property
    def empty(self) -> bool:
        """Nothing read of the GPU (hung, or lost): no check has anything to say about it."""
        return not self._series


def _extra(labels: Labels) -> dict[str, str]:
    return {k: v for k, v in labels if k not in ("gpu", "uuid")}


GpuCheck = Callable[[GpuView], Finding]
GPU_CHECKS: dict[str, GpuCheck] = {}

# XIDs worth a person's attention, and what to do (the same words as the GpuXidError alert).
SERIOUS_XIDS = {
    "48": "Double-bit ECC error: restart the application; if it repeats, drain the node and check row remapping.",
    "62": "Internal micro-controller halt: drain the node and reset the GPU.",
    "63": "Row remapping or page retirement recorded: reset the GPU when convenient; watch for XID 64.",
    "64": "Row remapping or page retirement failed: drain the node; the GPU needs service.",
    "74": "NVLink error: check the NVLink counters; reset the GPU, reseat or replace the link if it repeats.",
    "79": "The GPU fell off the bus: drain the node and power-cycle; check power and PCIe seating.",
    "92": "High single-bit ECC error rate: plan a reset; watch for XID 48.",
    "94": "Contained ECC error: only the affected application was stopped; restart it.",
    "95": "Uncontained ECC error: reset the GPU before new work.",
    "119": "GSP RPC timeout: reset the GPU; update the driver if it repeats.",
    "120": "GSP firmware error: reset the GPU; update the driver if it repeats.",
}


# What the common others mean (NVIDIA's XID catalogue): mostly the application's own faults.
XID_MEANINGS = {
    "8": "GPU stopped processing (a hung kernel or a driver fault)",
    "13": "graphics engine exception (often an out-of-range access in the application)",
    "31": "GPU memory page fault (usually an illegal address in the application)",
    "43": "GPU stopped processing (the application hit a fault and was stopped)",
    "45": "preemptive cleanup after earlier errors (the application's channels were torn down)",
    "61": "internal micro-controller breakpoint/warning",
    "68": "video decoder (NVDEC) exception",
    "69": "graphics engine class error",
    "154": "GPU recovery action changed: read the recovery action",
} | {xid: step.split(":")[0] for xid, step in SERIOUS_XIDS.items()}


def gpu_check(check_id: str) -> Callable[[Callable[[GpuView], tuple[Verdict, str, dict[str, Any], str]]], GpuCheck]:
    """Register a per-GPU check; the function returns (verdict, summary, evidence, next step)."""
    def register(fn: Callable[[GpuView], tuple[Verdict, str, dict[str, Any], str]]) -> GpuCheck:
        def run(gpu: GpuView) -> Finding:
            verdict, summary, evidence, next_step = fn(gpu)
            return Finding(check_id, verdict, summary, evidence, next_step if verdict >= Verdict.WARN else "",
                           gpu.index)
        GPU_CHECKS[check_id] = run
        return run
    return register


NA = Verdict.NOT_APPLICABLE


# --- hardware -------------------------------------------------------------------------------------

@gpu_check("hardware.temperature")
def _temperature(gpu: GpuView) -> tuple[Verdict, str, dict[str, Any], str]:
    temp = gpu.value("gpumon_gpu_temperature_celsius")
    slowdown = gpu.value("gpumon_temperature_threshold_celsius", threshold="slowdown")
    shutdown = gpu.value("gpumon_temperature_threshold_celsius", threshold="shutdown")
    memory = gpu.value("gpumon_memory_temperature_celsius")
    memory_max = gpu.value("gpumon_temperature_threshold_celsius", threshold="mem_max")
    evidence = {"gpu_c": temp, "slowdown_c": slowdown, "shutdown_c": shutdown, "memory_c": memory,
                "memory_max_c": memory_max}
    if temp is None:
        return NA, "temperature not readable", evidence, ""
    cooling = "Check airflow, fans and the chiller; clocks drop at the slowdown threshold."
    if slowdown is not None and temp >= slowdown:
        return Verdict.FAIL, f"GPU at {temp:.0f} °C, at or above its slowdown threshold {slowdown:.0f} °C", evidence, \
            cooling
    if memory is not None and memory_max is not None and memory >= memory_max:
        return Verdict.FAIL, f"memory at {memory:.0f} °C, at or above its maximum {memory_max:.0f} °C", evidence, \
            cooling
    if slowdown is not None and temp >= slowdown - 5:
        return Verdict.WARN, f"GPU at {temp:.0f} °C, within 5 °C of slowdown ({slowdown:.0f} °C)", evidence, cooling
    if memory is not None and memory_max is not None and memory >= memory_max - 5:
        return Verdict.WARN, f"memory at {memory:.0f} °C, within 5 °C of its maximum", evidence, cooling
    return Verdict.OK, f"GPU {temp:.0f} °C (slowdown {slowdown if slowdown is None else f'{slowdown:.0f}'} °C)", \
        evidence, ""


# NVML violation counters (gpumon_clock_throttle_seconds_total) that mean a fault rather than a job
# using what it was given: power capping is normal at full load (hardware.power_cap says when it binds).
HELD_DOWN_VIOLATIONS = ("thermal", "board_limit", "reliability")
HELD_DOWN_WARN = 0.05
# History a share of "the last minutes" needs: right after start, two slow samples 30 s apart would
# make one throttled half-minute "100 % of the last 0 min".
HELD_DOWN_MIN_S = 120.0
SLOWDOWN_REASONS = ("hw_slowdown", "hw_thermal_slowdown", "sw_thermal_slowdown", "hw_power_brake_slowdown")


@gpu_check("hardware.clock_events")
def _clock_events(gpu: GpuView) -> tuple[Verdict, str, dict[str, Any], str]:
    active = sorted(lb["reason"] for lb, v in gpu.values("gpumon_clock_event_reason_active") if v == 1)
    evidence: dict[str, Any] = {"active": active}
    if not gpu.has("gpumon_clock_event_reason_active"):
        return NA, "clock-event reasons not readable", evidence, ""
    # Share of the recent past each violation counter ran (the daemon's history; one poll has none).
    held = {lb["reason"]: (round(increase / seconds, 3), seconds)
            for lb, increase, seconds in gpu.increases("gpumon_clock_throttle_seconds_total")
            if lb.get("reason") in HELD_DOWN_VIOLATIONS and seconds > 0}
    if held:
        evidence["held_share_recently"] = {reason: share for reason, (share, _) in held.items()}
        evidence["recent_seconds"] = round(max(s for _, _, s in gpu.increases("gpumon_clock_throttle_seconds_total")))
    slowing = [r for r in active if r in SLOWDOWN_REASONS]
    step = "Thermal: cooling. Power brake or HW slowdown: the system or PSU asks the GPU to slow down; check power."
    if slowing:
        return Verdict.FAIL if "hw_slowdown" in slowing or "hw_power_brake_slowdown" in slowing else Verdict.WARN, \
            f"clocks held down now by {', '.join(slowing)}", evidence, step
    shares = {reason: (share, seconds) for reason, (share, seconds) in held.items() if share >= HELD_DOWN_WARN}
    recent = {reason: v for reason, v in shares.items() if round(v[1]) >= HELD_DOWN_MIN_S}  # ms of float error
    if recent:
        worst = max(recent, key=lambda r: recent[r][0])
        return Verdict.WARN, f"clocks held down by {worst} for {recent[worst][0]:.0%} of the last " \
            f"{_window(recent[worst][1])}, though not now", evidence, step
    summary = "no thermal or power slowdown now" + (f" (active: {', '.join(active)})" if active else "")
    if shares:  # too little history to say "recently": said, not judged
        worst = max(shares, key=lambda r: shares[r][0])
        summary += f"; held down by {worst} for {shares[worst][0]:.0%} of the {_window(shares[worst][1])} " \
            "of history so far"
    return Verdict.OK, summary, evidence, ""


def _window(seconds: float) -> str:
    """A stretch of history as a person reads it: seconds under two minutes ("0 min" says nothing)."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


@gpu_check("hardware.power_cap")
def _power_cap(gpu: GpuView) -> tuple[Verdict, str, dict[str, Any], str]:
    draw, limit = gpu.value("gpumon_power_draw_watts"), gpu.value("gpumon_power_limit_watts")
    capped = gpu.value("gpumon_clock_event_reason_active", reason="sw_power_cap") == 1
    evidence = {"draw_w": draw, "limit_w": limit, "sw_power_cap": capped}
    if draw is None or limit is None or limit <= 0:
        return NA, "power or its limit not readable", evidence, ""
    if capped and draw >= 0.95 * limit:
        return Verdict.WARN, f"at the power cap: {draw:.0f} W of {limit:.0f} W, clocks reduced", evidence, \
            "The job is power-bound; if the limit was lowered on purpose this is expected, else restore it."
    return Verdict.OK, f"{draw:.0f} W of a {limit:.0f} W limit", evidence, ""


@gpu_check("hardware.pcie_link")
def _pcie_link(gpu: GpuView) -> tuple[Verdict, str, dict[str, Any], str]:
    gen, width = gpu.value("gpumon_pcie_link_generation"), gpu.value("gpumon_pcie_link_width")
    max_gen, max_width = gpu.value("gpumon_pcie_link_max_generation"), gpu.value("gpumon_pcie_link_max_width")
    evidence = {"generation": gen, "width": width, "max_generation": max_gen, "max_width": max_width}
    if None in (gen, width, max_gen, max_width):
        return NA, "PCIe link not readable", evidence, ""
    assert gen is not None and width is not None and max_gen is not None and max_width is not None
    if width <= 0:  # no link trained (a GPU in a deep power state reads 0): nothing to compare
        return NA, "PCIe link width reads 0 (no link trained now)", evidence, ""
    if width < max_width:
        return Verdict.WARN, f"link trained at x{width:.0f}, the GPU supports x{max_width:.0f}: " \
            f"{max_width / width:.0f}x less host bandwidth", evidence, "Reseat the GPU or check the riser and slot."
    # The generation drops by design while the GPU idles; only a busy GPU below it is a problem.
    busy = (gpu.value("gpumon_sm_active_ratio") or gpu.value("gpumon_gpu_utilization_ratio") or 0) > 0.2
    if gen < max_gen and busy:
        return Verdict.WARN, f"busy at PCIe Gen{gen:.0f}, the GPU supports Gen{max_gen:.0f}", evidence, \
            "Check the slot's and BIOS's PCIe generation setting, the riser and the cable."
    return Verdict.OK, f"Gen{gen:.0f} x{width:.0f} (max Gen{max_gen:.0f} x{max_width:.0f})", evidence, ""


REPLAYS_WARN = 100  # since the driver loaded: a healthy link replays rarely


@gpu_check("hardware.pcie_replays")
def _pcie_replays(gpu: GpuView) -> tuple[Verdict, str, dict[str, Any], str]:
    replays = gpu.value("gpumon_pcie_replays_total")
    evidence = {"replays_since_driver_load": replays}
    if replays is None:
        return NA, "PCIe replay counter not readable", evidence, ""
    if replays >= REPLAYS_WARN:
        return Verdict.WARN, f"{replays:.0f} PCIe replays since the driver loaded", evidence, \
            "Signal integrity: riser, slot, cable; watch gpumon_pcie_replays_total's rate."
    return Verdict.OK, f"{replays:.0f} PCIe replays since the driver loaded", evidence, ""


@gpu_check("hardware.ecc")
def _ecc(gpu: GpuView) -> tuple[Verdict, str, dict[str, Any], str]:
    volatile = gpu.value("gpumon_ecc_volatile_errors_total", severity="uncorrected")
    aggregate = gpu.value("gpumon_ecc_aggregate_errors_total", severity="uncorrected")
    evidence = {"uncorrected_since_reset": volatile, "uncorrected_lifetime": aggregate}
    if volatile is None and aggregate is None:
        return NA, "ECC off or not readable", evidence, ""
    if volatile:
        return Verdict.FAIL, f"{volatile:.0f} uncorrectable ECC errors since the last reset", evidence, \
            "Restart the affected work and reset the GPU; watch row remapping."
    if aggregate:
        return Verdict.WARN, f"{aggregate:.0f} uncorrectable ECC errors in the GPU's lifetime", evidence, \
            "Check row remapping; a GPU that keeps adding them needs service."
    return Verdict.OK, "no uncorrectable ECC errors", evidence, ""


@gpu_check("hardware.row_remap")
def _row_remap(gpu: GpuView) -> tuple[Verdict, str, dict[str, Any], str]:
    pending, failed = gpu.value("gpumon_row_remap_pending"), gpu.value("gpumon_row_remap_failed")
    evidence = {"pending": pending, "failed": failed,
                "remapped": {lb["cause"]: v for lb, v in gpu.values("gpumon_remapped_rows_total")}}
    if pending is None and failed is None:
        return NA, "row remapping not readable (pre-Ampere, or MIG instances exist)", evidence, ""
    if failed:
        return Verdict.FAIL, "a row remap failed", evidence, "Drain the node; the GPU needs service."
    if pending:
        return Verdict.WARN, "a row remap waits for the next GPU reset", evidence, "Schedule a GPU reset."
    return Verdict.OK, "no row remap pending or failed", evidence, ""


@gpu_check("hardware.xid")
def _xid(gpu: GpuView) -> tuple[Verdict, str, dict[str, Any], str]:
    seen = {lb["xid"]: v for lb, v in gpu.values("gpumon_xid_errors_total")}
    evidence: dict[str, Any] = {"xids": seen}
    serious = sorted((x for x in seen if x in SERIOUS_XIDS), key=int)
    if serious:
        return Verdict.FAIL, "XID " + ", ".join(serious) + " seen", evidence, SERIOUS_XIDS[serious[0]]
    if seen:
        return Verdict.WARN, "XID " + ", ".join(sorted(seen, key=int)) + " seen", evidence, \
            "Look the code up in NVIDIA's XID catalogue; most point at the application."
    return Verdict.OK, "no XID while gpumon listened", evidence, ""


@gpu_check("hardware.nvlink")
def _nvlink(gpu: GpuView) -> tuple[Verdict, str, dict[str, Any], str]:
    up = {lb["link"]: v for lb, v in gpu.values("gpumon_nvlink_up")}
    errors = {f"{lb['link']}/{lb['type']}": v for lb, v in gpu.values("gpumon_nvlink_errors_total") if v}
    evidence = {"links_up": sum(1 for v in up.values() if v == 1), "links": len(up), "errors": errors}
    if not up:
        return NA, "no NVLink", evidence, ""
    down = sorted((link for link, v in up.items() if v != 1), key=int)
    if down:
        return Verdict.FAIL, f"NVLink link {', '.join(down)} down", evidence, \
            "Reset the GPU; if the link stays down, the baseboard or NVSwitch needs service."
    if errors:
        return Verdict.WARN, f"NVLink errors on {len(errors)} link counter(s)", evidence, \
            "Watch the counters' rate (NvlinkErrorsIncreasing); a link that keeps counting needs a reset or service."
    return Verdict.OK, f"{len(up)} NVLink links up, no errors", evidence, ""


FABRIC_SUMMARY = {1: "healthy", 2: "unhealthy", 3: "limited_capacity"}  # NVML_GPU_FABRIC_HEALTH_SUMMARY_*


@gpu_check("hardware.fabric")
def _fabric(gpu: GpuView) -> tuple[Verdict, str, dict[str, Any], str]:
    state, status = gpu.value("gpumon_fabric_state"), gpu.value("gpumon_fabric_status")
    problems = sorted(lb["problem"] for lb, v in gpu.values("gpumon_fabric_health_problem") if v == 1)
    reasons = sorted(lb["reason"] for lb, v in gpu.values("gpumon_fabric_incorrect_configuration") if v == 1)
    summary = gpu.value("gpumon_fabric_health_summary")
    evidence = {"state": {1: "not_started", 2: "in_progress", 3: "completed"}.get(int(state or 0)), "status": status,
                "health_problems": problems, "incorrect_configuration": reasons,
                "health_summary": FABRIC_SUMMARY.get(int(summary or 0)),
                "partition_assigned": gpu.value("gpumon_fabric_partition_assigned")}
    if state is None:
        return NA, "not on an NVSwitch fabric", evidence, ""
    manager = "Check that nvidia-fabricmanager (and, on NVL72, nvidia-imex) runs and its log on this node."
    if state == 1:
        return Verdict.FAIL, "the GPU has not started joining the NVLink fabric: CUDA work waits", evidence, manager
    if state == 2:
        return Verdict.WARN, "the GPU is still joining the NVLink fabric", evidence, manager
    if status:
        return Verdict.FAIL, f"the GPU failed to join the NVLink fabric (NVML error {status:.0f})", evidence, \
            manager + " Reset the GPU once it is fixed."
    if "incorrect_configuration" in problems:
        return Verdict.FAIL, "the NVLink fabric reports the GPU's configuration incorrect: " \
            f"{', '.join(reasons) or 'no reason given'}", evidence, \
            "The fabric manager's log says what it expected: the GPU's firmware, its NVLinks and trays, the " \
            "system GUID, chassis serial or location it was given, and the partition it belongs to."
    if "gfm_disconnected" in problems:
        return Verdict.FAIL, "the global fabric manager is disconnected from the GPU's NVLink fabric", evidence, \
            manager + " On a multi-node NVLink system, the global fabric manager on the NVSwitch trays too."
    failing = [p for p in problems if p == "route_unhealthy"] + (["an unhealthy fabric (NVML's summary)"]
                                                                  if summary == 2 else [])
    warning = [p for p in problems if p != "route_unhealthy"] + (["limited capacity (NVML's summary)"]
                                                                 if summary == 3 else [])
    if failing or warning:
        return Verdict.FAIL if failing else Verdict.WARN, \
            f"the NVLink fabric reports {', '.join(failing + warning)}", evidence, \
            "Check the NVSwitch trays and the fabric manager's log; degraded bandwidth slows every collective."
    return Verdict.OK, "joined the NVLink fabric, no health problem reported", evidence, ""


RECOVERY_ACTIONS = {  # nvmlDeviceGpuRecoveryAction_t: what NVML says to do, and how
    1: ("a GPU reset", "Drain the GPU's work and reset it (nvidia-smi -r)."),
    2: ("a node reboot", "Drain the node and reboot it."),
    3: ("draining peer-to-peer traffic", "Stop the jobs using NVLink/P2P on this GPU, then reset it."),
    4: ("a drain and a GPU reset", "Drain the GPU's work and reset it."),
    5: ("recovering the IMEX domain", "Restart the IMEX daemon of the NVLink domain."),
    6: ("a PCIe bus reset", "Drain the GPU's work and reset its PCIe bus."),
    7: ("a system reboot", "Drain the node and reboot it."),
}


@gpu_check("hardware.recovery_action")
def _recovery_action(gpu: GpuView) -> tuple[Verdict, str, dict[str, Any], str]:
    action = gpu.value("gpumon_gpu_recovery_action")
    evidence = {"recovery_action": action}
    if action is None:
        return NA, "NVML gives no recovery action on this driver", evidence, ""
    if int(action) == 0:
        return Verdict.OK, "NVML recommends no recovery action", evidence, ""
    what, step = RECOVERY_ACTIONS.get(int(action), (f"recovery action {int(action)}", "See nvml.h's "
                                                    "nvmlDeviceGpuRecoveryAction_t."))
    return Verdict.FAIL, f"NVML recommends {what}", evidence, step


@gpu_check("driver.persistence_mode")
def _persistence(gpu: GpuView) -> tuple[Verdict, str, dict[str, Any], str]:
    mode = gpu.value("gpumon_persistence_mode")
    evidence = {"persistence_mode": mode}
    if mode is None:
        return NA, "persistence mode not readable", evidence, ""
    if mode == 0:
        return Verdict.WARN, "persistence mode is off: the driver unloads when no client is left", evidence, \
            "Run nvidia-persistenced (or nvidia-smi -pm 1): without it each job's first CUDA call pays " \
            "the driver's start-up and GPU state is lost between jobs."
    return Verdict.OK, "persistence mode on", evidence, ""


# --- workload -------------------------------------------------------------------------------------

@gpu_check("workload.memory_full")
def _memory_full(gpu: GpuView) -> tuple[Verdict, str, dict[str, Any], str]:
    used, total = gpu.value("gpumon_memory_used_bytes"), gpu.value("gpumon_memory_total_bytes")
    evidence = {"used_bytes": used, "total_bytes": total}
    if used is None or not total:
        return NA, "memory not readable", evidence, ""
    share = used / total
    if share > 0.9:
        return Verdict.WARN, f"memory {share:.0%} used", evidence, \
            "The next allocation may fail with out-of-memory: check the job's batch size and caches."
    return Verdict.OK, f"memory {share:.0%} used", evidence, ""


@gpu_check("workload.copies_not_compute")
def _copies(gpu: GpuView) -> tuple[Verdict, str, dict[str, Any], str]:
    util, sm = gpu.value("gpumon_gpu_utilization_ratio"), gpu.value("gpumon_sm_active_ratio")
    pcie = (gpu.value("gpumon_pcie_rx_bytes_per_second") or 0) + (gpu.value("gpumon_pcie_tx_bytes_per_second") or 0)
    evidence = {"util_gpu": util, "sm_active": sm, "pcie_bytes_per_second": pcie}
    if util is None or sm is None:
        return NA, "needs util.gpu and GPM SM activity", evidence, ""
    if util > 0.8 and sm < 0.2:
        return Verdict.WARN, f"util.gpu {util:.0%} but SM activity {sm:.0%}: the GPU is copying, not computing", \
            evidence, "The job waits on host-device copies: pin host memory, overlap copies with compute, " \
            "or keep the data on the GPU."
    return Verdict.OK, f"util.gpu {util:.0%}, SM activity {sm:.0%}", evidence, ""


HELD_IDLE_WARN_S = 600.0  # held with SMs idle this long without a break: not a pause between steps


@gpu_check("workload.held_idle")
def _held_idle(gpu: GpuView) -> tuple[Verdict, str, dict[str, Any], str]:
    processes = gpu.value("gpumon_compute_processes")
    sm = gpu.value("gpumon_sm_active_ratio")
    streak = gpu.value("gpumon_gpu_idle_held_streak_seconds")  # the daemon's accounting, at the poll rate
    owners = sorted({f"{lb['owner_namespace']}/{lb['owner_pod']}" for lb, _ in gpu.values("gpumon_gpu_owner_info")}
                    | {f"job {lb['job_id']}" for lb, _ in gpu.values("gpumon_gpu_job_info")})
    evidence = {"compute_processes": processes, "sm_active": sm, "idle_held_streak_s": streak, "owners": owners}
    held_by = f" by {', '.join(owners)}" if owners else ""
    next_step = "A hung or data-starved job, or an idle notebook: ask the owner; `gpumon report` says for how long."
    if streak is not None:
        if streak >= HELD_IDLE_WARN_S:
            return Verdict.WARN, f"held{held_by} with SMs idle for {streak / 60:.0f} minutes", evidence, next_step
        return Verdict.OK, f"not held idle for long ({streak:.0f} s now)", evidence, ""
    if processes is None or sm is None:
        return NA, "needs the process list and GPM SM activity", evidence, ""
    if processes > 0 and sm < 0.05:  # one poll cannot tell for how long: the daemon's streak can
        return Verdict.WARN, f"held{held_by} ({processes:.0f} processes) with SMs idle now", evidence, next_step
    return Verdict.OK, f"{processes:.0f} compute processes, SM activity {sm:.0%}", evidence, ""


STRAGGLER_SPREAD = 0.4  # SM activity between one job's GPUs: data-parallel ranks run in lockstep


def owner_of(gpu: GpuView) -> str:
    """The GPU's owner as one word: its pod, else its job; "" when neither is known."""
    pods = sorted(f"pod {lb['owner_namespace']}/{lb['owner_pod']}" for lb, _ in gpu.values("gpumon_gpu_owner_info")
                  if not lb.get("gpu_instance"))
    jobs = sorted(f"job {lb['job_id']}" for lb, _ in gpu.values("gpumon_gpu_job_info") if not lb.get("gpu_instance"))
    return (pods or jobs or [""])[0]


def straggler(gpus: list[GpuView]) -> Finding:
    """Across GPUs: one owner's GPUs whose SM activity differs widely (a straggler holds the rest back)."""
    check = "workload.straggler"
    by_owner: dict[str, dict[int, float]] = {}
    for gpu in gpus:
        owner, sm = owner_of(gpu), gpu.value("gpumon_sm_active_ratio")
        if owner and sm is not None:
            by_owner.setdefault(owner, {})[gpu.index] = sm
    shared = {owner: sms for owner, sms in by_owner.items() if len(sms) >= 2}
    evidence: dict[str, Any] = {owner: {str(i): round(v, 3) for i, v in sms.items()} for owner, sms in shared.items()}
    if not shared:
        return Finding(check, NA, "no owner (pod or job) holds two or more GPUs here", evidence)
    for owner, sms in sorted(shared.items()):
        slowest = min(sms, key=lambda i: sms[i])
        if max(sms.values()) - sms[slowest] >= STRAGGLER_SPREAD:
            return Finding(check, Verdict.WARN, f"{owner}: GPU {slowest} at {sms[slowest]:.0%} SM activity, its other "
                           f"GPUs up to {max(sms.values()):.0%}", evidence,
                           f"Look at GPU {slowest}'s rank: its data loader, its host (CPU, NUMA), its links; the "
                           f"others wait for it at every collective.")
    return Finding(check, Verdict.OK, f"{len(shared)} multi-GPU owner(s), their GPUs within "
                   f"{STRAGGLER_SPREAD:.0%} SM activity of each other", evidence)


def run_gpu_checks(gpu: GpuView, only: frozenset[str] = frozenset()) -> list[Finding]:
    if gpu.empty:
        return []
    return [check(gpu) for check_id, check in GPU_CHECKS.items() if selected(check_id, only)]


def selected(check_id: str, only: frozenset[str]) -> bool:
    """`--only hardware` selects every hardware check, `--only hardware.ecc` one."""
    return not only or any(check_id == o or check_id.startswith(o + ".") for o in only)
