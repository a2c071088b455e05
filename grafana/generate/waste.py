"""The waste and cost dashboard: GPU time by state and owner (gpumon's accounting counters), the idle
share of held time, who held GPUs idle, and what it cost at the price in the `price` variable."""

from __future__ import annotations

from typing import Any

from grafana.generate.panels import DETAIL_LINK, Board, dashboard, g, heatmap, stat, table, target, timeseries

IDLE = 'state="idle_held"'
HELD = 'state=~"active|idle_held"'
PRICE = {"type": "textbox", "name": "price", "label": "Price per GPU-hour", "query": "2.50",
         "current": {"text": "2.50", "value": "2.50"}, "options": [], "hide": 0,
         "description": "What a GPU-hour costs you (any currency): cost panels multiply GPU-hours by it."}


def _increase(metric: str, selector: str, by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f'sum{grouping} (increase({g(metric, selector)}[$__range]))'


def waste() -> dict[str, Any]:
    b = Board()
    share = f'{_increase("gpumon_gpu_seconds_total", IDLE)} / {_increase("gpumon_gpu_seconds_total", HELD)}'
    b.add(stat("Waste: idle share of held GPU time", [target(share, instant=True)], "percentunit",
               "Of the GPU time processes, pods and jobs held in the time range, the share spent idle (SM activity "
               "below accounting.active_threshold): the figure a scheduler change is measured in.",
               thresholds=[(None, "green"), (0.2, "orange"), (0.4, "red")]), 6, 4)
    b.add(stat("GPU-hours held idle", [target(f'{_increase("gpumon_gpu_seconds_total", IDLE)} / 3600',
                                              instant=True)], "h",
               "GPU-hours held but idle in the time range."), 6, 4)
    b.add(stat("Cost of GPU-hours held idle", [target(f'{_increase("gpumon_gpu_seconds_total", IDLE)} / 3600 * $price',
                                                      instant=True)], "none",
               "GPU-hours held idle times the price variable (per GPU-hour)."), 6, 4)
    b.add(stat("Energy while held", [target(f'{_increase("gpumon_owner_energy_joules_total", "")} / 3.6e6',
                                            instant=True)], "kwatth",
               "Energy the GPUs drew while someone held them, in the time range."), 6, 4)

    b.row("Over time")
    b.add(timeseries("GPUs by state", [target(
        f'sum by (state) (rate({g("gpumon_gpu_seconds_total")}[$__rate_interval]))', "{{state}}")], "none",
        "How many GPUs were active, held idle and free (the rate of GPU-seconds is a number of GPUs).",
        stack=True))
    b.add(timeseries("Waste share", [target(
        f'sum(rate({g("gpumon_gpu_seconds_total", IDLE)}[$__rate_interval])) / '
        f'sum(rate({g("gpumon_gpu_seconds_total", HELD)}[$__rate_interval]))', "idle share of held")],
        "percentunit", "Idle share of held GPU time.", max_=1))
    b.add(timeseries("GPUs held idle, by namespace", [target(
        f'sum by (owner_namespace) (rate({g("gpumon_owner_gpu_seconds_total", IDLE)}[$__rate_interval]))',
        "{{owner_namespace}}")], "none", "GPUs held idle by pods of each namespace (empty: not a pod).",
        stack=True))
    b.add(timeseries("GPUs held idle, by job", [target(
        f'sum by (job_id, user) (rate({g("gpumon_owner_gpu_seconds_total", IDLE)}[$__rate_interval]))',
        "{{job_id}} {{user}}")], "none", "GPUs held idle by HPC jobs (and users).", stack=True))

    b.row("Who")
    b.add(table("Top idle holders", [target(
        f'topk(10, {_increase("gpumon_owner_gpu_seconds_total", IDLE, "owner_namespace, owner_pod, job_id, user")}'
        ' / 3600)')], "h", "The owners that held GPUs idle longest in the time range, in GPU-hours.",
        links=DETAIL_LINK), 12, 8)
    b.add(table("GPU-hours by namespace and state", [target(
        f'{_increase("gpumon_owner_gpu_seconds_total", "", "owner_namespace, state")} / 3600')], "h",
        "GPU-hours each namespace held in the time range, active and idle."), 12, 8)
    b.add(table("Mean SM activity of what each owner held", [target(
        f'{_increase("gpumon_owner_sm_active_seconds_total", "", "owner_namespace, owner_pod, job_id, user")} / '
        f'{_increase("gpumon_owner_gpu_seconds_total", "", "owner_namespace, owner_pod, job_id, user")}')],
        "percentunit", "SM-activity-weighted seconds over seconds held: \"this job used 23 % of the GPUs it "
        "held\", for each owner in the time range."), 12, 8)
    b.add(table("Mean SM activity while held, by GPU", [target(
        f'{_increase("gpumon_gpu_sm_active_seconds_total", HELD, "instance, gpu")} / '
        f'{_increase("gpumon_gpu_seconds_total", HELD, "instance, gpu")}')],
        "percentunit", "For each GPU, its mean SM activity while someone held it.", links=DETAIL_LINK), 12, 8)
    b.add(heatmap("SM activity while held", [target(
        f'{g("gpumon_sm_active_ratio")} and on(instance, gpu) ({g("gpumon_compute_processes")} > 0)',
        "{{instance}} GPU {{gpu}}")], "percentunit",
        "SM activity of each GPU while a process holds it: dark rows are GPUs held and barely used."), 24, 8)
    board = dashboard("gpumon-waste", "gpumon / Waste and cost",
                      "Where the GPU-hours go: active, held idle, free; who held GPUs idle and what it cost "
                      "(docs/accounting.md).", b, refresh="1m")
    b.row("Settings")
    b.add(stat("Active from SM activity", [target('gpumon_accounting_active_threshold_ratio{instance=~"$instance"}',
                                                  instant=True)], "percentunit",
               "accounting.active_threshold: a second counts as active from this SM activity."), 8, 4)
    b.add(stat("Held idle alert after", [target('gpumon_accounting_idle_alert_after_seconds{instance=~"$instance"}',
                                                instant=True)], "s",
               "accounting.idle_alert_after: GpuHeldIdle fires after this long held and idle."), 8, 4)
    b.add(stat("Waste target", [target('gpumon_accounting_waste_target_ratio{instance=~"$instance"}', instant=True)],
               "percentunit", "accounting.waste_target: GpuWasteShareHigh fires above this idle share."), 8, 4)
    board["templating"]["list"].append(PRICE)
    board["time"] = {"from": "now-24h", "to": "now"}
    return board
