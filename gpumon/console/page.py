"""The console at `/`, rendered on the server from what gpumon holds now: one card per GPU with its
latest values, owner, alerts, failing doctor checks and idle streak; the alerts and silences. Readable
without JavaScript; console.js then draws each card's charts from the query API and refreshes the page's
figures every poll."""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gpumon import __version__
from gpumon.model import Device, Sample

# Each chart of a card: its id, title, unit, and the series it draws (metric, label filter, legend).
CHARTS: tuple[tuple[str, str, str, tuple[tuple[str, dict[str, str], str], ...]], ...] = (
    ("activity", "SM activity and util.gpu", "ratio", (
        ("gpumon_sm_active_ratio", {}, "SM activity"),
        ("gpumon_gpu_utilization_ratio", {}, "util.gpu (a kernel was running)"))),
    ("memory", "Memory used of total", "bytes", (
        ("gpumon_memory_used_bytes", {}, "used"), ("gpumon_memory_total_bytes", {}, "total"))),
    ("power", "Power against the cap", "watts", (
        ("gpumon_power_draw_watts", {}, "draw"), ("gpumon_power_limit_watts", {}, "limit"))),
    ("temperature", "Temperature against slowdown", "celsius", (
        ("gpumon_gpu_temperature_celsius", {}, "GPU"),
        ("gpumon_temperature_threshold_celsius", {"threshold": "slowdown"}, "slowdown"))),
    ("pcie", "PCIe throughput", "bytes_per_second", (
        ("gpumon_pcie_rx_bytes_per_second", {}, "to the GPU"),
        ("gpumon_pcie_tx_bytes_per_second", {}, "from the GPU"))),
)
CHART_METRICS = sorted({metric for _, _, _, series in CHARTS for metric, _, _ in series})
OWNER_METRICS = ("gpumon_gpu_owner_info", "gpumon_gpu_job_info", "gpumon_process_info")
# A MIG instance's row in its GPU's card: (metric, column heading).
MIG_COLUMNS = (("gpumon_mig_sm_active_ratio", "SM activity"), ("gpumon_mig_memory_used_bytes", "memory used"),
               ("gpumon_mig_memory_total_bytes", "of"), ("gpumon_mig_compute_processes", "processes"))
MIG_METRICS = frozenset(m for m, _ in MIG_COLUMNS)
SEVERITY_CLASS = {"critical": "firing-critical", "page": "firing-critical"}


@dataclass
class GpuCard:
    device: Device
    values: dict[str, float] = field(default_factory=dict)  # metric (with the chart's label filter) -> latest
    owners: list[str] = field(default_factory=list)
    checks: list[tuple[str, str]] = field(default_factory=list)  # (check, "warn" | "fail")
    idle_streak_s: float | None = None
    mig: dict[str, dict[str, Any]] = field(default_factory=dict)  # GPU instance -> profile and MIG_COLUMNS


def cards(devices: Iterable[Device], fresh: Iterable[Sample]) -> list[GpuCard]:
    by_gpu = {d.index: GpuCard(d) for d in devices}
    for sample in fresh:
        card = by_gpu.get(sample.gpu) if sample.gpu is not None else None
        if card is None:
            continue
        for name, labels, value in sample.values:
            extra = {k: v for k, v in labels if k not in ("gpu", "uuid")}
            if name in CHART_METRICS and all(extra.get(k) == v for k, v in _filter_of(name).items()):
                card.values[name] = value
            elif name in OWNER_METRICS:
                card.owners.append(owner_text(name, extra))
            elif name == "gpumon_health_check_status" and value >= 1:
                card.checks.append((extra.get("check", "?"), "fail" if value >= 2 else "warn"))
            elif name == "gpumon_gpu_idle_held_streak_seconds":
                card.idle_streak_s = value
            elif name in MIG_METRICS and "gpu_instance" in extra:
                instance = card.mig.setdefault(extra["gpu_instance"], {"profile": extra.get("mig_profile", "")})
                instance[name] = value
    for card in by_gpu.values():
        card.owners = sorted(set(card.owners))
        card.checks.sort()
    return [by_gpu[i] for i in sorted(by_gpu)]


def _filter_of(metric: str) -> dict[str, str]:
    return next(f for _, _, _, series in CHARTS for m, f, _ in series if m == metric)


def owner_text(metric: str, labels: dict[str, str]) -> str:
    """Who holds the GPU, in words: a pod, a job, or a process (console.js says it the same way)."""
    if metric == "gpumon_gpu_owner_info":
        return f"pod {labels.get('owner_namespace', '')}/{labels.get('owner_pod', '')}"
    if metric == "gpumon_gpu_job_info":
        return f"job {labels.get('job_id', '')}" + (f" ({labels['user']})" if labels.get("user") else "")
    name = labels.get("name") or "pid"
    return f"{name} {labels.get('pid', '')}".strip() + (f" ({labels['user']})" if labels.get("user") else "")


