"""The Interconnect dashboard: PCIe, NVLink, InfiniBand/RoCE and NCCL jobs."""

from __future__ import annotations

from typing import Any

from grafana.generate.panels import (
    DETAIL_LINK,
    Board,
    dashboard,
    g,
    h,
    metric_panel,
    stat,
    state_timeline,
    table,
    target,
    timeseries,
)


def nvlink_panels(b: Board) -> None:
    """NVLink per link; a GPU without NVLink (or a PCIe card) has no such series."""
    b.row("NVLink")
    metric_panel("gpumon_nvlink_rx_bytes_per_second", "NVLink receive, per link",
                 "{{instance}} GPU {{gpu}} link {{link}}", board=b)
    metric_panel("gpumon_nvlink_tx_bytes_per_second", "NVLink transmit, per link",
                 "{{instance}} GPU {{gpu}} link {{link}}", board=b)
    metric_panel("gpumon_nvlink_utilization_ratio", "NVLink utilisation, per link",
                 "{{instance}} GPU {{gpu}} link {{link}} {{direction}}", note="Empty without GPM.", max_=1, board=b)
    rx_total = (f'{g("gpumon_nvlink_total_rx_bytes_per_second")} '
                f'or rate({g("gpumon_nvlink_rx_bytes_total")}[$__rate_interval])')
    tx_total = (f'{g("gpumon_nvlink_total_tx_bytes_per_second")} '
                f'or rate({g("gpumon_nvlink_tx_bytes_total")}[$__rate_interval])')
    b.add(timeseries("NVLink throughput, per GPU", [target(rx_total, "{{instance}} GPU {{gpu}} rx"),
                                                    target(tx_total, "{{instance}} GPU {{gpu}} tx")],
                     "Bps", "All of a GPU's links together: the GPM total rate where the GPU has GPM, the rate of "
                     "the NVLink throughput counters (fields 138/139) otherwise."))
    b.add(timeseries("NVLink errors", [target(f'increase({g("gpumon_nvlink_errors_total")}[$__rate_interval])',
                                              "{{instance}} GPU {{gpu}} link {{link}} {{type}}")],
                     "none", "Data-link replays, recoveries and CRC errors per interval; a steady rate points at a "
                     "failing link.", bars=True))
    b.add(table("NVLink links up", [target(g("gpumon_nvlink_up"))], "none",
                "1 for each link that was active at initialisation and is still up; 0 for one that went down."), 6, 8)
    b.add(table("NVLink link speed", [target(g("gpumon_nvlink_speed_bytes_per_second"))], "Bps",
                "Speed of each active link, per direction (NVML's one value common to the GPU's active links)."),
          6, 8)


