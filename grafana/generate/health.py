"""The gpumon health dashboard: polling, NVML errors, rules, notifications, faults, the process."""

from __future__ import annotations

from typing import Any

from grafana.generate.panels import (
    ONLY_GPUMON,
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


def health() -> dict[str, Any]:
    b = Board()
    b.add(table("gpumon instances", [target(h("gpumon_build_info"))], "none",
                "Version and backend of every gpumon; backend=replay means DEMO DATA, not real GPUs."), 16, 5)
    b.add(stat("GPUs up / total", [target(f'sum({g("gpumon_gpu_up")})', "up", instant=True),
                                   target(f'count({g("gpumon_gpu_up")})', "total", instant=True)],
               "none", "GPUs answering their last poll, and all GPUs."), 8, 5)

    b.row("Polling")
    metric_panel("gpumon_poll_duration_seconds", "Poll duration per tier", "{{instance}} {{tier}}", host=True,
                 note="It should stay well under the tier's interval.", board=b)
    b.add(timeseries("Slowest GPU poll per tier", [target(
        f'max by (instance, tier) ({g("gpumon_gpu_poll_duration_seconds")})', "{{instance}} {{tier}}")],
        "s", "The slowest GPU's last poll in each tier."))
    b.add(timeseries("Last successful poll, age", [target(
        f'time() - {h("gpumon_last_poll_success_timestamp_seconds")}', "{{instance}} {{tier}}")],
        "s", "Seconds since every GPU last answered a poll round of the tier. The fast tier should stay near its "
        "interval, the slow one under 30 s; the static tier only polls at start and after a re-init."))
    b.add(timeseries("Deadline misses", [target(
        f'sum by (instance, tier) (increase({g("gpumon_poll_deadline_exceeded_total")}[$__rate_interval]))',
        "{{instance}} {{tier}}")],
        "none", "GPU polls that missed the tier's deadline (a hung NVML call) or were skipped.", bars=True))

    b.row("NVML and GPUs")
    b.add(timeseries("NVML errors by call", [target(
        f'sum by (instance, call, error) (increase({h("gpumon_nvml_errors_total")}[$__rate_interval]))',
        "{{instance}} {{call}}: {{error}}")],
        "none", "NVML calls that failed, by call and error, per interval. Empty when nothing failed.", bars=True))
    metric_panel("gpumon_unsupported_metrics", "Unsupported metrics", "{{instance}} GPU {{gpu}}", board=b)
    metric_panel("gpumon_gpu_up", "GPU up", "{{instance}} GPU {{gpu}}", max_=1, board=b)
    b.add(timeseries("GPU re-initialisations", [target(
        f'increase({g("gpumon_gpu_reinit_total")}[$__rate_interval])', "{{instance}} GPU {{gpu}}")],
        "none", "Re-initialisations after a GPU was lost.", bars=True))
    metric_panel("gpumon_process_attribution_available", "Processes can be named and owned", "{{instance}}",
                 host=True, max_=1, board=b)
    b.add(timeseries("Owners' sources", [target(h("gpumon_kubelet_up"), "{{instance}} kubelet up"),
                                         target(h("gpumon_job_mapping_readable"), "{{instance}} job mapping readable")],
                     "none", "Whether the kubelet's PodResources API and the job mapping directory answered "
                     "(absent where not configured).", max_=1))
    metric_panel("gpumon_kubelet_answer_age_seconds", "Age of the kubelet's answer", "{{instance}}", host=True,
                 board=b)
    metric_panel("gpumon_kubelet_gpu_holders", "GPU assignments in the kubelet's answer", "{{instance}}", host=True,
                 board=b)
    b.add(timeseries("Kubelet errors", [target(
        f'sum by (instance, error) (increase({h("gpumon_kubelet_errors_total")}[$__rate_interval]))',
        "{{instance}} {{error}}")], "none", "Failed refreshes from the kubelet, by error.", bars=True))
    b.add(timeseries("Processes left out by the cap", [target(
        f'increase({g("gpumon_process_series_dropped_total")}[$__rate_interval])', "{{instance}} GPU {{gpu}}")],
        "none", "Processes not exported because a GPU had more than attribution.processes.max_per_gpu.", bars=True))

    b.row("Rules")
    metric_panel("gpumon_rule_group_last_duration_seconds", "Rule group duration", "{{instance}} {{rule_group}}",
                 host=True, board=b)
    metric_panel("gpumon_rule_evaluation_failures", "Rule evaluation failures", "{{instance}} {{rule_group}}",
                 host=True, board=b)

    b.row("Notifications")
    metric_panel("gpumon_notification_queue_length", "Outbox queue", "{{instance}} {{receiver}}", host=True,
                 note="Per receiver: a queue that only grows means the receiver is down or slow; delivery never "
                      "blocks polling.", stack=True, w=8, h=8, board=b)
    metric_panel("gpumon_notification_oldest_queued_age_seconds", "Oldest queued notification",
                 "{{instance}} {{receiver}}", host=True, w=8, h=8, board=b)
    metric_panel("gpumon_notification_delivery_latency_seconds", "Delivery latency", "{{instance}} {{receiver}}",
                 host=True, w=8, h=8, board=b)
    b.add(timeseries("Delivery outcomes", [
        target(f'sum by (instance, receiver) (increase({h("gpumon_notifications_sent_total")}[$__rate_interval]))',
               "{{instance}} {{receiver}} sent"),
        target(f'sum by (instance, receiver) (increase({h("gpumon_notifications_retried_total")}[$__rate_interval]))',
               "{{instance}} {{receiver}} retried"),
        target(f'sum by (instance, receiver) (increase({h("gpumon_notifications_failed_total")}[$__rate_interval]))',
               "{{instance}} {{receiver}} failed"),
        target(f'sum by (instance, receiver) '
               f'(increase({h("gpumon_notifications_dead_lettered_total")}[$__rate_interval]))',
               "{{instance}} {{receiver}} dead-lettered")],
        "none", "Per interval: accepted, retried (5xx, 408, 429, network), rejected (other 4xx) and given up.",
        bars=True), 16, 8)
    b.add(stat("Receivers disabled", [target(f'count({h("gpumon_notification_receiver_enabled")} == 0) or vector(0)',
                                             instant=True)],
               "none", "Receivers that answered 410 Gone; re-enabled by the next reload.",
               thresholds=[(None, "green"), (1, "red")]), 8, 8)

    b.row("Faults and defences")
    b.add(state_timeline("Degraded components", [target(f'1 - {h("gpumon_component_healthy")}',
                                                        "{{instance}} {{component}}")],
                         "A state file the disk refuses (kept in memory meanwhile) or a background task that failed "
                         "and was restarted; /-/ready on the host names the problem. Alert: GpumonDegraded."), 12, 8)
    b.add(timeseries("Task restarts and corrupt state files", [
        target(f'sum by (instance, task) (increase({h("gpumon_task_restarts_total")}[$__rate_interval]))',
               "{{instance}} {{task}} restarted"),
        target(f'sum by (instance, file) (increase({h("gpumon_state_files_quarantined_total")}[$__rate_interval]))',
               "{{instance}} {{file}} moved aside")],
        "none", "Background tasks their supervisor restarted after a failure, and state files found corrupt, moved "
        "aside (NAME.corrupt-TIME) and started afresh.", bars=True), 12, 8)
    metric_panel("gpumon_http_connections", "HTTP connections", "{{instance}} open", host=True,
                 note="Capped by web.max_connections, below the open-file limit.", w=8, h=7, board=b)
    b.add(timeseries("Connections closed by gpumon", [target(
        f'sum by (instance, reason) (increase({h("gpumon_http_connections_closed_total")}[$__rate_interval]))',
        "{{instance}} {{reason}}")],
        "none", "evicted: the connection limit was reached and the oldest idle connection made room. "
        "header_timeout: no complete request in time (slow-headers clients).", bars=True), 8, 7)
    b.add(timeseries("Log lines suppressed", [target(
        f'increase({h("gpumon_log_messages_suppressed_total")}[$__rate_interval])', "{{instance}}")],
        "none", "Repeats of one log message beyond 10 in 10 s, left out of the log.", bars=True), 8, 7)

    b.add(timeseries("Alertmanager pushes", [
        target(f'sum by (instance, alertmanager) (increase({h("gpumon_alertmanager_pushes_total")}[$__rate_interval]))',
               "{{instance}} → {{alertmanager}} accepted"),
        target(f'sum by (instance, alertmanager) '
               f'(increase({h("gpumon_alertmanager_push_failures_total")}[$__rate_interval]))',
               "{{instance}} → {{alertmanager}} failed")],
        "none", "Pushes of the active alerts to each configured Alertmanager, per interval; a failed push is "
        "resent with the next evaluation.", bars=True), 24, 7)

    b.row("Process")
    b.add(timeseries("CPU", [target(f'rate({h("process_cpu_seconds_total")}[$__rate_interval]) {ONLY_GPUMON}',
                                    "{{instance}}")],
                     "percentunit", "CPU time of the gpumon process (1 = one core)."), 8, 8)
    b.add(timeseries("Resident memory", [target(f'{h("process_resident_memory_bytes")} {ONLY_GPUMON}',
                                                "{{instance}}")],
                     "bytes", "Resident set size of the gpumon process."), 8, 8)
    b.add(timeseries("Scrape duration", [target(f'{h("scrape_duration_seconds")} {ONLY_GPUMON}', "{{instance}}")],
                     "s", "How long Prometheus takes to scrape gpumon (a scrape never touches NVML)."), 8, 8)
    return dashboard("gpumon-health", "gpumon / Health",
                     "gpumon itself: polling, NVML errors, GPUs, rules and the process.", b)
