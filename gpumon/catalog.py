"""The metric table: every metric gpumon exports is named here once.

The nvml source reads this table to decide which NVML calls each tier makes, the exporter takes
type, help and unit from it, `docs/metrics.md` is generated from it, and the tests check all three
against it. Adding a metric is one row (plus a reader in the source if it needs a new NVML call).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from gpumon.model import Tier


class MetricType(enum.StrEnum):
    GAUGE = "gauge"
    COUNTER = "counter"
    INFO = "info"


class Origin(enum.StrEnum):
    """Who produces a metric's series."""

    NVML = "nvml"  # a reader of the nvml source, named by the metric's `reading`
    DEVICE = "device"  # the GPU's static facts
    EVENTS = "events"  # NVML's event thread (XIDs)
    SELF = "self"  # gpumon's own health
    PROCESSES = "processes"  # gpumon/sources/processes.py
    JOBS = "jobs"  # gpumon/sources/jobs.py (and the Slurm cgroups of processes)
    KUBELET = "kubelet"  # gpumon/sources/kubelet.py
    MIG = "mig"  # gpumon/sources/mig.py
    DOCTOR = "doctor"  # gpumon/doctor/service.py
    ACCOUNTING = "accounting"  # gpumon/accounting/
    INFINIBAND = "infiniband"
    NCCL_RAS = "nccl_ras"
    REPLAY = "replay"  # demo data only
    RULES = "rules"
    NOTIFY = "notify"


GAUGE, COUNTER, INFO = MetricType.GAUGE, MetricType.COUNTER, MetricType.INFO

PERCENT = 0.01  # NVML percent -> ratio 0..1
MILLI = 1e-3  # mW -> W, mJ -> J
MHZ = 1e6  # MHz -> Hz
MIB = 1048576.0  # MiB/s -> bytes/s
KIB = 1024.0  # KiB -> bytes
MEGA = 1e6  # MB/s (decimal, as NVML's NVLink speed field) -> bytes/s
NANO = 1e-9  # ns -> s


@dataclass(frozen=True)
class Metric:
    """One exported metric family.

    `source` says who produces it: `nvml` (a reader of the nvml source, named by `reading`; `key`
    picks one value when a reader returns several), `device` (static facts), `events` (NVML event
    thread) or `self` (the daemon's own health). `scale` converts the raw NVML unit to the base unit.
    `labels` are the labels beyond the `gpu`/`uuid` pair every per-GPU series carries.
    """

    name: str
    type: MetricType
    unit: str
    help: str
    source: Origin
    tier: Tier = Tier.FAST
    reading: str = ""
    key: str = ""
    scale: float = 1.0
    labels: tuple[str, ...] = ()
    per_gpu: bool = True
    opt_in: str = ""  # config switch that enables it (off by default)

    @property
    def family(self) -> str:
        """The name without the `_total` suffix, as prometheus-client wants counters named."""
        return self.name.removesuffix("_total") if self.type == COUNTER else self.name


def _m(name: str, type_: MetricType, unit: str, help_: str, source: str = "nvml", **kw: object) -> Metric:
    return Metric(name, type_, unit, help_, Origin(source), **kw)  # type: ignore[arg-type]


F, S, ST = Tier.FAST, Tier.SLOW, Tier.STATIC