def infiniband_panels(b: Board) -> None:
    """InfiniBand/RoCE ports (sysfs) and NCCL jobs (RAS); empty on hosts without them."""
    b.row("InfiniBand / RoCE")
    rx, tx = h("gpumon_ib_port_receive_bytes_total"), h("gpumon_ib_port_transmit_bytes_total")
    b.add(timeseries("RDMA receive, per port", [target(f"rate({rx}[$__rate_interval])",
                                                      "{{instance}} {{device}}/{{port}}")],
                     "Bps", "Bytes per second received on each port (port_rcv_data x 4; on RoCE, RDMA traffic "
                     "only)."))
    b.add(timeseries("RDMA transmit, per port", [target(f"rate({tx}[$__rate_interval])",
                                                       "{{instance}} {{device}}/{{port}}")],
                     "Bps", "Bytes per second sent on each port (port_xmit_data x 4; on RoCE, RDMA traffic only)."))
    b.add(timeseries("Link errors", [
        target(f'increase({h("gpumon_ib_port_symbol_errors_total")}[$__rate_interval])',
               "{{device}}/{{port}} symbol"),
        target(f'increase({h("gpumon_ib_port_link_downed_total")}[$__rate_interval])',
               "{{device}}/{{port}} downed"),
        target(f'increase({h("gpumon_ib_port_link_error_recovery_total")}[$__rate_interval])',
               "{{device}}/{{port}} recovered"),
        target(f'increase({h("gpumon_ib_port_receive_errors_total")}[$__rate_interval])',
               "{{device}}/{{port}} rcv err"),
        target(f'increase({h("gpumon_ib_port_transmit_discards_total")}[$__rate_interval])',
               "{{device}}/{{port}} discards")],
        "none", "Error counters per interval; symbol errors and recoveries precede link-downs.", bars=True))
    errors = ("receive_remote_physical_errors", "receive_switch_relay_errors", "transmit_constraint_errors",
              "receive_constraint_errors", "local_link_integrity_errors", "excessive_buffer_overrun_errors",
              "vl15_dropped")
    b.add(timeseries("Other port errors", [
        target(f'increase({h(f"gpumon_ib_port_{name}_total")}[$__rate_interval])',
               f"{{{{device}}}}/{{{{port}}}} {name.replace('_', ' ')}") for name in errors],
        "none", "The PortCounters node_exporter also reports: remote physical and switch relay errors, constraint "
        "errors, local link integrity, buffer overruns, VL15 drops (slow tier: every 30 s).", bars=True))
    b.add(timeseries("Congestion", [
        target(f'rate({h("gpumon_ib_port_transmit_wait_ticks_total")}[$__rate_interval])',
               "{{device}}/{{port}} wait"),
        target(f'rate({h("gpumon_ib_port_hw_events_total")}[$__rate_interval])',
               "{{device}}/{{port}} {{counter}}"),
        target(f'rate({h("gpumon_ib_device_hw_events_total")}[$__rate_interval])', "{{device}} {{counter}}")],
        "none", "Credit waits (InfiniBand) and hardware counters such as CNPs and retransmissions (RoCE), per "
        "second; mlx5 in switchdev mode counts per device."))
    b.add(timeseries("Unicast and multicast packets", [
        target(f'rate({h(f"gpumon_ib_port_{d}_{kind}_packets_total")}[$__rate_interval])',
               f"{{{{device}}}}/{{{{port}}}} {d} {kind}")
        for d in ("receive", "transmit") for kind in ("unicast", "multicast")],
        "pps", "Packets per second by kind (slow tier)."))
    b.add(state_timeline("Saturated counters", [target(f'{h("gpumon_ib_port_pma_saturated")} == 1',
                                                       "{{device}}/{{port}} {{counter}}")],
                         "32-bit PortCounters stuck at their maximum: they count nothing until cleared (alert "
                         "InfinibandCounterSaturated; a pinned port_xmit_wait blinds the congestion alert)."))
    b.add(table("Ports", [target(h("gpumon_ib_port_up")), target(h("gpumon_ib_port_state")),
                          target(h("gpumon_ib_port_physical_state")),
                          target(h("gpumon_ib_port_width_lanes")), target(h("gpumon_ib_port_info")),
                          target(h("gpumon_ib_port_receive_packets_total")),
                          target(h("gpumon_ib_port_transmit_packets_total"))],
                "none", "A: up; B/C: logical/physical state; D: lanes; E: identity; F/G: packets."), 16, 8)
    b.add(table("Link rate", [target(h("gpumon_ib_port_rate_bytes_per_second"))], "Bps",
                "Each port's link rate as the kernel reports it."), 8, 8)
    b.add(table("GPU to NIC (PCIe distance)", [target(g("gpumon_ib_gpu_affinity_info"))], "none",
                "Each GPU's distance to each RDMA device; nearest=\"true\" marks the NIC its NCCL traffic should use."),
          24, 6)
    b.row("NCCL (RAS)")
    b.add(stat("RAS answering", [target(h("gpumon_nccl_ras_up"), instant=True)], "none",
               "1 when the NCCL RAS service answered the last query.", thresholds=[(None, "red"), (1, "green")]), 6, 4)
    b.add(stat("Ranks", [target(h("gpumon_nccl_ranks"), instant=True)], "none", "World size of the job."), 6, 4)
    b.add(stat("Collective stall", [target(h("gpumon_nccl_collective_stall_seconds"), instant=True)], "s",
               "Seconds since the collective count last advanced while ranks run.",
               thresholds=[(None, "green"), (300, "red")]), 6, 4)
    b.add(stat("Lost ranks", [target(f'{h("gpumon_nccl_dead_processes")} + {h("gpumon_nccl_missing_ranks")}',
                                     instant=True)], "none", "Dead processes plus missing ranks.",
               thresholds=[(None, "green"), (1, "red")]), 6, 4)
    b.add(timeseries("Collectives per second", [
        target(f'rate({h("gpumon_nccl_collective_operations_total")}[$__rate_interval])', "{{operation}}")],
        "ops", "Collective operations launched per second, by operation."))
    b.add(table("Job health", [target(h("gpumon_nccl_info")), target(h("gpumon_nccl_communicators")),
                               target(h("gpumon_nccl_unresponsive_processes")),
                               target(h("gpumon_nccl_async_error_ranks")), target(h("gpumon_nccl_init_error_ranks")),
                               target(h("gpumon_nccl_ras_timeouts")),
                               target(f'increase({h("gpumon_nccl_ras_query_failures_total")}[$__rate_interval])'),
                               target(f'increase({h("gpumon_nccl_ras_job_changes_total")}[$__rate_interval])')],
                "none", "Version, communicators, unresponsive processes, async and init errors, RAS timeouts, "
                "query failures, and how often a different job answered (two jobs sharing the RAS port: the "
                "gauges then describe whichever answered last)."), 12, 8)
    metric_panel("gpumon_nccl_ras_query_duration_seconds", "RAS query time", "{{endpoint}}", host=True,
                 note="Each query is a collective over the job's RAS network.", board=b)