def shown(metric: str, value: float | None) -> str:
    """A card's figure as text, in the unit a person reads."""
    if value is None or value != value:
        return "–"
    if metric.endswith("_ratio"):
        return f"{value:.0%}"
    if metric.endswith("_bytes_per_second"):
        return _binary(value) + "/s"
    if metric.endswith("_bytes"):
        return _binary(value)
    if metric.endswith("_watts"):
        return f"{value:.0f} W"
    if metric.endswith("_celsius"):
        return f"{value:.0f} °C"
    if metric.endswith("_processes"):
        return f"{value:.0f}"
    return f"{value:g}"


def _binary(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def alert_level(alerts: list[dict[str, Any]], gpu: int) -> str:
    """The card's colour: red for a firing critical alert of this GPU, amber for any other."""
    mine = [a for a in alerts if a.get("labels", {}).get("gpu") == str(gpu)]
    if any(a.get("state") == "firing" and a["labels"].get("severity") in SEVERITY_CLASS for a in mine):
        return "firing-critical"
    return "alerting" if mine else ""


def render(*, devices: list[Device], fresh: list[Sample], alerts: list[dict[str, Any]],
           silences: list[dict[str, Any]], demo_note: str, backend: str, interval_s: float,
           writes: tuple[bool, str], history_s: float) -> str:
    e = html.escape
    banner = (f'<p class="demo" role="alert"><strong>DEMO DATA</strong>: {e(demo_note)}</p>' if demo_note else "")
    card_html = "".join(_card(c, alert_level(alerts, c.device.index)) for c in cards(devices, fresh))
    config = json.dumps({"interval_s": interval_s, "history_s": min(history_s, 300.0), "charts": [
        {"id": cid, "title": title, "unit": unit, "series": [{"metric": m, "filter": f, "label": label}
                                                             for m, f, label in series]}
        for cid, title, unit, series in CHARTS], "owner_metrics": OWNER_METRICS, "writes": writes[0],
        "mig_columns": [m for m, _ in MIG_COLUMNS]})
    form = _silence_form() if writes[0] else f'<p class="note">Silences are read-only here: {e(writes[1])}</p>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gpumon console</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/vendor/uplot/uPlot.min.css?v={e(__version__)}">
<link rel="stylesheet" href="/static/console.css?v={e(__version__)}">
<script src="/static/vendor/uplot/uPlot.iife.min.js?v={e(__version__)}" defer></script>
<script src="/static/console.js?v={e(__version__)}" defer></script>
</head>
<body>
<header><h1>gpumon {e(__version__)}</h1>
<nav aria-label="endpoints"><a href="/metrics">Metrics</a> <a href="/api/v1/alerts">Alerts JSON</a>
<a href="/api/v1/rules">Rules</a> <a href="/-/ready">Readiness</a> <a href="/api/v1/silences">Silences JSON</a></nav>
</header>
{banner}
<main id="console" data-config="{e(config)}">
<p class="note">Backend <strong>{e(backend)}</strong>; charts show the last {min(history_s, 300.0):.0f} s, refreshed
every {interval_s:g} s<noscript> (they need JavaScript; the figures below are as of this page's load)</noscript>.</p>
<section aria-labelledby="gpus-title"><h2 id="gpus-title">GPUs</h2>
<div class="cards">{card_html or '<p>No GPU.</p>'}</div></section>
<section aria-labelledby="alerts-title"><h2 id="alerts-title">Alerts</h2>
<table id="alerts"><thead><tr><th scope="col">Alert</th><th scope="col">State</th><th scope="col">GPU</th>
<th scope="col">Summary</th><th scope="col">Since</th><th scope="col"><span class="sr-only">Action</span></th></tr>
</thead><tbody>{"".join(_alert_row(a) for a in alerts) or _empty_row(6, "No alert is pending or firing.")}</tbody>
</table></section>
<section aria-labelledby="silences-title"><h2 id="silences-title">Silences</h2>
<table id="silences"><thead><tr><th scope="col">Matchers</th><th scope="col">Until</th><th scope="col">Comment</th>
<th scope="col">By</th><th scope="col">State</th><th scope="col"><span class="sr-only">Action</span></th></tr></thead>
<tbody>{"".join(_silence_row(s) for s in silences) or _empty_row(6, "No silence.")}</tbody></table>
{form}
</section>
</main>
</body></html>
"""


def _card(card: GpuCard, level: str) -> str:
    e = html.escape
    d = card.device
    figures = "".join(
        f'<div><dt>{e(label)}</dt><dd data-metric="{e(m)}">{e(shown(m, card.values.get(m)))}</dd></div>'
        for _, _, _, series in CHARTS for m, _, label in series)
    charts = "".join(f'<figure class="chart" data-chart="{cid}" aria-label="{e(title)}, GPU {d.index}">'
                     f"<figcaption>{e(title)}</figcaption></figure>" for cid, title, _, _ in CHARTS)
    owners = ", ".join(e(o) for o in card.owners) or "nobody"
    checks = "".join(f'<li class="{v}">{e(c)}: {v}</li>' for c, v in card.checks)
    idle = "" if not card.idle_streak_s else f"held idle for {idle_for(card.idle_streak_s)}"
    mig = "".join(f'<tr data-instance="{e(gi)}"><th scope="row">{e(gi)} {e(row["profile"])}</th>'
                  + "".join(f"<td>{e(shown(m, row.get(m)))}</td>" for m, _ in MIG_COLUMNS) + "</tr>"
                  for gi, row in sorted(card.mig.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0))
    hidden = "" if mig else " hidden"
    heads = "".join(f'<th scope="col">{e(h)}</th>' for _, h in MIG_COLUMNS)
    return f"""<article class="card {level}" data-gpu="{d.index}" aria-labelledby="gpu{d.index}-title">
<h3 id="gpu{d.index}-title">GPU {d.index} · {e(d.name)}</h3>
<p class="uuid"><code>{e(d.uuid)}</code> · {e(d.pci_bus_id)}</p>
<p class="owner">Held by: <span data-field="owners">{owners}</span></p>
<p class="idle" data-field="idle">{e(idle)}</p>
<dl class="figures">{figures}</dl>
<p class="waste" data-field="waste"></p>
<ul class="checks" data-field="checks" aria-label="doctor checks not ok">{checks}</ul>
<table class="mig" data-field="mig"{hidden}><caption>MIG instances</caption>
<thead><tr><th scope="col">GPU instance</th>{heads}</tr></thead><tbody>{mig}</tbody></table>
<figure class="chart" data-chart="mig" aria-label="SM activity by MIG instance, GPU {d.index}"{hidden}>
<figcaption>SM activity by MIG instance</figcaption></figure>
<div class="charts">{charts}</div>
</article>"""


def idle_for(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _alert_row(a: dict[str, Any]) -> str:
    e = html.escape
    labels, notes = a.get("labels", {}), a.get("annotations", {})
    matchers = json.dumps([f'{k}="{v}"' for k, v in sorted(labels.items()) if k in ("alertname", "gpu", "uuid")])
    return (f'<tr class="{e(a.get("state", ""))}"><td>{e(labels.get("alertname", ""))}</td>'
            f'<td>{e(a.get("state", ""))} {e(labels.get("severity", ""))}</td><td>{e(labels.get("gpu", "-"))}</td>'
            f'<td>{e(notes.get("summary", ""))}<div class="description">{e(notes.get("description", ""))}</div></td>'
            f'<td>{e(a.get("activeAt", ""))}</td>'
            f'<td><button type="button" class="silence-from" data-matchers="{e(matchers)}">Silence…</button></td></tr>')


def _silence_row(s: dict[str, Any]) -> str:
    e = html.escape
    state = s.get("status", {}).get("state", "")
    action = (f'<button type="button" class="expire" data-id="{e(s.get("id", ""))}">Expire</button>'
              if state != "expired" else "")
    return (f'<tr class="{e(state)}"><td><code>{e(", ".join(s.get("matchers", [])))}</code></td>'
            f'<td>{e(s.get("endsAt", ""))}</td><td>{e(s.get("comment", ""))}</td><td>{e(s.get("createdBy", ""))}</td>'
            f"<td>{e(state)}</td><td>{action}</td></tr>")


def _empty_row(columns: int, text: str) -> str:
    return f'<tr class="empty"><td colspan="{columns}">{html.escape(text)}</td></tr>'


def _silence_form() -> str:
    return """<form id="silence-form" class="silence-form">
<h3>New silence</h3>
<noscript><p class="note">Creating a silence needs JavaScript (it is sent as JSON).</p></noscript>
<label for="silence-matchers">Matchers, one per line</label>
<textarea id="silence-matchers" name="matchers" rows="3" required
 placeholder='alertname="GpuHeldIdle"&#10;gpu="0"'></textarea>
<label for="silence-duration">For</label>
<input id="silence-duration" name="duration" value="2h" required pattern="([0-9]+(ms|s|m|h|d|w|y))+">
<label for="silence-comment">Comment</label>
<input id="silence-comment" name="comment" required>
<label for="silence-author">Author</label>
<input id="silence-author" name="createdBy" autocomplete="name">
<button type="submit">Create silence</button>
<p id="silence-result" role="status" aria-live="polite"></p>
</form>"""
