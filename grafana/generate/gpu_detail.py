"""The GPU detail dashboard: everything gpumon reads from one GPU."""

from __future__ import annotations

from typing import Any

from grafana.generate.interconnect import nvlink_panels
from grafana.generate.panels import (
    Board,
    dashboard,
    g,
    metric_panel,
    stat,
    state_timeline,
    table,
    target,
    timeseries,
)

HELD = 'state=~"active|idle_held"'


def gpu_detail() -> dict[str, Any]:
    b = Board()
    b.add(table("Identity", [target(g("gpumon_gpu_info"))], "none", "gpumon_gpu_info: name, bus id, driver, GPM."),
          16, 4)
    b.add(stat("Up", [target(g("gpumon_gpu_up"), instant=True)], "none", "1 when the GPU answered its last poll.",
               thresholds=[(None, "red"), (1, "green")],
               mappings=[{"type": "value", "options": {"0": {"text": "LOST"}, "1": {"text": "UP"}}}]), 4, 4)
    b.add(stat("Replay phase (demo data only)", [target(g("gpumon_replay_phase") + " == 1", "{{phase}}",
                                                        instant=True)],
               "none", "Only when gpumon replays a capture: the recorded load phase.",
               thresholds=[(None, "orange")]), 4, 4)

    b.row("Activity")
    b.add(timeseries("SM activity (GPM)", [target(g("gpumon_sm_active_ratio"), "SM active"),
                                           target(g("gpumon_sm_occupancy_ratio"), "SM occupancy"),
                                           target(g("gpumon_tensor_active_ratio"), "tensor active"),
                                           target(g("gpumon_dram_active_ratio"), "DRAM bandwidth"),
                                           target(g("gpumon_graphics_engine_active_ratio"), "graphics engine")],
                     "percentunit", "Real SM activity from NVML GPM (Hopper and later). Empty on older GPUs.",
                     max_=1))
    b.add(timeseries("Pipe activity (GPM)", [target(g("gpumon_fp64_active_ratio"), "FP64"),
                                             target(g("gpumon_fp32_active_ratio"), "FP32"),
                                             target(g("gpumon_fp16_active_ratio"), "FP16")],
                     "percentunit", "Fraction of cycles each pipe was active.", max_=1))
    b.add(timeseries("util.gpu and util.memory (NVML)",
                     [target(g("gpumon_gpu_utilization_ratio"), "util.gpu (a kernel was running; not SM activity)"),
                      target(g("gpumon_memory_utilization_ratio"), "util.memory")],
                     "percentunit", "NVML utilisation: util.gpu reads ~100 % during pure PCIe copies with idle SMs.",
                     max_=1))
    metric_panel("gpumon_compute_processes", "Compute processes", "processes", board=b)

    b.row("Memory")
    b.add(timeseries("Device memory", [target(g("gpumon_memory_used_bytes"), "used"),
                                       target(g("gpumon_memory_free_bytes"), "free"),
                                       target(g("gpumon_memory_reserved_bytes"), "reserved"),
                                       target(g("gpumon_memory_total_bytes"), "total"),
                                       target(g("gpumon_compute_processes_memory_bytes"), "compute processes")],
                     "bytes", "Used, free, reserved and installed device memory."))
    metric_panel("gpumon_process_memory_bytes", "Memory by process (opt-in)", "pid {{pid}}",
                 note="Empty unless gpumon runs with metrics.process_pids.", stack=True, board=b)

    b.row("Who is on it")
    b.add(table("Pods holding it (kubelet)", [target(g("gpumon_gpu_owner_info"), instant=True, table=True)], "none",
                "gpumon_gpu_owner_info: the pods' containers the kubelet gave this GPU to, even while they leave it "
                "idle (attribution.kubernetes)."), 12, 6)
    b.add(table("Jobs holding it", [target(g("gpumon_gpu_job_info"), instant=True, table=True)], "none",
                "gpumon_gpu_job_info: the HPC jobs the job mapping directory gives this GPU to, or else the "
                "Slurm jobs of its processes (origin says which)."), 12, 6)
    b.add(timeseries("Time by state", [target(
        f'rate({g("gpumon_gpu_seconds_total")}[$__rate_interval])', "{{state}} ({{signal}})")], "percentunit",
        "Share of time active, held idle and free (docs/accounting.md); signal says what decided.", stack=True,
        max_=1))
    b.add(stat("Held idle for", [target(g("gpumon_gpu_idle_held_streak_seconds"), instant=True)], "s",
               "How long the GPU has been held and idle without a break (GpuHeldIdle fires at "
               "accounting.idle_alert_after).", thresholds=[(None, "green"), (600, "orange"), (3600, "red")]), 6, 4)
    b.add(stat("SM activity while held (time range)", [target(
        f'sum(increase({g("gpumon_gpu_sm_active_seconds_total", HELD)}[$__range])) / '
        f'sum(increase({g("gpumon_gpu_seconds_total", HELD)}[$__range]))', instant=True)], "percentunit",
        "Mean SM activity over the time the GPU was held."), 6, 4)
    b.add(table("Processes and their owners", [target(g("gpumon_process_info"), instant=True, table=True)], "none",
                "gpumon_process_info: each process on the GPU, its name, kind (compute, graphics, MPS) and owner: "
                "pod and container, Slurm job, user. Empty labels where nothing says (docs/attribution.md)."),
          24, 8)
    metric_panel("gpumon_process_utilization_ratio", "Utilisation by process (opt-in; a duty cycle)",
                 "pid {{pid}} {{engine}}", note="Empty unless gpumon runs with metrics.process_pids and "
                 "attribution.processes.utilization.", board=b)

    b.row("Doctor")
    b.add(table("Doctor checks", [target(g("gpumon_health_check_status"), instant=True, table=True)], "none",
                "gpumon_health_check_status: each `gpumon doctor` check of this GPU after the last slow poll: 0 ok, "
                "1 warn, 2 fail (absent: not applicable). `gpumon doctor --only CHECK` on the host prints the "
                "evidence.",
                mappings=[{"type": "value", "options": {"0": {"text": "ok"}, "1": {"text": "warn"},
                                                        "2": {"text": "fail"}}}]), 24, 8)

    b.add(stat("Persistence mode", [target(g("gpumon_persistence_mode"), instant=True)], "none",
               "gpumon_persistence_mode: off, the driver unloads between jobs (docs/doctor.md).",
               mappings=[{"type": "value", "options": {"0": {"text": "off"}, "1": {"text": "on"}}}],
               thresholds=[(None, "orange"), (1, "green")]), 12, 4)
    b.add(stat("Recovery NVML recommends", [target(g("gpumon_gpu_recovery_action"), instant=True)], "none",
               "gpumon_gpu_recovery_action: what NVML says to do now (0 none).",
               mappings=[{"type": "value", "options": {str(k): {"text": t} for k, t in (
                   (0, "none"), (1, "GPU reset"), (2, "node reboot"), (3, "drain P2P"), (4, "drain and reset"),
                   (5, "recover IMEX"), (6, "PCIe bus reset"), (7, "system reboot"))}}],
               thresholds=[(None, "green"), (1, "red")]), 12, 4)
    b.add(stat("NVSwitch fabric", [target(g("gpumon_fabric_state"), "state", instant=True),
                                   target(g("gpumon_fabric_status"), "registration error", instant=True),
                                   target(g("gpumon_fabric_health_problem"), "{{problem}}", instant=True),
                                   target(g("gpumon_fabric_health_summary"), "health summary", instant=True),
                                   target(g("gpumon_fabric_incorrect_configuration"), "configuration: {{reason}}",
                                          instant=True),
                                   target(g("gpumon_fabric_partition_assigned"), "partition assigned",
                                          instant=True)], "none",
               "gpumon_fabric_state (1 not started, 2 joining, 3 joined; CUDA work waits until joined), "
               "gpumon_fabric_status (NVML's error of the registration, 0 none), gpumon_fabric_health_problem "
               "(1: the fabric reports it), gpumon_fabric_health_summary (1 healthy, 2 unhealthy, 3 limited "
               "capacity), gpumon_fabric_incorrect_configuration (1: the reason the fabric gives) and "
               "gpumon_fabric_partition_assigned (1 assigned, 0 not). Empty on a GPU not on an NVSwitch "
               "fabric."), 24, 4)

    b.row("MIG instances")
    b.add(stat("MIG mode", [target(g("gpumon_mig_mode"), "{{state}}", instant=True)], "none",
               "gpumon_mig_mode: MIG now (current) and after the next GPU reset (pending). Empty on a GPU without "
               "MIG. While MIG is on, util.gpu, per-process utilisation and row remapping are not readable: the "
               "panels below are the GPU's activity (docs/mig.md).",
               mappings=[{"type": "value", "options": {"0": {"text": "off"}, "1": {"text": "on"}}}]), 6, 6)
    b.add(table("Instances", [target(g("gpumon_mig_instance_info"), instant=True, table=True)], "none",
                "gpumon_mig_instance_info: each compute instance, its GPU instance, MIG UUID (what device plugins give "
                "pods), profiles, SMs and placement."), 18, 6)
    metric_panel("gpumon_mig_sm_active_ratio", "SM activity by GPU instance (GPM)",
                 "GI {{gpu_instance}} {{mig_profile}}", max_=1, board=b)
    b.add(timeseries("Memory used by GPU instance", [
        target(f'{g("gpumon_mig_memory_used_bytes")} / {g("gpumon_mig_memory_total_bytes")}',
               "GI {{gpu_instance}} {{mig_profile}}")], "percentunit",
        "gpumon_mig_memory_used_bytes over gpumon_mig_memory_total_bytes, per GPU instance (read once per GPU "
        "instance: its compute instances share it).", max_=1))
    b.add(timeseries("Occupancy, tensor, DRAM and engine by GPU instance (GPM)", [
        target(g("gpumon_mig_sm_occupancy_ratio"), "GI {{gpu_instance}} occupancy"),
        target(g("gpumon_mig_tensor_active_ratio"), "GI {{gpu_instance}} tensor"),
        target(g("gpumon_mig_dram_active_ratio"), "GI {{gpu_instance}} DRAM"),
        target(g("gpumon_mig_graphics_engine_active_ratio"), "GI {{gpu_instance}} engine")], "percentunit",
        "The other GPM ratios of each GPU instance.", max_=1))
    metric_panel("gpumon_mig_compute_processes", "Compute processes by GPU instance", "GI {{gpu_instance}}",
                 board=b)
    metric_panel("gpumon_mig_memory_used_bytes", "Memory used by GPU instance (bytes)", "GI {{gpu_instance}}",
                 board=b)
    metric_panel("gpumon_mig_memory_total_bytes", "Memory of each GPU instance", "GI {{gpu_instance}}", board=b)

    b.row("Thermal and power")
    b.add(timeseries("Temperature", [target(g("gpumon_gpu_temperature_celsius"), "GPU"),
                                     target(g("gpumon_memory_temperature_celsius"), "HBM"),
                                     target(g("gpumon_temperature_threshold_celsius"), "threshold {{threshold}}")],
                     "celsius", "Die and memory temperature against the GPU's slowdown and shutdown thresholds."))
    b.add(timeseries("Power", [target(g("gpumon_power_draw_watts"), "draw"),
                               target(g("gpumon_power_limit_watts"), "enforced limit"),
                               target(g("gpumon_power_limit_min_watts"), "min settable limit"),
                               target(g("gpumon_power_limit_max_watts"), "max settable limit"),
                               target(f'rate({g("gpumon_energy_joules_total")}[$__rate_interval])',
                                      "from energy counter")],
                     "watt", "Power draw and limits; the energy counter's rate is the average over the interval."))
    b.add(stat("Energy since driver load", [target(g("gpumon_energy_joules_total"), instant=True)], "joule",
               "Energy counter (slow tier)."), 6, 4)
    b.add(stat("Performance state", [target(g("gpumon_performance_state"), instant=True)], "none",
               "P-state: 0 is fastest, 15 slowest.", thresholds=[(None, "green"), (1, "yellow")]), 6, 4)

    b.row("Clocks")
    b.add(timeseries("Clocks", [target(g("gpumon_sm_clock_hertz"), "SM"),
                                target(g("gpumon_sm_clock_max_hertz"), "SM max"),
                                target(g("gpumon_memory_clock_hertz"), "memory"),
                                target(g("gpumon_memory_clock_max_hertz"), "memory max")],
                     "hertz", "Current clocks against their maxima."))
    b.add(state_timeline("Clock event reasons", [target(g("gpumon_clock_event_reason_active"), "{{reason}}")],
                         "What holds the clocks down, over time (gpu_idle is harmless; power and thermal are not)."))
    b.add(timeseries("Time throttled, by reason",
                     [target(f'rate({g("gpumon_clock_throttle_seconds_total")}[$__rate_interval])', "{{reason}}")],
                     "percentunit", "Fraction of time the clocks were held below the requested value (NVML "
                     "violation counters, slow tier: steps every 30 s).", max_=1), 24, 8)

    b.row("PCIe")
    b.add(timeseries("PCIe throughput", [target(g("gpumon_pcie_rx_bytes_per_second"), "rx"),
                                         target(g("gpumon_pcie_tx_bytes_per_second"), "tx")],
                     "Bps", "PCIe bytes per second from GPM (no 20 ms nvmlDeviceGetPcieThroughput stall)."))
    b.add(timeseries("PCIe link vs maximum", [target(g("gpumon_pcie_link_generation"), "generation"),
                                              target(g("gpumon_pcie_link_max_generation"), "max generation"),
                                              target(g("gpumon_pcie_link_width"), "width (lanes)"),
                                              target(g("gpumon_pcie_link_max_width"), "max width (lanes)")],
                     "none", "A link below its maximum generation or width (outside idle power saving) is degraded."))
    b.add(timeseries("PCIe replays", [target(f'increase({g("gpumon_pcie_replays_total")}[$__rate_interval])',
                                             "replays")],
                     "none", "Link-level retransmissions per interval.", bars=True))

    b.row("Errors")
    b.add(timeseries("ECC errors", [
        target(f'increase({g("gpumon_ecc_volatile_errors_total")}[$__rate_interval])', "volatile {{severity}}"),
        target(f'increase({g("gpumon_ecc_aggregate_errors_total")}[$__rate_interval])', "aggregate {{severity}}")],
        "none", "New ECC errors per interval, by severity.", bars=True))
    b.add(timeseries("XID errors", [target(f'increase({g("gpumon_xid_errors_total")}[$__rate_interval])',
                                           "XID {{xid}}")],
                     "none", "XID errors reported by the driver per interval, by code. Empty when there were none.",
                     bars=True))
    b.add(stat("Last XID", [target(f'{g("gpumon_last_xid_timestamp_seconds")} * 1000', instant=True)],
               "dateTimeFromNow", "When the driver last reported an XID for this GPU (empty: never).",
               thresholds=[(None, "red")]), 6, 4)
    b.add(stat("ECC errors (lifetime)", [target(g("gpumon_ecc_aggregate_errors_total"), "{{severity}}",
                                                instant=True)],
               "none", "Aggregate ECC errors over the GPU's life.", thresholds=[(None, "green"), (1, "yellow")]),
          6, 4)
    b.add(stat("Remapped rows", [target(g("gpumon_remapped_rows_total"), "{{cause}}", instant=True)], "none",
               "Memory rows remapped, by cause.", thresholds=[(None, "green"), (1, "yellow")]), 6, 4)
    b.add(stat("Row remap pending / failed", [target(g("gpumon_row_remap_pending"), "pending", instant=True),
                                              target(g("gpumon_row_remap_failed"), "failed", instant=True)],
               "none", "Pending: reset the GPU to apply. Failed: the GPU needs service.",
               thresholds=[(None, "green"), (1, "red")]), 6, 4)

    b.row("gpumon on this GPU")
    metric_panel("gpumon_gpu_poll_duration_seconds", "Poll duration", "{{tier}}", w=8, h=8, board=b)
    b.add(timeseries("Deadline misses", [target(
        f'increase({g("gpumon_poll_deadline_exceeded_total")}[$__rate_interval])', "{{tier}}")],
        "none", "Polls of this GPU that missed the tier's deadline.", bars=True), 8, 8)
    b.add(timeseries("Unsupported metrics and re-inits", [
        target(g("gpumon_unsupported_metrics"), "unsupported metrics"),
        target(f'increase({g("gpumon_gpu_reinit_total")}[$__rate_interval])', "re-initialisations")],
        "none", "Metrics NVML does not support on this GPU (they have no series), and re-inits after a loss."),
        8, 8)
    nvlink_panels(b)
    return dashboard("gpumon-gpu-detail", "gpumon / GPU detail",
                     "One GPU: every metric gpumon reads for it.", b, multi=False, refresh="10s")
