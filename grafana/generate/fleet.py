"""The Fleet dashboard: every GPU of every host at a glance."""

from __future__ import annotations

from typing import Any

from grafana.generate.panels import (
    DETAIL_LINK,
    SM_OR_UTIL,
    Board,
    dashboard,
    g,
    h,
    heatmap,
    metric_panel,
    stat,
    table,
    target,
    timeseries,
)


def fleet() -> dict[str, Any]:
    b = Board()
    b.add(stat("GPUs up", [target(f'count({g("gpumon_gpu_up")} == 1) or vector(0)', instant=True)], "none",
               "GPUs that answered their last poll."), 4, 4)
    b.add(stat("GPUs lost", [target(f'count({g("gpumon_gpu_up")} == 0) or vector(0)', instant=True)], "none",
               "GPUs gpumon could not read at its last poll (GpuIsLost and friends); gpumon re-initialises them.",
               thresholds=[(None, "green"), (1, "red")]), 4, 4)
    b.add(stat("Hosts", [target(f'count({h("gpumon_build_info")}) or vector(0)', instant=True)], "none",
               "gpumon instances scraped."), 4, 4)
    b.add(stat("Hosts replaying DEMO DATA",
               [target('count(' + h("gpumon_build_info", 'backend="replay"') + ') or vector(0)', instant=True)],
               "none", "gpumon instances replaying a recorded capture instead of reading GPUs: their numbers are "
               "not real.", thresholds=[(None, "green"), (1, "orange")]), 4, 4)
    b.add(stat("Alerts firing (gpumon)",
               [target('count(' + h("gpumon_alerts", 'alertstate="firing"') + ') or vector(0)', instant=True)],
               "none", "Alerts firing in gpumon's local rule evaluation.",
               thresholds=[(None, "green"), (1, "red")]), 4, 4)
    b.add(stat("GPUs without GPM",
               [target('count(' + g("gpumon_gpu_info", 'sm_activity_source!="gpm"') + ') or vector(0)',
                       instant=True)],
               "none", "GPUs with no NVML GPM (before Hopper): their SM activity panels show util.gpu instead, "
               "which only means 'a kernel was running'.", thresholds=[(None, "green"), (1, "yellow")]), 4, 4)

    b.row("Activity")
    b.add(heatmap("SM activity by GPU", [target(SM_OR_UTIL, "{{instance}} GPU {{gpu}} · {{source}}")],
                  "percentunit",
                  "One row per GPU. SM activity from NVML GPM (Hopper and later). GPUs without GPM fall back to "
                  "util.gpu, labelled 'util.gpu fallback': it reads ~100 % whenever any kernel or copy runs, so it "
                  "overstates real SM activity."), 24, 10)
    b.add(timeseries("Memory used", [target(f'{g("gpumon_memory_used_bytes")} / {g("gpumon_memory_total_bytes")}',
                                            "{{instance}} GPU {{gpu}}")],
                     "percentunit", "Device memory in use as a fraction of installed memory.", max_=1))
    metric_panel("gpumon_power_draw_watts", "Power draw", "{{instance}} GPU {{gpu}}", board=b)
    metric_panel("gpumon_gpu_temperature_celsius", "GPU temperature", "{{instance}} GPU {{gpu}}", board=b)
    b.add(timeseries("Power draw / limit",
                     [target(f'{g("gpumon_power_draw_watts")} / {g("gpumon_power_limit_watts")}',
                             "{{instance}} GPU {{gpu}}")],
                     "percentunit", "Power draw as a fraction of the enforced limit; near 1 the GPU is power "
                     "capped.", max_=1))

    b.row("Allocation and alerts")
    idle = (f'(avg_over_time({g("gpumon_sm_active_ratio")}[10m])'
            f' or avg_over_time({g("gpumon_gpu_utilization_ratio")}[10m])) < 0.1'
            f' and on(instance, gpu) {g("gpumon_compute_processes")} > 0')
    b.add(table("Idle but allocated GPUs", [target(idle)], "percentunit",
                "GPUs that compute processes hold while their SM activity (util.gpu where there is no GPM) "
                "averaged under 10 % over the last 10 minutes.", links=DETAIL_LINK), 12, 8)
    b.add(table("Compute processes per GPU", [target(g("gpumon_compute_processes"))], "none",
                "Compute processes on each GPU now.", links=DETAIL_LINK), 12, 8)
    b.add(table("Owners of each GPU", [
        target(f'max by (instance, gpu, owner_namespace, owner_pod) ({g("gpumon_gpu_owner_info")})',
               instant=True, table=True),
        target(f'max by (instance, gpu, job_id, user) ({g("gpumon_gpu_job_info")})', instant=True, table=True)],
        "none", "A: the pods the kubelet gave each GPU to; B: the jobs holding each GPU. Allocated GPUs show "
        "here even when nothing runs on them.", links=DETAIL_LINK), 12, 8)
    b.add(table("Processes by owner", [target(
        f'count by (instance, gpu, owner_namespace, owner_pod, job_id, user) ({g("gpumon_process_info")})',
        instant=True, table=True)], "none",
        "How many processes each owner (pod, Slurm job, user) runs on each GPU now.", links=DETAIL_LINK), 12, 8)
    b.add(table("Doctor checks not ok", [
        target(f'{g("gpumon_health_check_status")} > 0', instant=True, table=True),
        target(f'{h("gpumon_host_check_status")} > 0', instant=True, table=True)], "none",
        "A: `gpumon doctor` checks of each GPU that warn (1) or fail (2) after the last slow poll; B: checks of "
        "the host (a GPU on the PCI bus that NVML does not see). `gpumon doctor --only CHECK` on the host says why "
        "(docs/doctor.md).", links=DETAIL_LINK,
        mappings=[{"type": "value", "options": {"1": {"text": "warn"}, "2": {"text": "fail"}}}]), 12, 8)
    b.add(table("Alerts firing (gpumon local rules)",
                [target(h("gpumon_alerts", 'alertstate="firing"')),
                 target(f'time() - {h("gpumon_alerts_active_since_timestamp_seconds")}')],
                "s", "gpumon_alerts: the alerts gpumon evaluates on the host. Value B is how long each alert has "
                "been active."), 12, 8)
    b.add(table("Alerts firing (Prometheus ALERTS)", [target('ALERTS{alertstate="firing",instance=~"$instance"}')],
                "none", "ALERTS: the same rules evaluated centrally by Prometheus, if it loads them "
                "(deploy/prometheus)."), 12, 8)
    return dashboard("gpumon-fleet", "gpumon / Fleet",
                     "Every GPU of every host: activity, memory, power, heat, allocation and alerts.", b)
