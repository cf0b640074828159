// ztpd status page: theme switch, relative times, table sort/filter, live updates over SSE.
// Every string from a node is put into the page with textContent, never as HTML.
"use strict";
(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));

  // --- theme: follows the system until chosen; the choice is kept in localStorage ---------
  const root = document.documentElement;
  const saved = localStorage.getItem("ztpd-theme");
  if (saved === "light" || saved === "dark") root.dataset.theme = saved;
  document.addEventListener("DOMContentLoaded", () => {
    const btn = $("#theme-toggle");
    if (!btn) return;
    btn.addEventListener("click", () => {
      const dark = root.dataset.theme
        ? root.dataset.theme === "dark"
        : matchMedia("(prefers-color-scheme: dark)").matches;
      root.dataset.theme = dark ? "light" : "dark";
      localStorage.setItem("ztpd-theme", root.dataset.theme);
    });
  });

  function ago(ts) {
    const s = Math.max(0, Math.floor(Date.now() / 1000 - ts));
    if (s < 120) return s + "s";
    if (s < 7200) return Math.floor(s / 60) + "m";
    return s < 172800 ? Math.floor(s / 3600) + "h" : Math.floor(s / 86400) + "d";
  }
  function tick() {
    for (const t of $$("time[data-since]")) t.textContent = ago(Number(t.dataset.since));
  }

  function el(tag, props, children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "text") e.textContent = v;
      else if (k === "class") e.className = v;
      else e.setAttribute(k, v);
    }
    for (const c of children || []) e.append(c);
    return e;
  }
  function badge(state) {
    return el("span", { class: "badge state-" + state, "data-field": "state", text: state });
  }
  function progress(p) {
    const out = [];
    if (!p) return out;
    if (p.fraction !== null && p.fraction !== undefined) {
      const pct = Math.round(p.fraction * 100);
      out.push(el("progress", { max: "1", value: String(p.fraction), "aria-label": "progress", text: pct + "%" }));
      out.push(" " + pct + "%");
    }
    if (p.stage) out.push(" ", el("span", { class: "stage", text: String(p.stage) }));
    return out;
  }

  // --- the nodes table -----------------------------------------------------------------
  function rowCells(n) {
    const last = [];
    if (n.last_event) last.push(n.last_event.text);
    if (n.reason && n.state === "failed") last.push(" ", el("span", { class: "reason", text: "— " + n.reason }));
    return [
      el("td", { "data-col": "name" }, [el("a", { href: "/nodes/" + n.id, text: n.name })]),
      el("td", { "data-col": "state" }, [badge(n.state)]),
      el("td", { "data-col": "progress" }, progress(n.progress)),
      el("td", { "data-col": "profile", text: n.profile || "" }),
      el("td", { "data-col": "ip", text: n.ip || "" }),
      el("td", { "data-col": "macs", text: n.macs.join(", ") }),
      el("td", { "data-col": "serial", text: n.serial || "" }),
      el("td", { "data-col": "since", "data-sort": String(n.state_since) }, [
        el("time", { "data-since": String(n.state_since), text: ago(n.state_since) }),
      ]),
      el("td", { "data-col": "last" }, last),
    ];
  }
  function upsertRow(table, n) {
    const body = table.tBodies[0];
    let tr = $('tr[data-node-id="' + n.id + '"]', body);
    const onlyBusy = document.body.dataset.page === "dashboard";
    const busy = ["inspecting", "deploying", "configuring"].includes(n.state);
    if (onlyBusy && !busy) { if (tr) tr.remove(); return; }
    if (!tr) { tr = el("tr", { "data-node-id": String(n.id) }); body.append(tr); }
    tr.dataset.state = n.state;
    tr.dataset.search = [n.name, n.serial || "", n.ip || "", n.profile || "", n.macs.join(" ")].join(" ").toLowerCase();
    tr.replaceChildren(...rowCells(n));
    tr.classList.remove("flash"); void tr.offsetWidth; tr.classList.add("flash");
    applyFilter(table);
  }
  function applyFilter(table) {
    const q = ($("#q") || {}).value || "";
    const st = ($("#state") || {}).value || "";
    let shown = 0;
    for (const tr of table.tBodies[0].rows) {
      const ok = (!q || tr.dataset.search.includes(q.toLowerCase())) && (!st || tr.dataset.state === st);
      tr.hidden = !ok;
      if (ok) shown++;
    }
    const count = $("#nodes-count"); if (count) count.textContent = String(shown);
    const empty = $("#nodes-empty"); if (empty) empty.hidden = shown > 0;
  }
  function sortBy(table, key, th) {
    const dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
    for (const h of $$("th", table)) h.removeAttribute("aria-sort");
    th.setAttribute("aria-sort", dir);
    const val = (tr) => {
      const td = $('td[data-col="' + key + '"]', tr);
      return td ? (td.dataset.sort || td.textContent.trim().toLowerCase()) : "";
    };
    const rows = Array.from(table.tBodies[0].rows);
    rows.sort((a, b) => {
      const x = val(a), y = val(b);
      const nx = Number(x), ny = Number(y);
      const c = x !== "" && y !== "" && !isNaN(nx) && !isNaN(ny) ? nx - ny : x.localeCompare(y, undefined, { numeric: true });
      return dir === "ascending" ? c : -c;
    });
    table.tBodies[0].append(...rows);
  }

  // --- the dashboard's counts -----------------------------------------------------------
  let summaryTimer = null;
  function refreshSummary() {
    clearTimeout(summaryTimer);
    summaryTimer = setTimeout(async () => {
      const r = await fetch("/api/v1/summary", { credentials: "same-origin" });
      if (!r.ok) return;
      const s = await r.json();
      for (const [state, n] of Object.entries(s.states)) {
        const c = $('[data-count="' + state + '"]');
        if (c) { c.textContent = String(n); c.closest("li").classList.toggle("zero", n === 0); }
      }
      const t = $('[data-count="total"]'); if (t) t.textContent = String(s.total);
      for (const [k, n] of Object.entries(s.traffic)) { const d = $('[data-traffic="' + k + '"]'); if (d) d.textContent = String(Math.floor(n)); }
      for (const [k, n] of Object.entries(s.activity)) { const d = $('[data-activity="' + k + '"]'); if (d) d.textContent = String(n); }
    }, 200);
  }

  // --- the node page ---------------------------------------------------------------------
  function updateNode(ev) {
    const n = ev.node;
    if (!n) return;
    const h1Badge = $("h1 .badge"); if (h1Badge) h1Badge.replaceWith(badge(n.state));
    const st = $('[data-field="state-text"]'); if (st) st.textContent = n.state;
    const pr = $('.lede [data-field="progress"]'); if (pr) pr.replaceChildren(...progress(n.progress));
    const rs = $('.lede [data-field="reason"]'); if (rs) rs.textContent = n.reason ? "Reason: " + n.reason : "";
    for (const b of $$("button[data-action]")) b.hidden = !n.actions.includes(b.dataset.action);
    const tl = $("#timeline");
    if (tl && !$('li[data-event-id="' + ev.id + '"]', tl)) {
      const reason = ev.detail && typeof ev.detail.reason === "string" ? " — " + ev.detail.reason : "";
      const when = new Date(ev.ts * 1000);
      tl.prepend(el("li", { "data-event-id": String(ev.id) }, [
        el("time", { datetime: when.toISOString(), text: when.toLocaleString() }), " ",
        el("span", { class: "kind", text: ev.kind }), " " + ev.text + reason,
      ]));
    }
  }

  // --- the live stream ---------------------------------------------------------------------
  function connect() {
    const page = document.body.dataset.page;
    if (!["dashboard", "nodes", "node"].includes(page)) return;
    const params = new URLSearchParams({ after: document.body.dataset.lastEvent || "0" });
    if (page === "node") params.set("node", document.body.dataset.nodeId);
    // EventSource reconnects by itself and sends Last-Event-ID, so nothing is missed.
    const es = new EventSource("/api/v1/events/stream?" + params.toString());
    const status = $("#live-status");
    es.onopen = () => {
      document.body.dataset.live = "open";
      if (status) status.textContent = "";
    };
    es.onerror = () => {
      document.body.dataset.live = "reconnecting";
      if (status) status.textContent = "Live updates interrupted; reconnecting…";
    };
    const handle = (msg) => {
      let ev;
      try { ev = JSON.parse(msg.data); } catch (e) { return; }
      document.body.dataset.lastEvent = String(ev.id);
      const table = $("#nodes-table");
      if (table && ev.node) upsertRow(table, ev.node);
      if (page === "dashboard") refreshSummary();
      if (page === "node" && String(ev.node_id) === document.body.dataset.nodeId) updateNode(ev);
    };
    es.onmessage = handle;
  }

  document.addEventListener("DOMContentLoaded", () => {
    const table = $("#nodes-table");
    if (table) {
      for (const b of $$("th button[data-sort-key]", table)) {
        b.addEventListener("click", () => sortBy(table, b.dataset.sortKey, b.closest("th")));
      }
      const q = $("#q"), st = $("#state");
      if (q) q.addEventListener("input", () => applyFilter(table));
      if (st) st.addEventListener("change", () => applyFilter(table));
    }
    tick();
    setInterval(tick, 5000);
    connect();
  });
})();