METRICS: tuple[Metric, ...] = (
    # --- identity and health -------------------------------------------------------------------
    _m("gpumon_gpu_info", INFO, "", "GPU identity; join on gpu or uuid for names, bus id, driver.",
       "device", tier=ST, labels=("name", "pci_bus_id", "architecture", "driver_version",
                                  "cuda_driver_version", "gpm", "sm_activity_source", "memory_info")),
    _m("gpumon_gpu_up", GAUGE, "", "1 when the GPU answered its last poll, 0 when it is lost.", "self"),
    # --- utilisation: GPM (Hopper+) is real SM activity; util.gpu is only "a kernel was running" --
    _m("gpumon_sm_active_ratio", GAUGE, "ratio",
       "Fraction of time at least one warp was resident per SM, averaged over SMs (GPM SM_UTIL).",
       reading="gpm", key="sm_util", scale=PERCENT),
    _m("gpumon_sm_occupancy_ratio", GAUGE, "ratio",
       "Resident warps as a fraction of the maximum, averaged over SMs (GPM SM_OCCUPANCY).",
       reading="gpm", key="sm_occupancy", scale=PERCENT),
    _m("gpumon_tensor_active_ratio", GAUGE, "ratio",
       "Fraction of cycles any tensor pipe was active (GPM ANY_TENSOR_UTIL).",
       reading="gpm", key="any_tensor_util", scale=PERCENT),
    _m("gpumon_dram_active_ratio", GAUGE, "ratio",
       "Fraction of peak DRAM bandwidth used (GPM DRAM_BW_UTIL).",
       reading="gpm", key="dram_bw_util", scale=PERCENT),
    _m("gpumon_graphics_engine_active_ratio", GAUGE, "ratio",
       "Fraction of time the graphics/compute engine was active (GPM GRAPHICS_UTIL).",
       reading="gpm", key="graphics_util", scale=PERCENT),
    _m("gpumon_fp64_active_ratio", GAUGE, "ratio", "Fraction of cycles the FP64 pipe was active (GPM).",
       reading="gpm", key="fp64_util", scale=PERCENT),
    _m("gpumon_fp32_active_ratio", GAUGE, "ratio", "Fraction of cycles the FP32 pipe was active (GPM).",
       reading="gpm", key="fp32_util", scale=PERCENT),
    _m("gpumon_fp16_active_ratio", GAUGE, "ratio", "Fraction of cycles the FP16 pipe was active (GPM).",
       reading="gpm", key="fp16_util", scale=PERCENT),
    _m("gpumon_pcie_tx_bytes_per_second", GAUGE, "bytes_per_second",
       "PCIe bytes sent by the GPU per second (GPM PCIE_TX_PER_SEC).",
       reading="gpm", key="pcie_tx", scale=MIB),
    _m("gpumon_pcie_rx_bytes_per_second", GAUGE, "bytes_per_second",
       "PCIe bytes received by the GPU per second (GPM PCIE_RX_PER_SEC).",
       reading="gpm", key="pcie_rx", scale=MIB),
    _m("gpumon_gpu_utilization_ratio", GAUGE, "ratio",
       "Fraction of the sample period in which any kernel ran (NVML util.gpu). Not SM activity: "
       "it reads ~1 during pure PCIe copies with idle SMs.",
       reading="utilization", key="gpu", scale=PERCENT),
    _m("gpumon_memory_utilization_ratio", GAUGE, "ratio",
       "Fraction of the sample period the memory controller was busy (NVML util.memory).",
       reading="utilization", key="memory", scale=PERCENT),
    # --- memory --------------------------------------------------------------------------------
    _m("gpumon_memory_used_bytes", GAUGE, "bytes",
       "Device memory in use (allocated by processes), without the driver's reserved memory; on drivers "
       "before R510 (gpumon_gpu_info{memory_info=\"v1\"}) it includes the reserved memory.",
       reading="memory", key="used"),
    _m("gpumon_memory_free_bytes", GAUGE, "bytes", "Device memory free.", reading="memory", key="free"),
    _m("gpumon_memory_total_bytes", GAUGE, "bytes", "Device memory installed.",
       reading="memory", key="total"),
    _m("gpumon_memory_reserved_bytes", GAUGE, "bytes", "Device memory reserved by the driver and firmware.",
       reading="memory", key="reserved"),
    # --- thermals, power, clocks ---------------------------------------------------------------
    _m("gpumon_gpu_temperature_celsius", GAUGE, "celsius", "GPU die temperature.",
       reading="temperature"),
    _m("gpumon_memory_temperature_celsius", GAUGE, "celsius", "HBM temperature (field 82).",
       reading="fields", key="82"),
    _m("gpumon_temperature_threshold_celsius", GAUGE, "celsius",
       "Temperature thresholds: slowdown, shutdown, gpu_max and mem_max.",
       tier=ST, reading="temperature_thresholds", labels=("threshold",)),
    _m("gpumon_power_draw_watts", GAUGE, "watts", "Power draw (averaged by the driver over ~1 s).",
       reading="power_usage", scale=MILLI),
    _m("gpumon_power_limit_watts", GAUGE, "watts", "Enforced power limit.",
       tier=S, reading="power_limit", scale=MILLI),
    _m("gpumon_power_limit_min_watts", GAUGE, "watts", "Lowest power limit that can be set.",
       tier=ST, reading="power_constraints", key="min", scale=MILLI),
    _m("gpumon_power_limit_max_watts", GAUGE, "watts", "Highest power limit that can be set.",
       tier=ST, reading="power_constraints", key="max", scale=MILLI),
    _m("gpumon_energy_joules_total", COUNTER, "joules", "Energy consumed since the driver was loaded.",
       tier=S, reading="energy", scale=MILLI),
    _m("gpumon_sm_clock_hertz", GAUGE, "hertz", "SM clock.", reading="clocks", key="sm", scale=MHZ),
    _m("gpumon_memory_clock_hertz", GAUGE, "hertz", "Memory clock.", reading="clocks", key="mem", scale=MHZ),
    _m("gpumon_sm_clock_max_hertz", GAUGE, "hertz", "Maximum SM clock.",
       tier=ST, reading="clocks_max", key="sm", scale=MHZ),
    _m("gpumon_memory_clock_max_hertz", GAUGE, "hertz", "Maximum memory clock.",
       tier=ST, reading="clocks_max", key="mem", scale=MHZ),
    _m("gpumon_clock_event_reason_active", GAUGE, "",
       "1 while a clock event reason (idle, power cap, thermal slowdown, ...) holds clocks down.",
       reading="clock_event_reasons", labels=("reason",)),
    _m("gpumon_performance_state", GAUGE, "", "Performance state (0 = P0, fastest; 15 = slowest).",
       reading="pstate"),
    _m("gpumon_clock_throttle_seconds_total", COUNTER, "seconds",
       "Time clocks were held below the requested value, by reason (NVML violation counters).",
       tier=S, reading="violations", scale=NANO, labels=("reason",)),
    # --- PCIe ----------------------------------------------------------------------------------
    _m("gpumon_pcie_link_generation", GAUGE, "", "Current PCIe link generation.",
       tier=S, reading="pcie_link", key="generation"),
    _m("gpumon_pcie_link_width", GAUGE, "", "Current PCIe link width (lanes).",
       tier=S, reading="pcie_link", key="width"),
    _m("gpumon_pcie_link_max_generation", GAUGE, "", "Maximum PCIe link generation of GPU and slot.",
       tier=ST, reading="pcie_link_max", key="generation"),
    _m("gpumon_pcie_link_max_width", GAUGE, "", "Maximum PCIe link width of GPU and slot.",
       tier=ST, reading="pcie_link_max", key="width"),
    _m("gpumon_pcie_replays_total", COUNTER, "", "PCIe replay events (link-level retransmissions).",
       tier=S, reading="pcie_replay"),
    _m("gpumon_persistence_mode", GAUGE, "",
       "1 when persistence mode is on (the driver stays loaded with no client), 0 when off.", tier=S,
       reading="persistence_mode"),
    _m("gpumon_gpu_recovery_action", GAUGE, "",
       "The recovery NVML recommends now (field NVML_FI_DEV_GET_GPU_RECOVERY_ACTION): 0 none, 1 GPU reset, "
       "2 node reboot, 3 drain peer-to-peer, 4 drain and reset, 5 recover the IMEX domain, 6 PCIe bus reset, "
       "7 system reboot.", tier=S, reading="fields", key="230"),
    # --- NVSwitch fabric (GPUs not on one have no series) ----------------------------------------
    _m("gpumon_fabric_state", GAUGE, "",
       "The GPU's registration with the NVSwitch fabric (nvmlDeviceGetGpuFabricInfoV): 1 not started, "
       "2 in progress, 3 completed. CUDA work waits until it completes.", tier=S, reading="fabric", key="state"),
    _m("gpumon_fabric_status", GAUGE, "",
       "NVML's return code of a completed fabric registration: 0 success, any other value a GPU that failed "
       "to join the NVLink fabric.", tier=S, reading="fabric", key="status"),
    _m("gpumon_fabric_health_problem", GAUGE, "",
       "1 while the fabric reports a problem, by kind (degraded_bandwidth, route_recovery, route_unhealthy, "
       "access_timeout_recovery, incorrect_configuration, gfm_disconnected: the global fabric manager is "
       "disconnected), 0 while it reports none; kinds the driver does not report have no series.",
       tier=S, reading="fabric", key="health", labels=("problem",)),
    _m("gpumon_fabric_incorrect_configuration", GAUGE, "",
       "1 while the fabric reports the GPU's configuration incorrect, with NVML's reason (incorrect_sysguid, "
       "incorrect_chassis_sn, no_partition, insufficient_nvlinks, incompatible_gpu_fw, invalid_location, "
       "gpu_state_invalid); no series while it is correct.", tier=S, reading="fabric", key="config",
       labels=("reason",)),
    _m("gpumon_fabric_partition_assigned", GAUGE, "",
       "1 while the GPU is assigned to a fabric partition, 0 while it is not; no series where the driver "
       "does not say.", tier=S, reading="fabric", key="partition"),
    _m("gpumon_fabric_health_summary", GAUGE, "",
       "NVML's summary of the GPU's fabric health (nvmlGpuFabricInfo_v3): 1 healthy, 2 unhealthy, 3 limited "
       "capacity; no series where the driver gives none.", tier=S, reading="fabric", key="summary"),
    # --- NVLink (links not active at (re)initialisation have no series) -------------------------
    _m("gpumon_nvlink_up", GAUGE, "", "1 while an NVLink link that was active at initialisation is up.",
       tier=S, reading="nvlink_state", labels=("link",)),
    _m("gpumon_nvlink_errors_total", COUNTER, "",
       "NVLink data-link errors per link, by type (replay, recovery, crc_flit, crc_data, ecc_data); NVLink "
       "4.0 and later have no crc_data.",
       tier=S, reading="nvlink_errors", labels=("link", "type")),
    _m("gpumon_nvlink_rx_bytes_per_second", GAUGE, "bytes_per_second",
       "NVLink bytes received per second on a link (GPM per-link rate).",
       reading="gpm", key="nvlink_rx", scale=MIB, labels=("link",)),
    _m("gpumon_nvlink_tx_bytes_per_second", GAUGE, "bytes_per_second",
       "NVLink bytes sent per second on a link (GPM per-link rate).",
       reading="gpm", key="nvlink_tx", scale=MIB, labels=("link",)),
    _m("gpumon_nvlink_utilization_ratio", GAUGE, "ratio",
       "Per-link NVLink rate as a fraction of the link's speed, by direction (rx, tx): the GPM per-link "
       "rate over gpumon_nvlink_speed_bytes_per_second; no series while the speed is unknown.",
       reading="gpm", key="nvlink_utilization", labels=("link", "direction")),
    _m("gpumon_nvlink_total_rx_bytes_per_second", GAUGE, "bytes_per_second",
       "NVLink bytes received per second over all of the GPU's links (GPM NVLINK_TOTAL_RX_PER_SEC).",
       reading="gpm", key="nvlink_rx_total", scale=MIB),
    _m("gpumon_nvlink_total_tx_bytes_per_second", GAUGE, "bytes_per_second",
       "NVLink bytes sent per second over all of the GPU's links (GPM NVLINK_TOTAL_TX_PER_SEC).",
       reading="gpm", key="nvlink_tx_total", scale=MIB),
    _m("gpumon_nvlink_rx_bytes_total", COUNTER, "bytes",
       "NVLink data bytes received over all of the GPU's links (field 139 NVLINK_THROUGHPUT_DATA_RX with "
       "scopeId UINT_MAX, the sum of all links, KiB); needs no GPM.", reading="fields", key="139", scale=KIB),
    _m("gpumon_nvlink_tx_bytes_total", COUNTER, "bytes",
       "NVLink data bytes sent over all of the GPU's links (field 138 NVLINK_THROUGHPUT_DATA_TX with "
       "scopeId UINT_MAX, the sum of all links, KiB); needs no GPM.", reading="fields", key="138", scale=KIB),
    _m("gpumon_nvlink_speed_bytes_per_second", GAUGE, "bytes_per_second",
       "Speed of each of the GPU's active NVLink links, per direction (field 90 NVLINK_SPEED_MBPS_COMMON: "
       "one value common to all active links).", tier=S, reading="nvlink_speed", scale=MEGA),
    # --- memory errors -------------------------------------------------------------------------
    _m("gpumon_ecc_volatile_errors_total", COUNTER, "",
       "ECC errors since the driver was loaded, by severity (corrected, uncorrected).",
       tier=S, reading="ecc_volatile", labels=("severity",)),
    _m("gpumon_ecc_aggregate_errors_total", COUNTER, "",
       "ECC errors over the GPU's lifetime, by severity (corrected, uncorrected).",
       tier=S, reading="ecc_aggregate", labels=("severity",)),
    _m("gpumon_remapped_rows_total", COUNTER, "",
       "Memory rows remapped, by cause (correctable, uncorrectable errors).",
       tier=S, reading="remapped_rows", labels=("cause",)),
    _m("gpumon_row_remap_pending", GAUGE, "", "1 when a row remap waits for the next GPU reset.",
       tier=S, reading="remapped_rows", key="pending"),
    _m("gpumon_row_remap_failed", GAUGE, "", "1 when a row remap has failed (the GPU needs service).",
       tier=S, reading="remapped_rows", key="failure"),
    # --- XID events ----------------------------------------------------------------------------
    _m("gpumon_xid_errors_total", COUNTER, "", "XID errors reported by the driver, by XID code.",
       "events", labels=("xid",)),
    _m("gpumon_last_xid_timestamp_seconds", GAUGE, "seconds", "Unix time of the most recent XID error.",
       "events"),
    # --- MIG instances (gpumon/sources/mig.py, docs/mig.md) ---------------------------------------------
    _m("gpumon_mig_mode", GAUGE, "",
       "1 when MIG is enabled, 0 when disabled: state=current now, state=pending after the next GPU reset. "
       "Absent on a GPU without MIG.", "mig", tier=S, labels=("state",)),
    _m("gpumon_mig_instance_info", INFO, "",
       "A MIG device (one compute instance of a GPU instance): its UUID (the id Kubernetes device plugins "
       "give pods), the GPU instance's profile (mig_profile, e.g. 1g.18gb) and the compute instance's "
       "(compute_profile: 1c.2g.35gb for a part of one), its SMs, and the GPU instance's placement in "
       "memory slices (start:size; empty where NVML refuses it to a non-root user).", "mig", tier=S,
       labels=("gpu_instance", "compute_instance", "mig_uuid", "mig_profile", "compute_profile",
               "multiprocessors", "placement")),
    _m("gpumon_mig_memory_used_bytes", GAUGE, "bytes",
       "Device memory used in a GPU instance (shared by its compute instances: read once per GPU instance, "
       "never summed over compute instances).", "mig", labels=("gpu_instance", "mig_profile")),
    _m("gpumon_mig_memory_total_bytes", GAUGE, "bytes", "Device memory of a GPU instance.", "mig",
       labels=("gpu_instance", "mig_profile")),
    _m("gpumon_mig_sm_active_ratio", GAUGE, "ratio",
       "SM activity of a GPU instance: the fraction of time at least one warp was resident per SM, averaged "
       "over the instance's SMs (GPM SM_UTIL through nvmlGpmMigSampleGet).", "mig",
       labels=("gpu_instance", "mig_profile")),
    _m("gpumon_mig_sm_occupancy_ratio", GAUGE, "ratio", "Resident warps of a GPU instance as a fraction of "
       "the maximum (GPM SM_OCCUPANCY).", "mig", labels=("gpu_instance", "mig_profile")),
    _m("gpumon_mig_tensor_active_ratio", GAUGE, "ratio", "Fraction of cycles any tensor pipe of a GPU "
       "instance was active (GPM ANY_TENSOR_UTIL).", "mig", labels=("gpu_instance", "mig_profile")),
    _m("gpumon_mig_dram_active_ratio", GAUGE, "ratio", "Fraction of a GPU instance's peak DRAM bandwidth "
       "used (GPM DRAM_BW_UTIL).", "mig", labels=("gpu_instance", "mig_profile")),
    _m("gpumon_mig_graphics_engine_active_ratio", GAUGE, "ratio", "Fraction of time a GPU instance's "
       "graphics/compute engine was active (GPM GRAPHICS_UTIL).", "mig", labels=("gpu_instance", "mig_profile")),
    _m("gpumon_mig_compute_processes", GAUGE, "", "Compute processes running in a GPU instance (all its "
       "compute instances).", "mig", labels=("gpu_instance", "mig_profile")),
    # --- the doctor's checks (gpumon/doctor/, docs/doctor.md) -------------------------------------------
    _m("gpumon_health_check_status", GAUGE, "",
       "A `gpumon doctor` check of the GPU after each slow poll: 0 ok, 1 warn, 2 fail; no series where it does "
       "not apply. `gpumon doctor --only CHECK` on the host prints its evidence and next step.", "doctor",
       tier=S, labels=("check",)),
    _m("gpumon_host_check_status", GAUGE, "",
       "A `gpumon doctor` check of the host after each slow poll (hardware.gpus_missing: NVIDIA GPUs on the PCI "
       "bus that NVML does not see; interconnect.infiniband: RDMA ports down or below their kind's best rate; "
       "workload.straggler: one owner's GPUs far apart in SM activity): 0 ok, "
       "1 warn, 2 fail; no series where it does not apply.", "doctor",
       tier=S, per_gpu=False, labels=("check",)),
    # --- processes and their owners (gpumon/sources/processes.py, docs/attribution.md) ----------------
    _m("gpumon_compute_processes", GAUGE, "", "Compute processes running on the GPU.", "processes"),
    _m("gpumon_compute_processes_memory_bytes", GAUGE, "bytes",
       "Device memory used by all compute processes on the GPU.", "processes"),
    _m("gpumon_process_info", INFO, "",
       "A process on the GPU (NVML's compute, graphics and MPS-client lists; kind compute, graphics, mps or "
       "a + of them), the MIG GPU instance it runs in (gpu_instance; empty without MIG), its name from /proc, "
       "and whose it is: the Kubernetes pod and container its cgroup belongs to, its Slurm job, its user. "
       "Empty where nothing says; at most attribution.processes.max_per_gpu per GPU, those holding the most "
       "memory.", "processes",
       labels=("pid", "gpu_instance", "kind", "name", "owner_namespace", "owner_pod", "owner_container", "job_id",
               "user")),
    _m("gpumon_process_memory_bytes", GAUGE, "bytes", "Device memory used by one process.", "processes",
       labels=("pid",), opt_in="process_pids"),
    _m("gpumon_process_utilization_ratio", GAUGE, "ratio",
       "One process's share of NVML's utilisation samples since the last slow poll, per engine (gpu: the "
       "time a kernel of this process was running, a duty cycle like gpumon_gpu_utilization_ratio, not SM "
       "activity; memory, encoder, decoder); 0 when it ran nothing. Read in the slow tier "
       "(attribution.processes.utilization).", "processes", labels=("pid", "engine"), opt_in="process_pids"),
    _m("gpumon_process_series_dropped_total", COUNTER, "",
       "Processes not exported because the GPU had more than attribution.processes.max_per_gpu.", "processes"),
    _m("gpumon_gpu_owner_info", INFO, "",
       "A pod's container the kubelet gave the GPU (or, under MIG, its GPU instance gpu_instance; empty for the "
       "whole GPU) to (PodResources API), through a device plugin resource; several on a time-sliced GPU. From "
       "the kubelet's last answer (attribution.kubernetes).", "kubelet",
       labels=("gpu_instance", "owner_namespace", "owner_pod", "owner_container", "resource")),
    _m("gpumon_kubelet_up", GAUGE, "", "1 when the kubelet's PodResources API answered the last refresh.",
       "kubelet", per_gpu=False),
    _m("gpumon_kubelet_answer_age_seconds", GAUGE, "seconds",
       "Age of the kubelet answer the owners come from (it grows while the kubelet fails).", "kubelet",
       per_gpu=False),
    _m("gpumon_kubelet_gpu_holders", GAUGE, "",
       "Container-device assignments of the followed resources in the kubelet's last answer.", "kubelet",
       per_gpu=False),
    _m("gpumon_kubelet_errors_total", COUNTER, "",
       "Failed refreshes from the kubelet, by gRPC status (deadline_exceeded, unavailable, resource_exhausted, "
       "...) or malformed (an answer that is not the message) or unreadable (the pod log directory).", "kubelet",
       per_gpu=False, labels=("error",)),
    _m("gpumon_gpu_job_info", INFO, "",
       "A job holding the GPU (or, under MIG, the GPU instance gpu_instance): origin=\"mapping\" from the job "
       "mapping directory (attribution.jobs.mapping_dir), which names allocated GPUs even while idle; "
       "origin=\"cgroup\" from the Slurm cgroups of the processes on the GPU, only where the directory "
       "names no job for it.", "jobs", labels=("gpu_instance", "job_id", "user", "origin")),
    _m("gpumon_job_mapping_readable", GAUGE, "",
       "1 when the job mapping directory could be read at the last poll; absent when none is configured.",
       "jobs", per_gpu=False),
    _m("gpumon_process_attribution_available", GAUGE, "",
       "1 when gpumon's /proc shows the host's PID namespace, so processes get names and owners; 0 when it "
       "does not (a container without hostPID).", "processes", per_gpu=False),
    # --- accounting (gpumon/accounting/, docs/accounting.md) ---------------------------------------------
    _m("gpumon_gpu_seconds_total", COUNTER, "seconds",
       "Seconds the GPU spent in each state, integrated at the poll rate: active (SM activity at or above "
       "accounting.active_threshold), idle_held (below it while a process, pod or job holds the GPU), idle_free "
       "(below it, nobody holding it). signal says what decided: sm_active (GPM) or gpu_utilization (util.gpu, "
       "without GPM). Continues across restarts.", "accounting", labels=("state", "signal")),
    _m("gpumon_gpu_sm_active_seconds_total", COUNTER, "seconds",
       "SM-activity-weighted seconds: the integral of SM activity (util.gpu without GPM) over the time in each "
       "state; divided by gpumon_gpu_seconds_total, the mean activity in that state.", "accounting",
       labels=("state", "signal")),
    _m("gpumon_gpu_idle_held_streak_seconds", GAUGE, "seconds",
       "How long the GPU has been held and idle without a break (0 when it is not).", "accounting"),
    _m("gpumon_owner_gpu_seconds_total", COUNTER, "seconds",
       "Seconds an owner held the GPU, active or idle_held (a GPU shared by several owners splits each second "
       "evenly). The owner is a pod's container, else a job and its user, else a user, else a process name; "
       "exported while it holds the GPU and for accounting.owner_series_retention after.", "accounting",
       labels=("owner_namespace", "owner_pod", "owner_container", "job_id", "user", "process", "state")),
    _m("gpumon_owner_sm_active_seconds_total", COUNTER, "seconds",
       "SM-activity-weighted seconds of an owner's share of the GPU: divided by its seconds held, the mean SM "
       "activity it got from what it held.", "accounting",
       labels=("owner_namespace", "owner_pod", "owner_container", "job_id", "user", "process")),
    _m("gpumon_owner_energy_joules_total", COUNTER, "joules",
       "Energy the GPU drew while an owner held it (its share), from the power draw integrated at the poll rate "
       "and scaled to the GPU's energy counter.", "accounting",
       labels=("owner_namespace", "owner_pod", "owner_container", "job_id", "user", "process")),
    _m("gpumon_accounting_active_threshold_ratio", GAUGE, "ratio",
       "accounting.active_threshold: the SM activity from which a second counts as active.", "accounting",
       per_gpu=False),
    _m("gpumon_accounting_idle_alert_after_seconds", GAUGE, "seconds",
       "accounting.idle_alert_after: how long held and idle before GpuHeldIdle fires.", "accounting", per_gpu=False),
    _m("gpumon_accounting_waste_target_ratio", GAUGE, "ratio",
       "accounting.waste_target: the idle share of held GPU time above which GpuWasteShareHigh fires.",
       "accounting", per_gpu=False),
    # --- InfiniBand / RoCE (sysfs; gpumon/sources/infiniband.py, docs/interconnect.md) ---------------
    # The tier decides how often the source reads a counter: every counters/ read is a MAD to the HCA.
    _m("gpumon_ib_port_info", INFO, "",
       "RDMA port identity: link layer (InfiniBand or Ethernet for RoCE), firmware, HCA type, board id, "
       "node GUID, PCI address.",
       "infiniband", per_gpu=False,
       labels=("device", "port", "link_layer", "fw_ver", "hca_type", "board_id", "node_guid", "pci_bus_id")),
    _m("gpumon_ib_port_up", GAUGE, "", "1 when the port's logical state is ACTIVE, else 0.",
       "infiniband", per_gpu=False, labels=("device", "port")),
    _m("gpumon_ib_port_state", GAUGE, "",
       "Logical port state code (1 DOWN, 2 INIT, 3 ARMED, 4 ACTIVE, 5 ACTIVE_DEFER).",
       "infiniband", per_gpu=False, labels=("device", "port")),
    _m("gpumon_ib_port_physical_state", GAUGE, "",
       "Physical port state code (2 Polling, 3 Disabled, 5 LinkUp, 6 LinkErrorRecovery, ...).",
       "infiniband", per_gpu=False, labels=("device", "port")),
    _m("gpumon_ib_port_rate_bytes_per_second", GAUGE, "bytes_per_second",
       "Link rate as the kernel reports it (\"100 Gb/sec (4X EDR)\" is 12.5e9), in bytes per second.",
       "infiniband", tier=S, per_gpu=False, labels=("device", "port")),
    _m("gpumon_ib_port_width_lanes", GAUGE, "", "Active link width in lanes (the 4 of \"4X\").",
       "infiniband", tier=S, per_gpu=False, labels=("device", "port")),
    _m("gpumon_ib_port_transmit_bytes_total", COUNTER, "bytes",
       "Data bytes sent (port_xmit_data x 4, 64-bit where the HCA has extended counters). On RoCE (mlx5) only "
       "RDMA traffic: the port's Ethernet/IP traffic is not in it.",
       "infiniband", per_gpu=False, labels=("device", "port")),
    _m("gpumon_ib_port_receive_bytes_total", COUNTER, "bytes",
       "Data bytes received (port_rcv_data x 4, 64-bit where the HCA has extended counters). On RoCE (mlx5) "
       "only RDMA traffic: the port's Ethernet/IP traffic is not in it.",
       "infiniband", per_gpu=False, labels=("device", "port")),
    _m("gpumon_ib_port_transmit_packets_total", COUNTER, "",
       "Packets sent (port_xmit_packets). On RoCE (mlx5) only RDMA packets.",
       "infiniband", per_gpu=False, labels=("device", "port")),
    _m("gpumon_ib_port_receive_packets_total", COUNTER, "",
       "Packets received (port_rcv_packets). On RoCE (mlx5) only RDMA packets.",
       "infiniband", per_gpu=False, labels=("device", "port")),
    _m("gpumon_ib_port_transmit_unicast_packets_total", COUNTER, "",
       "Unicast packets sent (unicast_xmit_packets, extended counters only).",
       "infiniband", tier=S, per_gpu=False, labels=("device", "port")),
    _m("gpumon_ib_port_receive_unicast_packets_total", COUNTER, "",
       "Unicast packets received (unicast_rcv_packets, extended counters only).",
       "infiniband", tier=S, per_gpu=False, labels=("device", "port")),
    _m("gpumon_ib_port_transmit_multicast_packets_total", COUNTER, "",
       "Multicast packets sent (multicast_xmit_packets, extended counters only).",
       "infiniband", tier=S, per_gpu=False, labels=("device", "port")),
    _m("gpumon_ib_port_receive_multicast_packets_total", COUNTER, "",
       "Multicast packets received (multicast_rcv_packets, extended counters only).",
       "infiniband", tier=S, per_gpu=False, labels=("device", "port")),
    _m("gpumon_ib_port_transmit_wait_ticks_total", COUNTER, "",
       "Sampling ticks in which the port had data to send but no credits (port_xmit_wait, 32-bit): congestion.",
       "infiniband", per_gpu=False, labels=("device", "port")),
    _m("gpumon_ib_port_pma_saturated", GAUGE, "",
       "1 while a PMA counter (by its sysfs name) is pinned at its maximum, where it counts nothing until a "
       "PerfMgr or perfquery -R clears it; 0 otherwise. Sent with the counter, in its tier.",
       "infiniband", per_gpu=False, labels=("device", "port", "counter")),
    _m("gpumon_ib_port_symbol_errors_total", COUNTER, "", "Minor link errors on any lane (symbol_error).",
       "infiniband", tier=S, per_gpu=False, labels=("device", "port")),
    _m("gpumon_ib_port_link_downed_total", COUNTER, "",
       "Times the link error recovery failed and the link went down (link_downed).",
       "infiniband", tier=S, per_gpu=False, labels=("device", "port")),
    _m("gpumon_ib_port_link_error_recovery_total", COUNTER, "",
       "Successful link error recoveries (link_error_recovery).",
       "infiniband", tier=S, per_gpu=False, labels=("device", "port")),
    _m("gpumon_ib_port_receive_errors_total", COUNTER, "", "Received packets with errors (port_rcv_errors).",
       "infiniband", tier=S, per_gpu=False, labels=("device", "port")),
    _m("gpumon_ib_port_receive_remote_physical_errors_total", COUNTER, "",
       "Received packets marked bad by an upstream link (EBP delimiter; port_rcv_remote_physical_errors).",
       "infiniband", tier=S, per_gpu=False, labels=("device", "port")),
    _m("gpumon_ib_port_receive_switch_relay_errors_total", COUNTER, "",
       "Received packets a switch could not forward (port_rcv_switch_relay_errors).",
       "infiniband", tier=S, per_gpu=False, labels=("device", "port")),
    _m("gpumon_ib_port_transmit_discards_total", COUNTER, "",
       "Outbound packets discarded because the port was down or congested (port_xmit_discards).",
       "infiniband", tier=S, per_gpu=False, labels=("device", "port")),
    _m("gpumon_ib_port_transmit_constraint_errors_total", COUNTER, "",
       "Packets not sent for failing raw filtering, partition or IP version checks (port_xmit_constraint_errors).",
       "infiniband", tier=S, per_gpu=False, labels=("device", "port")),
    _m("gpumon_ib_port_receive_constraint_errors_total", COUNTER, "",
       "Received packets discarded by raw filtering, partition or IP version checks (port_rcv_constraint_errors).",
       "infiniband", tier=S, per_gpu=False, labels=("device", "port")),
    _m("gpumon_ib_port_local_link_integrity_errors_total", COUNTER, "",
       "Times local physical errors exceeded the LocalPhyErrors threshold (local_link_integrity_errors, 4-bit).",
       "infiniband", tier=S, per_gpu=False, labels=("device", "port")),
    _m("gpumon_ib_port_excessive_buffer_overrun_errors_total", COUNTER, "",
       "Runs of flow-control periods with an input buffer overrun (excessive_buffer_overrun_errors, 4-bit).",
       "infiniband", tier=S, per_gpu=False, labels=("device", "port")),
    _m("gpumon_ib_port_vl15_dropped_total", COUNTER, "",
       "Incoming VL15 (subnet management) packets dropped for lack of resources (VL15_dropped).",
       "infiniband", tier=S, per_gpu=False, labels=("device", "port")),
    _m("gpumon_ib_port_hw_events_total", COUNTER, "",
       "Driver hardware counters of a port (ports/<n>/hw_counters/): CNPs sent and handled, out-of-sequence, "
       "ACK timeouts, ...",
       "infiniband", per_gpu=False, labels=("device", "port", "counter")),
    _m("gpumon_ib_device_hw_events_total", COUNTER, "",
       "Driver hardware counters of a whole device (<device>/hw_counters/; mlx5 in switchdev mode keeps its "
       "Q, congestion and ICRC counters here).",
       "infiniband", per_gpu=False, labels=("device", "counter")),
    _m("gpumon_ib_gpu_affinity_info", INFO, "",
       "PCIe distance from a GPU to an RDMA device; nearest=\"true\" marks the GPU's closest NIC(s).",
       "infiniband", labels=("ib_device", "ib_pci_bus_id", "pci_distance", "relation", "nearest")),
    # --- NCCL RAS (opt-in; gpumon/sources/nccl_ras.py, docs/interconnect.md) -----------------------------
    _m("gpumon_nccl_ras_up", GAUGE, "",
       "1 when the NCCL RAS service answered the last status query, 0 when it did not (no job, timeout, error).",
       "nccl_ras", per_gpu=False, labels=("endpoint",)),
    _m("gpumon_nccl_ras_query_failures_total", COUNTER, "",
       "RAS status queries that failed, by reason (connect, timeout, protocol).",
       "nccl_ras", per_gpu=False, labels=("endpoint", "reason")),
    _m("gpumon_nccl_ras_query_duration_seconds", GAUGE, "seconds", "Wall time of the last RAS status query.",
       "nccl_ras", per_gpu=False, labels=("endpoint",)),
    _m("gpumon_nccl_ras_job_changes_total", COUNTER, "",
       "RAS queries answered by another job (no GPU or communicator in common) than the query before, with "
       "no query between finding nothing listening: two jobs share the RAS port, or one followed another.",
       "nccl_ras", per_gpu=False, labels=("endpoint",)),
    _m("gpumon_nccl_info", INFO, "", "NCCL version of the job answering RAS, and the status format used.",
       "nccl_ras", per_gpu=False, labels=("endpoint", "nccl_version", "format")),
    _m("gpumon_nccl_communicators", GAUGE, "", "NCCL communicators in the job.",
       "nccl_ras", per_gpu=False, labels=("endpoint",)),
    _m("gpumon_nccl_ranks", GAUGE, "", "Ranks of the job's largest communicator (its world size, usually).",
       "nccl_ras", per_gpu=False, labels=("endpoint",)),
    _m("gpumon_nccl_missing_ranks", GAUGE, "",
       "Distinct ranks some communicator is missing whose process did not answer or is dead (JSON status "
       "only); ranks that answered without the communicator (destroyed, split off) are not counted.",
       "nccl_ras", per_gpu=False, labels=("endpoint",)),
    _m("gpumon_nccl_unresponsive_processes", GAUGE, "",
       "Job processes that did not answer the RAS collective (alive as far as RAS knows).",
       "nccl_ras", per_gpu=False, labels=("endpoint",)),
    _m("gpumon_nccl_dead_processes", GAUGE, "",
       "Job processes RAS considers dead (unreachable over the RAS network).",
       "nccl_ras", per_gpu=False, labels=("endpoint",)),
    _m("gpumon_nccl_async_error_ranks", GAUGE, "", "Ranks reporting an asynchronous NCCL error.",
       "nccl_ras", per_gpu=False, labels=("endpoint",)),
    _m("gpumon_nccl_init_error_ranks", GAUGE, "", "Ranks whose communicator initialisation failed.",
       "nccl_ras", per_gpu=False, labels=("endpoint",)),
    _m("gpumon_nccl_collective_operations_total", COUNTER, "",
       "Collective operations launched by the jobs answering RAS, by operation, counted by gpumon: the "
       "increase of each communicator's count (the most any rank launched) between reports of the same job "
       "(JSON status only; a job's launches before gpumon first saw it are not counted).",
       "nccl_ras", per_gpu=False, labels=("endpoint", "operation")),
    _m("gpumon_nccl_collective_stall_seconds", GAUGE, "seconds",
       "Seconds since the collective operation count of the job that answered last advanced while it has "
       "running ranks (a hung job grows this; kept per job; JSON status only).",
       "nccl_ras", per_gpu=False, labels=("endpoint",)),
    _m("gpumon_nccl_ras_timeouts", GAUGE, "",
       "Communication timeouts RAS met while gathering the last status (a sign of unresponsive peers).",
       "nccl_ras", per_gpu=False, labels=("endpoint",)),
    # --- demo mode ----------------------------------------------------------------------------------
    _m("gpumon_replay_phase", GAUGE, "",
       "Replay only: 1 for the labelled load phase (phases.json) the replayed GPU is in now.",
       "replay", labels=("phase",)),
    # --- alert rules --------------------------------------------------------------------------------
    _m("gpumon_alerts", GAUGE, "",
       "1 for each pending or firing alert of gpumon's local rules (Prometheus's ALERTS, renamed so a "
       "Prometheus evaluating the same rules does not collide); labels are the alert's own.",
       "rules", per_gpu=False, labels=("alertname", "alertstate")),
    _m("gpumon_alerts_active_since_timestamp_seconds", GAUGE, "seconds",
       "Unix time at which a pending or firing alert became active (Prometheus's ALERTS_FOR_STATE).",
       "rules", per_gpu=False, labels=("alertname",)),
    _m("gpumon_rule_group_last_duration_seconds", GAUGE, "seconds",
       "Wall time of the last evaluation of a rule group.", "rules", per_gpu=False, labels=("rule_group",)),
    _m("gpumon_rule_evaluation_failures", GAUGE, "",
       "Rules of a group whose last evaluation failed (see /api/v1/rules for the error).",
       "rules", per_gpu=False, labels=("rule_group",)),
    # --- notifications ------------------------------------------------------------------------------
    _m("gpumon_notifications_sent_total", COUNTER, "", "Notifications a receiver accepted.",
       "notify", per_gpu=False, labels=("receiver",)),
    _m("gpumon_notifications_failed_total", COUNTER, "",
       "Notifications a receiver rejected permanently (4xx other than 408/429); kept in the outbox.",
       "notify", per_gpu=False, labels=("receiver",)),
    _m("gpumon_notifications_retried_total", COUNTER, "",
       "Delivery attempts that failed and will be retried (5xx, 408, 429, network errors, timeouts).",
       "notify", per_gpu=False, labels=("receiver",)),
    _m("gpumon_notifications_dead_lettered_total", COUNTER, "",
       "Notifications given up on after notify.max_age without a successful delivery.",
       "notify", per_gpu=False, labels=("receiver",)),
    _m("gpumon_notification_queue_length", GAUGE, "", "Notifications waiting in the outbox.",
       "notify", per_gpu=False, labels=("receiver",)),
    _m("gpumon_notification_oldest_queued_age_seconds", GAUGE, "seconds",
       "Age of the oldest notification waiting in the outbox (0 when empty).",
       "notify", per_gpu=False, labels=("receiver",)),
    _m("gpumon_notification_delivery_latency_seconds", GAUGE, "seconds",
       "Time from queueing to acceptance of the receiver's last delivered notification.",
       "notify", per_gpu=False, labels=("receiver",)),
    _m("gpumon_notification_receiver_enabled", GAUGE, "",
       "0 after a receiver answered 410 Gone (until the next reload), else 1.",
       "notify", per_gpu=False, labels=("receiver",)),
    _m("gpumon_alertmanager_pushes_total", COUNTER, "", "Pushes of alerts an Alertmanager accepted.",
       "notify", per_gpu=False, labels=("alertmanager",)),
    _m("gpumon_alertmanager_push_failures_total", COUNTER, "",
       "Pushes of alerts to an Alertmanager that failed (resent with the next evaluation).",
       "notify", per_gpu=False, labels=("alertmanager",)),
    # --- gpumon itself -------------------------------------------------------------------------
    _m("gpumon_build_info", INFO, "", "gpumon version and backend; backend=\"replay\" means demo data.",
       "self", per_gpu=False, labels=("version", "backend", "capture")),
    _m("gpumon_poll_duration_seconds", GAUGE, "seconds",
       "Wall time of the last complete poll round of a tier, all GPUs in parallel.",
       "self", per_gpu=False, labels=("tier",)),
    _m("gpumon_gpu_poll_duration_seconds", GAUGE, "seconds", "Wall time of the GPU's last poll of a tier.",
       "self", labels=("tier",)),
    _m("gpumon_last_poll_success_timestamp_seconds", GAUGE, "seconds",
       "Unix time of the last poll round of a tier in which every GPU answered.",
       "self", per_gpu=False, labels=("tier",)),
    _m("gpumon_poll_deadline_exceeded_total", COUNTER, "",
       "Polls of a GPU that missed the tier's deadline (a hung NVML call) or were skipped because the "
       "previous one was still running.", "self", labels=("tier",)),
    _m("gpumon_nvml_errors_total", COUNTER, "", "NVML calls that failed, by call and error.",
       "self", per_gpu=False, labels=("call", "error")),
    _m("gpumon_unsupported_metrics", GAUGE, "",
       "Metrics the GPU does not support (NotSupported); they have no series.", "self"),
    _m("gpumon_gpu_reinit_total", COUNTER, "", "Re-initialisations of a GPU after it was lost.", "self"),
    _m("gpumon_component_healthy", GAUGE, "",
       "0 while a part of gpumon is degraded (a state file the disk refuses, a background task that failed; "
       "/-/ready names the problem), else 1.", "self", per_gpu=False, labels=("component",)),
    _m("gpumon_task_restarts_total", COUNTER, "",
       "Times a background task failed and was started again by its supervisor.",
       "self", per_gpu=False, labels=("task",)),
    _m("gpumon_state_files_quarantined_total", COUNTER, "",
       "State files found corrupt, moved aside (NAME.corrupt-TIME) and started afresh.",
       "self", per_gpu=False, labels=("file",)),
    _m("gpumon_log_messages_suppressed_total", COUNTER, "",
       "Log lines left out because the same message repeated more than 10 times in 10 s.",
       "self", per_gpu=False),
    _m("gpumon_http_connections", GAUGE, "", "Open HTTP connections to gpumon's listener.", "self", per_gpu=False),
    _m("gpumon_http_connections_closed_total", COUNTER, "",
       "Connections gpumon closed: evicted (the connection limit was reached and this was the oldest idle "
       "one) or header_timeout (no complete request within web.read_header_timeout).",
       "self", per_gpu=False, labels=("reason",)),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}


def nvml_metrics(tier: Tier, opt_ins: frozenset[str] = frozenset()) -> Iterator[Metric]:
    """The nvml-source metrics read in a tier, with opt-in metrics only when switched on."""
    for m in METRICS:
        if m.source == "nvml" and m.tier == tier and (not m.opt_in or m.opt_in in opt_ins):
            yield m
