// gpumon console: draws each GPU card's charts from the query API (/api/v1/query) and refreshes the
// figures, owners, doctor checks, alerts and silences every poll. No framework and no build step: the
// page served by gpumon (gpumon/console/page.py) is complete without this script; this makes it live.
"use strict";

(() => {
  const root = document.getElementById("console");
  if (!root || typeof uPlot === "undefined") return;
  const config = JSON.parse(root.dataset.config);
  const intervalMs = Math.max(250, config.interval_s * 1000);
  const historyS = config.history_s;
  const metrics = [...new Set(config.charts.flatMap((c) => c.series.map((s) => s.metric)))];
  const migMetrics = config.mig_columns;
  const history = new Map(); // gpu -> series key -> {t: [], v: []}
  const migHistory = new Map(); // gpu -> GPU instance -> {profile, metric -> {t: [], v: []}}
  const plots = new Map(); // figure element -> uPlot
  let lastT = 0;
  let tick = 0;
  const status = document.createElement("p");
  status.className = "status";
  status.setAttribute("role", "status");
  root.prepend(status);

  // --- the query API ------------------------------------------------------------------------------

  async function api(path, options) {
    const response = await fetch(path, Object.assign({ credentials: "same-origin", cache: "no-store" }, options));
    const body = await response.json().catch(() => ({ status: "error", error: response.statusText }));
    if (!response.ok || body.status !== "success") throw new Error(body.error || response.statusText);
    return body.data;
  }

  async function query(expr) {
    return (await api("/api/v1/query?" + new URLSearchParams({ query: expr }))).result;
  }

  const keyOf = (metric, labels) => {
    const series = config.charts.flatMap((c) => c.series).find((s) =>
      s.metric === metric && Object.entries(s.filter).every(([k, v]) => labels[k] === v));
    return series ? metric + JSON.stringify(series.filter) : null;
  };

  // Raw points since the last refresh (the whole history the first time), merged into `history`. The
  // span comes from the browser's clock, which may be off the server's: at least 2 s, at most the history.
  async function refreshHistory() {
    const now = Date.now() / 1000;
    const span = lastT ? Math.max(2, Math.min(historyS, Math.ceil(now - lastT) + 2)) : historyS;
    const result = await query(`{__name__=~"${[...metrics, ...migMetrics].join("|")}"}[${span}s]`);
    const seenInstances = new Map(); // gpu -> GPU instances in this answer (MIG reconfigures)
    for (const series of result) {
      const labels = series.metric;
      if (labels.gpu === undefined) continue;
      let h;
      if (labels.gpu_instance !== undefined) {
        if (!migHistory.has(labels.gpu)) migHistory.set(labels.gpu, new Map());
        const instances = migHistory.get(labels.gpu);
        if (!instances.has(labels.gpu_instance)) instances.set(labels.gpu_instance, { profile: labels.mig_profile || "" });
        const instance = instances.get(labels.gpu_instance);
        if (!instance[labels.__name__]) instance[labels.__name__] = { t: [], v: [] };
        h = instance[labels.__name__];
        if (!seenInstances.has(labels.gpu)) seenInstances.set(labels.gpu, new Set());
        seenInstances.get(labels.gpu).add(labels.gpu_instance);
      } else {
        const key = keyOf(labels.__name__, labels);
        if (key === null) continue;
        if (!history.has(labels.gpu)) history.set(labels.gpu, new Map());
        const byKey = history.get(labels.gpu);
        if (!byKey.has(key)) byKey.set(key, { t: [], v: [] });
        h = byKey.get(key);
      }
      for (const [t, v] of series.values) {
        if (h.t.length && t <= h.t[h.t.length - 1]) continue;
        h.t.push(t);
        h.v.push(Number(v));
        lastT = Math.max(lastT, t);
      }
    }
    // Every series, answered this time or not (a GPU gone), keeps the history's window up to the newest
    // point the server gave (its clock, not the browser's); a series left empty goes.
    const keepFrom = lastT - historyS;
    const trim = (h) => {
      while (h.t.length && h.t[0] < keepFrom) {
        h.t.shift();
        h.v.shift();
      }
      return h.t.length > 0;
    };
    for (const byKey of history.values()) {
      for (const [key, h] of byKey) if (!trim(h)) byKey.delete(key);
    }
    for (const [gpu, instances] of migHistory) {
      for (const [gi, instance] of instances) {
        const kept = migMetrics.filter((m) => instance[m] && trim(instance[m]));
        if (!kept.length && !seenInstances.get(gpu)?.has(gi)) instances.delete(gi);
      }
    }
  }

  // --- charts ---------------------------------------------------------------------------------------

  function format(unit, v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    if (unit === "ratio") return `${Math.round(v * 100)}%`;
    if (unit === "bytes" || unit === "bytes_per_second") {
      let x = v;
      for (const u of ["B", "KiB", "MiB", "GiB", "TiB"]) {
        if (Math.abs(x) < 1024 || u === "TiB") {
          const text = u === "B" ? `${Math.round(x)} ${u}` : `${x.toFixed(1)} ${u}`;
          return unit === "bytes" ? text : `${text}/s`;
        }
        x /= 1024;
      }
    }
    if (unit === "watts") return `${Math.round(v)} W`;
    if (unit === "celsius") return `${Math.round(v)} °C`;
    if (unit === "count") return String(Math.round(v));
    return String(v);
  }

  // The chart's x axis is every time any of its series has a point (a GPU without GPM has util.gpu and
  // no SM activity); each series is held at its latest point at or before each time, for one second
  // (static facts such as the limit are stamped a little after the round's values).
  function aligned(chart, byKey) {
    const series = chart.series.map((s) => byKey.get(s.metric + JSON.stringify(s.filter)));
    const xs = [...new Set(series.flatMap((h) => (h ? h.t : [])))].sort((a, b) => a - b);
    const columns = series.map((h) => {
      if (!h) return xs.map(() => null);
      let j = 0;
      return xs.map((x) => {
        while (j + 1 < h.t.length && h.t[j + 1] <= x) j++;
        return h.t.length && h.t[j] <= x && x - h.t[j] <= 1 + config.interval_s ? h.v[j] : null;
      });
    });
    return [xs, ...columns];
  }

  const COLOURS = ["#2563eb", "#d97706"];

  function draw(card) {
    const byKey = history.get(card.dataset.gpu) || new Map();
    drawMig(card);
    for (const figure of card.querySelectorAll("figure[data-chart]:not([data-chart='mig'])")) {
      const chart = config.charts.find((c) => c.id === figure.dataset.chart);
      const data = aligned(chart, byKey);
      let plot = plots.get(figure);
      if (!plot) {
        const width = Math.max(200, figure.clientWidth || 280);
        plot = new uPlot({
          width, height: 110, legend: { show: true, live: false },
          cursor: { show: false },
          scales: { x: { time: true }, y: chart.unit === "ratio" ? { range: [0, 1] } : { auto: true } },
          axes: [{ size: 28 }, { size: 76, values: (u, ticks) => ticks.map((v) => format(chart.unit, v)) }],
          series: [{}, ...chart.series.map((s, i) => ({ label: s.label, stroke: COLOURS[i], width: 1.5 }))],
        }, data, figure);
        plots.set(figure, plot);
      } else {
        plot.setData(data);
      }
      const last = data.slice(1).map((col) => (col.length ? col[col.length - 1] : null));
      figure.dataset.points = String(data[0].length);
      figure.dataset.lastT = data[0].length ? String(data[0][data[0].length - 1]) : "";
      figure.dataset.last = JSON.stringify(last);
      chart.series.forEach((s, i) => {
        const dd = card.querySelector(`dd[data-metric="${s.metric}"]`);
        if (dd) dd.textContent = format(chart.unit, last[i]);
      });
    }
  }

  // A GPU split into MIG instances: a row of figures per GPU instance and one chart of their SM activity.
  function drawMig(card) {
    const instances = migHistory.get(card.dataset.gpu) || new Map();
    const table = card.querySelector('[data-field="mig"]');
    const figure = card.querySelector("figure[data-chart='mig']");
    const ids = [...instances.keys()].sort((a, b) => Number(a) - Number(b));
    table.hidden = figure.hidden = ids.length === 0;
    const lastOf = (h) => (h && h.v.length ? h.v[h.v.length - 1] : null);
    const units = { gpumon_mig_sm_active_ratio: "ratio", gpumon_mig_memory_used_bytes: "bytes",
      gpumon_mig_memory_total_bytes: "bytes", gpumon_mig_compute_processes: "count" };
    // The table lists the instances there now; the chart keeps those of the last minutes too.
    const lastSeen = (gi) => Math.max(...migMetrics.map((m) => {
      const h = instances.get(gi)[m];
      return h && h.t.length ? h.t[h.t.length - 1] : 0;
    }));
    const newest = Math.max(...ids.map(lastSeen));
    const current = ids.filter((gi) => lastSeen(gi) >= newest - 3 * config.interval_s);
    table.tBodies[0].replaceChildren(...current.map((gi) => {
      const instance = instances.get(gi);
      const row = document.createElement("tr");
      row.dataset.instance = gi;
      const head = document.createElement("th");
      head.scope = "row";
      head.textContent = `${gi} ${instance.profile}`;
      row.append(head);
      for (const m of migMetrics) cell(row, format(units[m], lastOf(instance[m])));
      return row;
    }));
    if (!ids.length) return;
    const sm = ids.map((gi) => instances.get(gi).gpumon_mig_sm_active_ratio || { t: [], v: [] });
    const xs = [...new Set(sm.flatMap((h) => h.t))].sort((a, b) => a - b);
    const data = [xs, ...sm.map((h) => {
      let j = 0;
      return xs.map((x) => {
        while (j + 1 < h.t.length && h.t[j + 1] <= x) j++;
        return h.t.length && h.t[j] <= x ? h.v[j] : null;
      });
    })];
    let plot = plots.get(figure);
    if (plot && plot.series.length - 1 !== ids.length) {
      plot.destroy();
      plot = undefined;
    }
    if (!plot) {
      plot = new uPlot({
        width: Math.max(200, figure.clientWidth || 280), height: 110, cursor: { show: false },
        scales: { x: { time: true }, y: { range: [0, 1] } },
        axes: [{ size: 28 }, { size: 76, values: (u, ticks) => ticks.map((v) => format("ratio", v)) }],
        series: [{}, ...ids.map((gi, i) => ({ label: `${gi} ${instances.get(gi).profile}`,
          stroke: MIG_COLOURS[i % MIG_COLOURS.length], width: 1.5 }))],
      }, data, figure);
      plots.set(figure, plot);
    } else {
      plot.setData(data);
    }
    figure.dataset.instances = JSON.stringify(ids);
    figure.dataset.points = String(xs.length);
  }

  const MIG_COLOURS = ["#2563eb", "#d97706", "#059669", "#7c3aed", "#db2777", "#0891b2", "#65a30d"];

  // --- owners, doctor checks ---------------------------------------------------------------------------

  function ownerText(labels) {
    const who = labels.user ? ` (${labels.user})` : "";
    if (labels.__name__ === "gpumon_gpu_owner_info") return `pod ${labels.owner_namespace}/${labels.owner_pod}`;
    if (labels.__name__ === "gpumon_gpu_job_info") return `job ${labels.job_id}${who}`;
    return `${labels.name || "pid"} ${labels.pid || ""}`.trim() + who;
  }

  // Accounting's idle share of held time over the history the console shows (docs/accounting.md).
  const wasteWindow = `${Math.round(historyS / 60)}m`;
  const WASTE = `sum by (gpu) (increase(gpumon_gpu_seconds_total{state="idle_held"}[${wasteWindow}]))`
    + ` / sum by (gpu) (increase(gpumon_gpu_seconds_total{state=~"active|idle_held"}[${wasteWindow}]))`;

  async function refreshOwnersAndChecks() {
    const [owners, checks, idle, waste] = await Promise.all([
      query(`{__name__=~"${config.owner_metrics.join("|")}"}`),
      query("gpumon_health_check_status >= 1"),
      query("gpumon_gpu_idle_held_streak_seconds"),
      query(WASTE),
    ]);
    for (const card of root.querySelectorAll("article.card")) {
      const gpu = card.dataset.gpu;
      const mine = owners.filter((s) => s.metric.gpu === gpu).map((s) => ownerText(s.metric));
      card.querySelector('[data-field="owners"]').textContent = [...new Set(mine)].sort().join(", ") || "nobody";
      const list = card.querySelector('[data-field="checks"]');
      list.replaceChildren(...checks.filter((s) => s.metric.gpu === gpu).map((s) => {
        const li = document.createElement("li");
        const verdict = Number(s.value[1]) >= 2 ? "fail" : "warn";
        li.className = verdict;
        li.textContent = `${s.metric.check}: ${verdict}`;
        return li;
      }));
      const share = waste.find((s) => s.metric.gpu === gpu);
      card.querySelector('[data-field="waste"]').textContent = share && !Number.isNaN(Number(share.value[1]))
        ? `held idle ${format("ratio", Number(share.value[1]))} of the time held (last ${wasteWindow})` : "";
      const streak = idle.find((s) => s.metric.gpu === gpu);
      const seconds = streak ? Number(streak.value[1]) : 0;
      card.querySelector('[data-field="idle"]').textContent = seconds > 0 ? `held idle for ${idleFor(seconds)}` : "";
    }
  }

  function idleFor(seconds) {
    return seconds < 120 ? `${Math.round(seconds)} s` : `${Math.round(seconds / 60)} min`;
  }

  // --- alerts and silences -----------------------------------------------------------------------------

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.append(td);
    return td;
  }

  function button(text, className, data) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = className;
    b.textContent = text;
    Object.assign(b.dataset, data);
    return b;
  }

  function emptyRow(text) {
    const row = document.createElement("tr");
    row.className = "empty";
    const td = cell(row, text);
    td.colSpan = 6;
    return row;
  }

  // Replace a table's rows only when what it shows changed, and give the focus back to the same button:
  // a keyboard user on "Silence…" or "Expire" must not lose their place at every poll.
  const shownRows = new Map();
  function replaceRows(tbody, signature, rows) {
    if (shownRows.get(tbody) === signature) return;
    shownRows.set(tbody, signature);
    const focused = tbody.contains(document.activeElement) ? document.activeElement : null;
    tbody.replaceChildren(...rows);
    if (focused) {
      const again = [...tbody.querySelectorAll("button")].find((b) =>
        b.className === focused.className && JSON.stringify(b.dataset) === JSON.stringify(focused.dataset));
      if (again) again.focus();
    }
  }

  async function refreshAlerts() {
    const { alerts } = await api("/api/v1/alerts");
    const rows = alerts.map((a) => {
      const row = document.createElement("tr");
      row.className = a.state;
      cell(row, a.labels.alertname || "");
      cell(row, `${a.state} ${a.labels.severity || ""}`.trim());
      cell(row, a.labels.gpu || "-");
      const summary = cell(row, (a.annotations && a.annotations.summary) || "");
      const description = document.createElement("div");
      description.className = "description";
      description.textContent = (a.annotations && a.annotations.description) || "";
      summary.append(description);
      cell(row, a.activeAt || "");
      const matchers = Object.entries(a.labels).filter(([k]) => ["alertname", "gpu", "uuid"].includes(k))
        .sort().map(([k, v]) => `${k}="${v}"`);
      cell(row, "").append(button("Silence…", "silence-from", { matchers: JSON.stringify(matchers) }));
      return row;
    });
    replaceRows(document.querySelector("#alerts tbody"),
      JSON.stringify(alerts.map((a) => [a.labels, a.state, a.annotations, a.activeAt])),
      rows.length ? rows : [emptyRow("No alert is pending or firing.")]);
    for (const card of root.querySelectorAll("article.card")) {
      const mine = alerts.filter((a) => a.labels.gpu === card.dataset.gpu);
      const critical = mine.some((a) => a.state === "firing" && ["critical", "page"].includes(a.labels.severity));
      card.classList.toggle("firing-critical", critical);
      card.classList.toggle("alerting", !critical && mine.length > 0);
    }
  }

  async function refreshSilences() {
    const silences = await api("/api/v1/silences");
    const rows = silences.filter((s) => s.status.state !== "expired").map((s) => {
      const row = document.createElement("tr");
      row.className = s.status.state;
      const code = document.createElement("code");
      code.textContent = s.matchers.join(", ");
      cell(row, "").append(code);
      cell(row, s.endsAt);
      cell(row, s.comment);
      cell(row, s.createdBy || "");
      cell(row, s.status.state);
      cell(row, "").append(button("Expire", "expire", { id: s.id }));
      return row;
    });
    replaceRows(document.querySelector("#silences tbody"), JSON.stringify(silences),
      rows.length ? rows : [emptyRow("No silence.")]);
  }

  const form = document.getElementById("silence-form");
  const result = document.getElementById("silence-result");
  if (form) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const fields = new FormData(form);
      const body = {
        matchers: String(fields.get("matchers")).split("\n").map((m) => m.trim()).filter(Boolean),
        duration: fields.get("duration"), comment: fields.get("comment"), createdBy: fields.get("createdBy"),
      };
      try {
        const silence = await api("/api/v1/silences", {
          method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
        });
        result.textContent = `Silence ${silence.id} created, until ${silence.endsAt}.`;
        form.reset();
        await refreshSilences();
      } catch (error) {
        result.textContent = `Not created: ${error.message}`;
      }
    });
  }

  document.addEventListener("click", async (event) => {
    const target = event.target;
    if (!(target instanceof HTMLButtonElement)) return;
    if (target.classList.contains("silence-from") && form) {
      form.elements.matchers.value = JSON.parse(target.dataset.matchers).join("\n");
      form.elements.comment.focus();
    } else if (target.classList.contains("expire")) {
      try {
        await api(`/api/v1/silences/${encodeURIComponent(target.dataset.id)}`, { method: "DELETE" });
        await refreshSilences();
      } catch (error) {
        status.textContent = `Silence not expired: ${error.message}`;
      }
    }
  });

  // --- the loop ------------------------------------------------------------------------------------

  // Each part on its own: charts that cannot load must not stop the alerts from refreshing.
  async function refresh() {
    const parts = [async () => {
      await refreshHistory();
      for (const card of root.querySelectorAll("article.card")) draw(card);
    }, refreshAlerts];
    if (tick % 5 === 0) parts.push(refreshOwnersAndChecks, refreshSilences);
    const failed = (await Promise.allSettled(parts.map((part) => part()))).filter((r) => r.status === "rejected");
    status.textContent = failed.length ? `Could not refresh: ${failed[0].reason.message}` : "";
    root.dataset.refreshed = String(++tick);
    setTimeout(refresh, intervalMs);
  }

  window.addEventListener("resize", () => {
    for (const [figure, plot] of plots) plot.setSize({ width: Math.max(200, figure.clientWidth), height: 110 });
  });
  refresh();
})();
