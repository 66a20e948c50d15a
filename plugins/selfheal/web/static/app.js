// Self-Healing page: triage queue, finding history, patches, exposure charts.
//
// Security rule of this file: data from the API (scanner output is attacker-controlled) only ever
// reaches the DOM as text: textContent / Text nodes / attribute values set with setAttribute on
// inert attributes (title, class, data-*). No innerHTML, no HTML strings, no URLs built from data
// (a scanner's "URL" is shown as text, never as a link). The page's CSP also enforces Trusted Types,
// so an HTML sink would throw instead of rendering.
"use strict";

(() => {
  const SEVERITIES = ["critical", "high", "medium", "low", "info"];
  const ACTIVE = ["new", "open", "mitigated", "patching", "reopened"];
  const STATUSES = ["new", "open", "mitigated", "patching", "resolved", "accepted", "false_positive", "reopened"];
  const PATCH_STATES = ["planned", "verifying", "verified", "failed", "awaiting_approval", "deploying", "promoted", "rolled_back"];
  const SVGNS = "http://www.w3.org/2000/svg";

  const state = {
    tab: "queue",
    q: "", service: "", severity: new Set(), status: "active", ssvc: "",
    sort: "priority", order: "desc", limit: 50, offset: 0,
    selected: null,
    patchState: "", patchService: "", patchOffset: 0,
    days: 30,
  };
  let queueSeq = 0;  // drop responses that arrive after a newer request

  // ------------------------------------------------------------------ DOM helpers (text only)

  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    setProps(el, props);
    append(el, children);
    return el;
  }

  function s(tag, props, ...children) {
    const el = document.createElementNS(SVGNS, tag);
    setProps(el, props);
    append(el, children);
    return el;
  }

  function setProps(el, props) {
    if (!props) return;
    for (const [k, v] of Object.entries(props)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") el.textContent = String(v);
      else if (k === "class") el.setAttribute("class", v);
      else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
  }

  function append(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  }

  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }
  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------ formatting

  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    return d.toISOString().slice(0, 16).replace("T", " ") + "Z";
  }

  function fmtDur(sec) {
    if (sec === null || sec === undefined || Number.isNaN(sec)) return "—";
    sec = Math.max(0, Math.round(sec));
    const d = Math.floor(sec / 86400), hh = Math.floor((sec % 86400) / 3600), m = Math.floor((sec % 3600) / 60);
    if (d) return `${d}d ${hh}h`;
    if (hh) return `${hh}h ${m}m`;
    if (m) return `${m}m ${sec % 60}s`;
    return `${sec}s`;
  }

  const fmtNum = (v, digits = 1) => (v === null || v === undefined ? "—" : Number(v).toFixed(digits));
  const fmtPct = (v) => (v === null || v === undefined ? "—" : `${(Number(v) * 100).toFixed(1)}%`);

  function badge(kind, value) {
    if (!value) return h("span", { class: "muted", text: "—" });
    return h("span", { class: `badge ${kind}-${String(value).replace(/[^a-z_]/gi, "")}`, text: String(value).replace("_", " ") });
  }

  function cveList(cves) {
    cves = cves || [];
    return cves.length > 3 ? `${cves.slice(0, 3).join(" ")} +${cves.length - 3} more` : cves.join(" ");
  }

  function whereOf(f) {
    if (f.package_name) {
      const fixed = f.fixed_version ? ` → ${f.fixed_version}` : "";
      return `${f.package_name}@${f.package_version || "?"}${fixed}`;
    }
    if (f.path) return `${f.method ? f.method + " " : ""}${f.path}${f.param ? ` [${f.param}]` : ""}`;
    if (f.file_path) return f.file_path;
    if (f.host) return `${f.host}${f.port ? ":" + f.port : ""}`;
    return "";
  }

  // ------------------------------------------------------------------ API

  class AuthError extends Error {}

  async function api(path, params) {
    const url = new URL(`api/v1/${path}`, document.baseURI);
    for (const [k, v] of Object.entries(params || {})) {
      if (Array.isArray(v)) v.forEach((x) => url.searchParams.append(k, x));
      else if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
    }
    const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (r.status === 401 || r.status === 403) throw new AuthError("not logged in");
    if (!r.ok) {
      let detail = `${r.status} ${r.statusText}`;
      try { detail = (await r.json()).detail || detail; } catch (_e) { /* not JSON */ }
      throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
    }
    return r.json();
  }

  function showError(err) {
    const box = clear($("error"));
    if (err instanceof AuthError) {
      append(box, ["Your Airflow session has ended. ",
        h("a", { href: "./", target: "_top", text: "Log in again" })]);
    } else {
      box.textContent = `Could not load data: ${err && err.message ? err.message : err}`;
    }
    box.hidden = false;
  }

  function clearError() { $("error").hidden = true; }

  async function guarded(fn) {
    try { await fn(); clearError(); } catch (e) { showError(e); }
  }

  // ------------------------------------------------------------------ overview + facets

  async function loadOverview() {
    const o = await api("overview");
    const cards = clear($("overview"));
    const card = (n, label, cls) => h("div", { class: `card ${cls || ""}` }, h("span", { class: "n", text: n }), h("span", { class: "l", text: label }));
    cards.append(card(o.active_total, "active findings"));
    for (const sev of ["critical", "high"]) cards.append(card(o.active_by_severity[sev] || 0, `active ${sev}`, `sev-${sev}`));
    cards.append(card(o.unmitigated_active, "unmitigated"));
    cards.append(card(o.sla_overdue, "SLA overdue", o.sla_overdue ? "overdue" : ""));
    cards.append(card(o.patches_by_state.promoted || 0, "patches promoted", "ok"));
    cards.append(card(o.patches_by_state.rolled_back || 0, "rolled back", o.patches_by_state.rolled_back ? "bad" : ""));
  }

  async function loadFacets() {
    const f = await api("facets");
    const svc = $("f-service"), psvc = $("p-service"), ssvc = $("f-ssvc");
    for (const sel of [svc, psvc]) {
      clear(sel).append(h("option", { value: "", text: "all" }));
      for (const [name, n] of Object.entries(f.service).sort()) sel.append(h("option", { value: name, text: `${name} (${n})` }));
    }
    clear(ssvc).append(h("option", { value: "", text: "all" }));
    for (const d of ["Act", "Attend", "Track*", "Track"]) {
      if (f.ssvc[d] !== undefined) ssvc.append(h("option", { value: d, text: `${d} (${f.ssvc[d]})` }));
    }
    for (const [d, n] of Object.entries(f.ssvc)) {
      if (!["Act", "Attend", "Track*", "Track"].includes(d)) ssvc.append(h("option", { value: d, text: `${d} (${n})` }));
    }
    const sev = $("f-severity");
    for (const cb of sev.querySelectorAll("span.count")) cb.textContent = "";
    for (const s of SEVERITIES) {
      const c = sev.querySelector(`span.count[data-sev="${s}"]`);
      if (c) c.textContent = ` ${f.severity[s] || 0}`;
    }
  }

  function buildFilters() {
    const sev = $("f-severity");
    for (const s of SEVERITIES) {
      const cb = h("input", { type: "checkbox", value: s, name: "severity" });
      cb.addEventListener("change", () => {
        if (cb.checked) state.severity.add(s); else state.severity.delete(s);
        state.offset = 0; loadQueue();
      });
      sev.append(h("label", { class: `sev-${s}` }, cb, s, h("span", { class: "count muted", "data-sev": s })));
    }
    const st = $("f-status");
    st.append(h("option", { value: "active", text: "active", title: ACTIVE.join(", ") }));
    st.append(h("option", { value: "", text: "all" }));
    for (const x of STATUSES) st.append(h("option", { value: x, text: x.replace("_", " ") }));
    const ps = $("p-state");
    for (const x of PATCH_STATES) ps.append(h("option", { value: x, text: x.replace("_", " ") }));

    let debounce = null;
    $("f-q").addEventListener("input", () => {
      clearTimeout(debounce);
      debounce = setTimeout(() => { state.q = $("f-q").value; state.offset = 0; loadQueue(); }, 250);
    });
    const bind = (id, key, reload) => $(id).addEventListener("change", () => {
      state[key] = key === "limit" ? Number($(id).value) : $(id).value;
      reload();
    });
    bind("f-service", "service", () => { state.offset = 0; loadQueue(); });
    bind("f-status", "status", () => { state.offset = 0; loadQueue(); });
    bind("f-ssvc", "ssvc", () => { state.offset = 0; loadQueue(); });
    bind("f-limit", "limit", () => { state.offset = 0; loadQueue(); });
    bind("p-state", "patchState", () => { state.patchOffset = 0; loadPatches(); });
    bind("p-service", "patchService", () => { state.patchOffset = 0; loadPatches(); });
    bind("c-range", "days", () => loadCharts());
    for (const form of ["filters", "patch-filters", "chart-filters"]) $(form).addEventListener("submit", (e) => e.preventDefault());
  }

  // ------------------------------------------------------------------ triage queue

  const COLUMNS = [
    { key: "priority", label: "Priority", sort: "priority", num: true },
    { key: "severity", label: "Severity", sort: "severity" },
    { key: "title", label: "Finding", sort: "title" },
    { key: "service", label: "Service", sort: "service" },
    { key: "status", label: "Status", sort: "status" },
    { key: "ssvc", label: "SSVC", sort: "ssvc" },
    { key: "cvss", label: "CVSS", sort: "cvss", num: true },
    { key: "epss", label: "EPSS", sort: "epss", num: true },
    { key: "first_seen", label: "First seen", sort: "first_seen" },
    { key: "exposure", label: "Exposure", num: true },
  ];

  function buildHead() {
    const tr = clear($("queue-head"));
    for (const c of COLUMNS) {
      const th = h("th", { scope: "col", class: c.num ? "num" : null, "data-col": c.key });
      if (c.sort) {
        th.append(h("button", {
          type: "button", text: c.label, title: `Sort by ${c.label.toLowerCase()}`,
          onclick: () => {
            if (state.sort === c.sort) state.order = state.order === "desc" ? "asc" : "desc";
            else { state.sort = c.sort; state.order = ["title", "service", "status"].includes(c.sort) ? "asc" : "desc"; }
            state.offset = 0; loadQueue();
          },
        }));
      } else th.textContent = c.label;
      tr.append(th);
    }
  }

  function markSort() {
    for (const th of $("queue-head").children) {
      const c = COLUMNS.find((x) => x.key === th.dataset.col);
      if (c && c.sort === state.sort) th.setAttribute("aria-sort", state.order === "asc" ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    }
  }

  function queueParams() {
    const status = state.status === "active" ? ACTIVE : state.status ? [state.status] : [];
    return {
      q: state.q.trim(), service: state.service ? [state.service] : [], severity: [...state.severity],
      status, ssvc: state.ssvc ? [state.ssvc] : [], sort: state.sort, order: state.order,
      limit: state.limit, offset: state.offset,
    };
  }

  function pager(el, page, onMove) {
    clear(el);
    const first = page.total ? page.offset + 1 : 0;
    const last = Math.min(page.offset + page.items.length, page.total);
    const prev = h("button", { type: "button", text: "‹ Prev", disabled: page.offset <= 0 });
    const next = h("button", { type: "button", text: "Next ›", disabled: page.offset + page.limit >= page.total });
    prev.addEventListener("click", () => onMove(Math.max(0, page.offset - page.limit)));
    next.addEventListener("click", () => onMove(page.offset + page.limit));
    el.append(prev, h("span", { class: "range", text: `${first}–${last} of ${page.total}` }), next);
  }

  async function loadQueue() {
    const seq = ++queueSeq;
    const body = $("queue-body");
    body.setAttribute("aria-busy", "true");
    await guarded(async () => {
      const page = await api("findings", queueParams());
      if (seq !== queueSeq) return;
      markSort();
      clear(body);
      if (!page.items.length) body.append(h("tr", {}, h("td", { colspan: COLUMNS.length, class: "empty", text: "No findings match these filters." })));
      for (const f of page.items) body.append(queueRow(f));
      pager($("queue-pager"), page, (off) => { state.offset = off; loadQueue(); });
      $("queue").dataset.total = String(page.total);
    });
    if (seq === queueSeq) body.removeAttribute("aria-busy");
  }

  function queueRow(f) {
    const tr = h("tr", { class: `row${state.selected === f.id ? " selected" : ""}`, tabindex: "0", "data-id": f.id, "data-severity": f.severity, "data-status": f.status });
    const open = () => openFinding(f.id);
    tr.addEventListener("click", open);
    tr.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); } });
    const loc = whereOf(f);
    tr.append(
      h("td", { class: "num", text: fmtNum(f.priority) }),
      h("td", {}, badge("sev", f.severity)),
      h("td", { class: "title-cell" }, h("span", { class: "ftitle", text: f.title }),
        h("span", { class: "sub", text: [(f.cves || []).includes(f.rule_id) ? "" : f.rule_id, f.cwe ? `CWE-${f.cwe}` : "", cveList(f.cves), loc].filter(Boolean).join(" · ") })),
      h("td", { text: f.service || "—" }),
      h("td", {}, badge("st", f.status), f.sla_overdue ? h("span", { class: "sub overdue", text: "SLA overdue" }) : null),
      h("td", { text: f.ssvc_decision || "—" }),
      h("td", { class: "num", text: fmtNum(f.cvss_score) }),
      h("td", { class: "num" }, fmtPct(f.epss), f.kev ? h("span", { class: "sub kev", text: "KEV" }) : null),
      h("td", { text: fmtTime(f.first_seen) }),
      h("td", { class: "num", title: f.exposure_end ? "closed" : "still exposed" }, fmtDur(f.exposure_seconds),
        h("span", { class: `sub ${f.exposure_end ? "ok" : "bad"}`, text: f.exposure_end ? "closed" : "open" })),
    );
    return tr;
  }

  // ------------------------------------------------------------------ detail panel

  function panel() {
    const el = clear($("detail"));
    el.hidden = false;
    el.append(h("button", { type: "button", class: "close", text: "Close ✕", "aria-label": "Close details", onclick: closeDetail }));
    return el;
  }

  function closeDetail() {
    $("detail").hidden = true;
    state.selected = null;
    for (const tr of document.querySelectorAll("tr.selected")) tr.classList.remove("selected");
    if (window.location.hash) history.replaceState(null, "", window.location.pathname + window.location.search);
  }

  function kv(pairs) {
    const dl = h("dl", { class: "kv" });
    for (const [k, v] of pairs) {
      if (v === null || v === undefined || v === "") continue;
      dl.append(h("dt", { text: k }), h("dd", {}, v instanceof Node ? v : String(v)));
    }
    return dl;
  }

  function table(headers, rows, cls) {
    if (!rows.length) return h("p", { class: "empty", text: "none" });
    return h("table", { class: `grid compact ${cls || ""}` },
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col", text: x })))),
      h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c instanceof Node ? c : String(c ?? "—")))))));
  }

  async function openFinding(id) {
    state.selected = id;
    for (const tr of document.querySelectorAll("#queue-body tr.row")) tr.classList.toggle("selected", Number(tr.dataset.id) === id);
    history.replaceState(null, "", `#finding=${id}`);
    await guarded(async () => {
      const d = await api(`findings/${encodeURIComponent(id)}`);
      if (state.selected !== id) return;
      renderFinding(d);
    });
  }

  function renderFinding(d) {
    const f = d.finding;
    const el = panel();
    el.dataset.finding = String(f.id);
    append(el, [
      h("h2", { class: "ftitle", text: f.title }),
      h("div", { class: "checks" }, badge("sev", f.severity), badge("st", f.status),
        f.kev ? h("span", { class: "badge kev", text: "KEV" }) : null,
        f.sla_overdue ? h("span", { class: "badge overdue", text: "SLA overdue" }) : null),
      kv([
        ["Finding", `#${f.id}`], ["Fingerprint", h("span", { class: "mono", text: f.fingerprint })],
        ["Service", f.service], ["Kind", f.kind], ["Rule", f.rule_id], ["All rules", (f.rule_ids || []).join(", ")],
        ["CWE", f.cwe ? `CWE-${f.cwe}` : null], ["CVEs", (f.cves || []).join(", ")],
        ["CVSS", f.cvss_score !== null ? `${fmtNum(f.cvss_score)} ${f.cvss_vector || ""}` : null],
        ["EPSS", f.epss !== null ? fmtPct(f.epss) : null], ["Priority", fmtNum(f.priority)],
        ["SSVC", f.ssvc_decision], ["SLA due", f.sla_due ? fmtTime(f.sla_due) : null],
        ["Location", whereOf(f)], ["URL", f.url ? h("span", { class: "mono", text: f.url }) : null],
        ["Confidence", f.confidence], ["First seen", fmtTime(f.first_seen)], ["Last seen", fmtTime(f.last_seen)],
        ["Mitigated", f.mitigated_at ? fmtTime(f.mitigated_at) : null], ["Resolved", f.resolved_at ? fmtTime(f.resolved_at) : null],
        ["Exposure", `${fmtDur(f.exposure_seconds)} (${f.exposure_end ? "closed" : "still exposed"})`],
      ]),
      h("h3", { text: "Evidence" }),
      f.evidence ? h("pre", { class: "evidence", text: f.evidence }) : h("p", { class: "empty", text: "none" }),
      f.solution ? [h("h3", { text: "Solution" }), h("pre", { class: "solution", text: f.solution })] : null,
      h("h3", { text: "Sources" }),
      table(["Scanner", "Rules", "Seen", "First", "Last"], d.sources.map((x) => [x.scanner, x.rules.join(", "), x.observations, fmtTime(x.first_observed), fmtTime(x.last_observed)])),
      h("h3", { text: "Status history" }),
      table(["When", "Change", "By", "Why"], [
        [fmtTime(f.first_seen), "first seen → new", f.scanner, ""],
        ...d.status_changes.map((c) => [fmtTime(c.changed_at), `${c.from_status || "—"} → ${c.to_status}`, c.actor, c.reason]),
      ], "history"),
      h("h3", { text: `Virtual patches (${d.virtual_patches.length})` }),
      table(["Rule", "Action", "Where", "Why"], d.virtual_patches.map((v) => [h("span", { class: "mono", text: v.id }), v.action, `${v.method || "*"} ${v.path}${v.param ? ` [${v.param}]` : ""}`, v.reason])),
      h("h3", { text: `Patches (${d.patches.length})` }),
      d.patches.length ? d.patches.map(patchCard) : h("p", { class: "empty", text: "none" }),
      h("h3", { text: `Observations (${d.observations.items.length} of ${d.observations.total})` }),
      table(["Scan run", "Scanner", "Scope", "Seen", "Run"], d.observations.items.map((o) => [o.scan_run_id, o.scanner, o.scope || "—", fmtTime(o.seen_at), `${o.run_status}${o.complete ? ", complete" : ""}`])),
      h("h3", { text: "Reports" }),
      table(["Report", "Format", "SHA-256", "Size", "Received"], d.reports.map((r) => [r.source, r.format, h("span", { class: "mono", text: r.sha256.slice(0, 16) }), r.size, fmtTime(r.received_at)])),
      h("h3", { text: `Audit (${d.audit.length})` }),
      auditTable(d.audit),
    ]);
  }

  function auditTable(entries) {
    return table(["Seq", "When", "Actor", "Action", "Subject", "Payload"], entries.map((a) => [
      a.seq, fmtTime(a.ts), a.actor, a.action, a.subject || "—",
      h("details", {}, h("summary", { text: "payload" }), h("pre", { text: JSON.stringify(a.payload, null, 2) })),
    ]), "audit");
  }

  function verdictReasons(v) {
    const r = (v.judgement && v.judgement.reasons) || v.reasons;
    return Array.isArray(r) ? r.join("; ") : "";
  }

  function sandboxCell(sb) {
    if (!sb) return h("span", { class: "muted", text: "—" });
    return h("span", {}, h("span", { class: sb.passed ? "ok" : "bad", text: sb.passed ? "✓ passed" : `✗ failed${sb.failed_check ? `: ${sb.failed_check}` : ""}` }),
      h("span", { class: "sub", text: fmtDur(sb.duration_s) }));
  }

  function rolloutCell(ro) {
    if (!ro) return h("span", { class: "muted", text: "—" });
    return h("span", {}, h("span", { class: ro.outcome === "promoted" ? "ok" : ro.outcome === "rolled_back" ? "bad" : "", text: `${ro.strategy || "?"} → ${(ro.outcome || "running").replace("_", " ")}` }),
      h("span", { class: "sub", text: ro.duration_s !== null ? fmtDur(ro.duration_s) : "" }));
  }

  function patchCard(p) {
    const card = h("div", { class: "patch", "data-patch": p.id });
    append(card, [
      h("header", {}, h("span", { class: "mono", text: p.id }), badge("st", p.state), h("span", { class: "muted", text: p.recipe })),
      h("div", { text: p.title }),
      p.reason ? h("div", { class: "sub", text: p.reason }) : null,
      kv([["Sandbox", sandboxCell(p.sandbox)], ["Rollout", rolloutCell(p.rollout)], ["Commit", p.commit], ["Image", p.image_digest || p.image]]),
      p.sandbox && p.sandbox.checks.length ? h("div", { class: "checks" }, p.sandbox.checks.map((c) =>
        h("span", { class: `badge ${c.status === "passed" ? "ok" : c.status === "failed" ? "bad" : "muted"}`, title: c.reason || c.status, text: `${c.name}: ${c.status}` }))) : null,
      p.rollout && p.rollout.reason ? h("div", { class: "sub", text: `rollout: ${p.rollout.reason}` }) : null,
      h("button", { type: "button", class: "linkish", text: "Patch details", onclick: () => openPatch(p.id) }),
    ]);
    return card;
  }

  // ------------------------------------------------------------------ patches

  async function loadPatches() {
    await guarded(async () => {
      const page = await api("patches", {
        state: state.patchState ? [state.patchState] : [], service: state.patchService ? [state.patchService] : [],
        limit: 50, offset: state.patchOffset,
      });
      const body = clear($("patch-body"));
      if (!page.items.length) body.append(h("tr", {}, h("td", { colspan: 7, class: "empty", text: "No patches yet." })));
      for (const p of page.items) {
        const tr = h("tr", { class: "row", tabindex: "0", "data-patch": p.id });
        tr.addEventListener("click", () => openPatch(p.id));
        tr.addEventListener("keydown", (e) => { if (e.key === "Enter") openPatch(p.id); });
        tr.append(
          h("td", { class: "title-cell" }, h("span", { class: "mono", text: p.id }), h("span", { class: "sub", text: p.title })),
          h("td", { text: p.service }), h("td", { text: p.recipe }), h("td", {}, badge("st", p.state)),
          h("td", {}, sandboxCell(p.sandbox)), h("td", {}, rolloutCell(p.rollout)), h("td", { text: fmtTime(p.updated_at) }),
        );
        body.append(tr);
      }
      pager($("patch-pager"), page, (off) => { state.patchOffset = off; loadPatches(); });
    });
  }

  async function openPatch(id) {
    await guarded(async () => {
      const p = await api(`patches/${encodeURIComponent(id)}`);
      const el = panel();
      el.dataset.patch = p.id;
      append(el, [
        h("h2", { text: p.title || p.id }),
        h("div", { class: "checks" }, badge("st", p.state), h("span", { class: "mono", text: p.id })),
        kv([["Service", p.service], ["Recipe", p.recipe], ["Delivery", p.delivery], ["Findings", p.finding_ids.join(", ")],
          ["Branch", p.branch], ["Commit", p.commit], ["Image", p.image_digest || p.image], ["Reason", p.reason],
          ["Created", fmtTime(p.created_at)], ["Updated", fmtTime(p.updated_at)]]),
        p.plan.description ? h("p", { text: p.plan.description }) : null,
        p.plan.diff ? [h("h3", { text: "Diff" }), h("pre", { class: "mono", text: p.plan.diff })] : null,
        h("h3", { text: "Sandbox" }),
        p.sandbox ? [kv([["Result", sandboxCell(p.sandbox)], ["Reason", p.sandbox.reason], ["Started", fmtTime(p.sandbox.started_at)]]),
          table(["Check", "Status", "Time", "Reason", "Output"], p.sandbox.checks.map((c) => [c.name, h("span", { class: c.status === "passed" ? "ok" : c.status === "failed" ? "bad" : "muted", text: c.status }),
            fmtDur(c.duration_s), c.reason, c.output ? h("details", {}, h("summary", { text: "output" }), h("pre", { text: c.output })) : "—"]))]
          : h("p", { class: "empty", text: "not verified yet" }),
        h("h3", { text: "Rollout" }),
        p.rollout ? [kv([["Result", rolloutCell(p.rollout)], ["Reason", p.rollout.reason], ["Started", fmtTime(p.rollout.started_at)],
          ["Finished", fmtTime(p.rollout.finished_at)], ["Traffic back", p.rollout.traffic_back_at ? fmtTime(p.rollout.traffic_back_at) : null]]),
          table(["Step", "Verdict", "Why"], (p.rollout.verdicts || []).map((v, i) => [v.step !== undefined ? `${v.step}%` : v.phase || i + 1, v.verdict || "—", verdictReasons(v)]))]
          : h("p", { class: "empty", text: "not rolled out" }),
        h("h3", { text: "History" }),
        table(["When", "Change", "By", "Why"], p.history.map((t) => [fmtTime(t.at), `${t.from || "—"} → ${t.to}`, t.actor, t.reason || ""])),
        h("h3", { text: `Rollout events (${p.events.length})` }),
        table(["When", "Kind", "Detail"], p.events.map((e) => [fmtTime(e.at), e.kind, h("pre", { text: JSON.stringify(e.detail) })])),
        h("h3", { text: `Audit (${p.audit.length})` }),
        auditTable(p.audit),
      ]);
    });
  }

  // ------------------------------------------------------------------ charts (SVG drawn here)

  function niceMax(v) {
    if (v <= 5) return 5;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function timeTicks(t0, t1, n) {
    const out = [];
    for (let i = 0; i <= n; i++) out.push(t0 + ((t1 - t0) * i) / n);
    return out;
  }

  function fmtTick(ms, spanMs) {
    const d = new Date(ms).toISOString();
    return spanMs <= 2 * 86400e3 ? d.slice(11, 16) : d.slice(5, 10);
  }

  function drawOpen(series) {
    const W = 900, H = 240, L = 44, R = 12, T = 10, B = 26;
    const box = clear($("chart-open"));
    const ts = series.t.map((x) => new Date(x).getTime());
    const t0 = ts[0], t1 = ts[ts.length - 1];
    const ymax = niceMax(Math.max(1, ...series.open, ...series.new, ...series.resolved));
    const x = (t) => L + ((t - t0) / (t1 - t0 || 1)) * (W - L - R);
    const y = (v) => T + (1 - v / ymax) * (H - T - B);
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Open findings over time" });
    for (let i = 0; i <= 4; i++) {
      const v = (ymax * i) / 4;
      svg.append(s("line", { class: "grid-line", x1: L, x2: W - R, y1: y(v), y2: y(v) }), s("text", { x: L - 6, y: y(v) + 3, "text-anchor": "end", text: String(Math.round(v)) }));
    }
    for (const t of timeTicks(t0, t1, 6)) svg.append(s("text", { x: x(t), y: H - 8, "text-anchor": "middle", text: fmtTick(t, t1 - t0) }));
    svg.append(s("line", { class: "axis", x1: L, x2: W - R, y1: y(0), y2: y(0) }));
    const bw = Math.max(1, ((W - L - R) / ts.length) * 0.35);
    ts.forEach((t, i) => {
      if (series.new[i]) svg.append(s("rect", { class: "bar-new", x: x(t) - bw, y: y(series.new[i]), width: bw, height: y(0) - y(series.new[i]) }));
      if (series.resolved[i]) svg.append(s("rect", { class: "bar-resolved", x: x(t), y: y(series.resolved[i]), width: bw, height: y(0) - y(series.resolved[i]) }));
    });
    const pts = ts.map((t, i) => `${x(t).toFixed(1)},${y(series.open[i]).toFixed(1)}`);
    svg.append(s("polygon", { class: "area-open", points: `${x(t0)},${y(0)} ${pts.join(" ")} ${x(t1)},${y(0)}` }));
    svg.append(s("polyline", { class: "line-open", points: pts.join(" ") }));
    const step = (W - L - R) / Math.max(1, ts.length - 1);
    ts.forEach((t, i) => {
      svg.append(s("rect", { class: "hover", x: x(t) - step / 2, y: T, width: step, height: H - T - B },
        s("title", { text: `${fmtTime(series.t[i])}\nopen ${series.open[i]}, new ${series.new[i]}, mitigated ${series.mitigated[i]}, resolved ${series.resolved[i]}` })));
    });
    box.append(svg);
  }

  function drawExposure(data) {
    const box = clear($("chart-exposure"));
    const wins = data.windows.slice(0, 60);
    if (!wins.length) { box.append(h("p", { class: "empty", text: "No exposure windows in this range." })); return; }
    const W = 900, L = 250, R = 12, T = 8, rowH = 14, B = 24;
    const H = T + wins.length * rowH + B;
    const t0 = new Date(data.start).getTime(), t1 = new Date(data.end).getTime();
    const x = (t) => L + ((Math.min(Math.max(t, t0), t1) - t0) / (t1 - t0 || 1)) * (W - L - R);
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Exposure windows" });
    for (const t of timeTicks(t0, t1, 6)) {
      svg.append(s("line", { class: "grid-line", x1: x(t), x2: x(t), y1: T, y2: H - B }), s("text", { x: x(t), y: H - 8, "text-anchor": "middle", text: fmtTick(t, t1 - t0) }));
    }
    wins.forEach((w, i) => {
      const y0 = T + i * rowH;
      const a = new Date(w.start).getTime();
      const b = w.end ? new Date(w.end).getTime() : Date.now();
      const label = w.title.length > 42 ? `${w.title.slice(0, 41)}…` : w.title;
      svg.append(s("text", { class: "win-label", x: L - 6, y: y0 + rowH - 4, "text-anchor": "end", text: label }));
      const bar = s("rect", { class: `win sev-${w.severity}${w.end ? "" : " open"}`, x: x(a), y: y0 + 2, width: Math.max(2, x(b) - x(a)), height: rowH - 4, "data-id": w.id },
        s("title", { text: `${w.title}\n${w.severity} · ${w.status}\n${fmtTime(w.start)} → ${w.end ? `${fmtTime(w.end)} (${w.ended_by})` : "still exposed"}\n${fmtDur(w.seconds)}` }));
      bar.addEventListener("click", () => { selectTab("queue"); openFinding(w.id); });
      svg.append(bar);
    });
    box.append(svg);
    if (data.total > wins.length) box.append(h("p", { class: "muted", text: `Showing the ${wins.length} newest of ${data.total} windows in the range.` }));
  }

  function drawStats(data) {
    const body = clear($("exposure-stats").tBodies[0]);
    for (const r of data.summary) {
      body.append(h("tr", {}, h("td", {}, badge("sev", r.severity)), h("td", { class: "num", text: r.closed }), h("td", { class: "num", text: r.open }),
        h("td", { class: "num", text: fmtDur(r.p50_s) }), h("td", { class: "num", text: fmtDur(r.p90_s) }), h("td", { class: "num", text: fmtDur(r.max_s) })));
    }
  }

  async function loadCharts() {
    await guarded(async () => {
      const days = Number(state.days) || 30;
      const [series, exposure] = await Promise.all([
        api("series/open", { days, points: days <= 1 ? 48 : 60 }),
        api("series/exposure", { days, limit: 60 }),
      ]);
      drawOpen(series);
      drawExposure(exposure);
      drawStats(exposure);
    });
  }

  // ------------------------------------------------------------------ tabs + start

  function selectTab(tab) {
    if (state.tab !== tab) closeDetail();
    state.tab = tab;
    for (const b of document.querySelectorAll(".tabs button")) b.setAttribute("aria-selected", String(b.dataset.tab === tab));
    for (const name of ["queue", "patches", "charts"]) $(`panel-${name}`).hidden = name !== tab;
    if (tab === "patches") loadPatches();
    if (tab === "charts") loadCharts();
  }

  function start() {
    buildFilters();
    buildHead();
    for (const b of document.querySelectorAll(".tabs button")) b.addEventListener("click", () => selectTab(b.dataset.tab));
    guarded(async () => { await Promise.all([loadOverview(), loadFacets()]); });
    loadQueue();
    const m = /^#finding=(\d+)$/.exec(window.location.hash);
    if (m) openFinding(Number(m[1]));
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