def interconnect() -> dict[str, Any]:
    b = Board()
    b.row("PCIe")
    metric_panel("gpumon_pcie_rx_bytes_per_second", "PCIe receive, per GPU", "{{instance}} GPU {{gpu}}", board=b)
    metric_panel("gpumon_pcie_tx_bytes_per_second", "PCIe transmit, per GPU", "{{instance}} GPU {{gpu}}", board=b)
    b.add(timeseries("PCIe throughput, per host", [
        target(f'sum by (instance) ({g("gpumon_pcie_rx_bytes_per_second")})', "{{instance}} rx"),
        target(f'sum by (instance) ({g("gpumon_pcie_tx_bytes_per_second")})', "{{instance}} tx")],
        "Bps", "All GPUs of a host together."))
    b.add(timeseries("PCIe replays", [target(f'increase({g("gpumon_pcie_replays_total")}[$__rate_interval])',
                                             "{{instance}} GPU {{gpu}}")],
                     "none", "Link-level retransmissions per interval; a steady rate points at a bad riser, slot or "
                     "cable.", bars=True))
    b.add(table("PCIe replays now", [target(g("gpumon_pcie_replays_total"))], "none",
                "Replay counter of every GPU (since the driver loaded).", links=DETAIL_LINK), 12, 8)
    b.add(table("PCIe link: current and maximum", [target(g("gpumon_pcie_link_generation")),
                                                     target(g("gpumon_pcie_link_max_generation")),
                                                     target(g("gpumon_pcie_link_width")),
                                                     target(g("gpumon_pcie_link_max_width"))],
                "none", "Value A/B: current/maximum generation; C/D: current/maximum lanes.", links=DETAIL_LINK),
          12, 8)
    b.add(table("PCIe links below their maximum", [
        target(f'{g("gpumon_pcie_link_generation")} < {g("gpumon_pcie_link_max_generation")}'),
        target(f'{g("gpumon_pcie_link_width")} < {g("gpumon_pcie_link_max_width")}')],
        "none", "GPUs whose link trained below its maximum generation (A) or width (B). Idle power saving can lower "
        "the generation briefly; a lower width is always a hardware problem.", links=DETAIL_LINK), 24, 6)
    nvlink_panels(b)
    infiniband_panels(b)
    return dashboard("gpumon-interconnect", "gpumon / Interconnect",
                     "PCIe rates, replays and link state, NVLink, InfiniBand/RoCE ports and NCCL jobs.", b)
