/* taskmeter dashboard: a client of the public Usage API, nothing more.
   Views: #/signin, #/overview, #/tasks, #/task/<id>. The API key lives in sessionStorage
   (this browser session only). All text reaches the page through textContent. */
"use strict";

const KEY = "taskmeter.key";
const TZ = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
const main = document.getElementById("main");
let me = null;
// Each navigation gets a number; a view whose answer arrives after a newer navigation
// started drops it, so a slow old request never paints over the page the user asked for.
let navigation = 0;

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(path, params = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) url.searchParams.set(k, v);
  const response = await fetch(url, { headers: { "X-Api-Key": sessionStorage.getItem(KEY) || "" } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, body.code || "error", body.message || response.statusText);
  return body;
}

const credits = (n) => (n === null || n === undefined ? "—" : Number(n).toFixed(4));
const number = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"));
const when = (iso) => new Date(iso).toLocaleString("en-GB", { timeZone: TZ, dateStyle: "medium", timeStyle: "short" });
const ms = (n) => (n === null || n === undefined ? "—" : n >= 60000 ? `${(n / 60000).toFixed(1)} min` : `${(n / 1000).toFixed(1)} s`);

function route() {
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  return { parts: path.split("/").filter(Boolean), params: new URLSearchParams(query || "") };
}

function go(view, params) {
  const query = new URLSearchParams(Object.entries(params || {}).filter(([, v]) => v !== "" && v !== null && v !== undefined));
  location.hash = `#/${view}${query.toString() ? "?" + query : ""}`;
}

function show(...nodes) { main.replaceChildren(...nodes); }
function message(text, kind = "info") { return h("p", { class: `message ${kind}`, role: kind === "error" ? "alert" : "status" }, text); }

function stat(label, value, id) {
  return h("div", { class: "card stat" }, h("div", { class: "label" }, label), h("div", { class: "value", id }, value));
}

function barList(label, entries, format, id) {
  const max = Math.max(0, ...entries.map(([, v]) => v)) || 1;
  return h("section", { class: "card", "aria-label": label },
    h("h2", {}, label),
    entries.length === 0 ? h("p", { class: "muted" }, "Nothing in this range.") :
      h("ul", { class: "bars", id }, entries.map(([name, value]) => {
        const fill = h("div", { class: "fill" });
        fill.style.width = `${(100 * value) / max}%`;
        return h("li", {}, h("span", { class: "name", title: name }, name), h("div", { class: "track", "aria-hidden": "true" }, fill), h("span", { class: "num" }, format(value)));
      })));
}

// A table that turns into cards on a narrow screen: each cell carries its column's name
// (data-label, drawn by the CSS before the value) and its column's class (widths, hiding).
// columns: [{ label, cls, num?, sorted? }]; cells(row) gives one value (or node) a column.
function dataTable(id, caption, columns, rows, cells) {
  const head = columns.map((c) => h("th", { scope: "col", class: [c.cls, c.num ? "num" : ""].join(" ").trim(), "aria-sort": c.sorted || null }, c.label));
  const body = rows.map((row) => h("tr", {}, cells(row).map((value, i) => {
    const c = columns[i];
    const text = value instanceof Node ? null : value;
    // Long text truncates with an ellipsis; the whole of it shows on hover.
    return h("td", { class: [c.cls, c.num ? "num" : "", c.cellClass ? c.cellClass(row) : ""].join(" ").trim(), "data-label": c.label, title: c.truncates && text ? text : null }, value);
  })));
  return h("div", { class: "table-wrap" }, h("table", { id, class: "cards" },
    caption ? h("caption", { class: "muted" }, caption) : null,
    h("thead", {}, h("tr", {}, head)), h("tbody", {}, body)));
}

// What a task or stream was charged; a BYOK one says so, with the provider's cost (sort=cost
// orders by that base amount, so a BYOK row can rank above larger platform charges).
function charged(row) {
  if (!row.is_byok || row.llm_cost === null || row.llm_cost === undefined) return credits(row.neo_credits);
  return h("span", { title: `Bring your own key: the provider billed ${credits(row.llm_cost)} credits (what sort by cost orders by); the platform charged ${credits(row.neo_credits)}` },
    h("span", { class: "tag" }, "BYOK"), " ", credits(row.neo_credits));
}

const CAP_SUBJECTS = { team: "Team", member: "Member", project: "Project", user: "User" };
const PER = { day: "daily", week: "weekly", month: "monthly", total: "in total" };

function capsPanel(caps) {
  if (!caps || caps.length === 0) return null;  // no caps: no panel
  return h("section", { class: "card", "aria-label": "Spending caps" }, h("h2", {}, "Spending caps"),
    h("ul", { class: "caps", id: "caps" }, caps.map((c) => {
      const name = c.project || c.user || (c.kind === "team" && me && me.team ? me.team.name : "");
      const share = c.limit_credits > 0 ? Math.min(1, (c.used_credits + c.reserved_credits) / c.limit_credits) : 1;
      const top = Math.max(0, ...(c.thresholds || []));
      const fill = h("div", { class: `fill${share * 100 >= top && top > 0 ? " high" : ""}` });
      fill.style.width = `${100 * share}%`;
      return h("li", {},
        h("div", { class: "cap-head" }, h("span", { class: "name", title: name }, `${CAP_SUBJECTS[c.kind] || c.kind} ${name}`.trim()), h("span", { class: "muted" }, PER[c.period] || c.period)),
        h("div", { class: "track", role: "img", "aria-label": `${Math.round(100 * share)}% of the cap used` }, fill),
        h("div", { class: "cap-figures" },
          h("span", {}, `${credits(c.used_credits)} / ${credits(c.limit_credits)} credits`),
          h("span", {}, `${credits(c.remaining_credits)} left`),
          h("span", { class: "muted" }, c.resets_at ? `resets ${when(c.resets_at)}` : "never resets")));
    })));
}

/* ---------- sign in ---------- */

async function signIn(event) {
  event.preventDefault();
  const key = document.getElementById("key").value.trim();
  const out = document.getElementById("signin-message");
  sessionStorage.setItem(KEY, key);
  try {
    const user = await api("/api/v1/user");
    if (user.team && user.team.role !== "admin") {
      sessionStorage.removeItem(KEY);
      out.replaceChildren(message(`Usage data is visible to team admins only. You are a ${user.team.role} of ${user.team.name}; ask an admin of your team.`, "error"));
      return;
    }
    me = user;
    go("overview");
  } catch (error) {
    sessionStorage.removeItem(KEY);
    out.replaceChildren(message(error.status === 401 ? "That key was not accepted. Check it and try again." : `Sign-in failed: ${error.message}`, "error"));
  }
}

function signInView() {
  show(h("form", { class: "card signin", onsubmit: signIn, "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in"),
    h("label", { for: "key" }, "API key"),
    h("input", { id: "key", name: "key", type: "password", autocomplete: "off", required: true, placeholder: "neo_sk_…" }),
    h("button", { type: "submit" }, "Sign in"),
    h("p", { class: "muted" }, "The key stays in this browser tab and is sent only to this server."),
    h("div", { id: "signin-message", "aria-live": "polite" })));
  document.getElementById("key").focus();
}

/* ---------- overview ---------- */

function isoDay(date) { return date.toISOString().slice(0, 10); }
function localMidnight(day) { const [y, m, d] = day.split("-").map(Number); return new Date(y, m - 1, d); }

function rangeControls(params, view, extra = []) {
  const today = new Date();
  const from = params.get("from") || isoDay(new Date(today.getTime() - 29 * 86400000));
  const to = params.get("to") || isoDay(today);
  const form = h("form", { class: "controls", "aria-label": "Date range", onsubmit: (e) => {
    e.preventDefault();
    const data = Object.fromEntries(new FormData(e.target).entries());
    go(view, { ...Object.fromEntries(params.entries()), ...data, offset: "" });
  } },
  h("label", {}, "From", h("input", { type: "date", name: "from", value: from })),
  h("label", {}, "To (inclusive)", h("input", { type: "date", name: "to", value: to })),
  ...extra,
  h("button", { type: "submit" }, "Apply"));
  const range = { from: localMidnight(from).toISOString(), to: new Date(localMidnight(to).getTime() + 86400000).toISOString() };
  return { form, range };
}

function drawCredits(container, periods) {
  container.replaceChildren();
  if (!window.uPlot || periods.length === 0) { container.append(h("p", { class: "muted" }, "No credits in this range.")); return; }
  const xs = periods.map((p) => localMidnight(p.date).getTime() / 1000);
  const ys = periods.map((p) => p.neo_credits);
  const width = Math.max(280, container.clientWidth || 600);
  new window.uPlot({
    width, height: 240, tzDate: (ts) => window.uPlot.tzDate(new Date(ts * 1000), TZ),
    scales: { x: { time: true } },
    series: [{}, { label: "credits", stroke: "#0b5cad", fill: "rgba(11,92,173,0.35)", paths: window.uPlot.paths.bars({ size: [0.7, 60] }), points: { show: false }, value: (u, v) => credits(v) }],
    axes: [{}, { values: (u, vals) => vals.map((v) => Number(v).toFixed(2)) }],
  }, [xs, ys], container);
}

async function overviewView(params, stale) {
  const groupBy = params.get("group_by") || "day";
  const select = h("select", { name: "group_by", "aria-label": "Group by" },
    ["day", "week", "month"].map((g) => h("option", { value: g, selected: g === groupBy }, g)));
  const { form, range } = rangeControls(params, "overview", [h("label", {}, "Group by", select)]);
  show(h("h1", {}, "Overview"), form, h("p", { class: "muted" }, `Periods are cut in ${TZ}.`), h("p", { class: "loading" }, "Loading…"));
  let s;
  try { s = await api("/api/v1/usage/summary", { ...range, group_by: groupBy, tz: TZ }); }
  catch (error) { return stale() || fail(error); }
  if (stale()) return;
  const chart = h("div", { class: "chart", id: "credits-chart", role: "img", "aria-label": `Credits per ${groupBy}` });
  const byModel = Object.entries(s.by_model).map(([m, v]) => [m, v.neo_credits]).sort((a, b) => b[1] - a[1]);
  const byStatus = Object.entries(s.by_status).sort((a, b) => b[1] - a[1]);
  const balance = h("section", { class: "card", "aria-label": "Credit balance" }, h("h2", {}, "Credit balance"),
    h("table", {}, h("tbody", {},
      h("tr", {}, h("th", { scope: "row" }, "Issued"), h("td", { class: "num", id: "balance-issued" }, credits(s.total_issued_neo_credits))),
      h("tr", {}, h("th", { scope: "row" }, "Used since reset"), h("td", { class: "num" }, credits(s.total_neo_credits_post_reset))),
      h("tr", {}, h("th", { scope: "row" }, "Available"), h("td", { class: "num", id: "balance-available" }, credits(s.total_available_neo_credits))),
      h("tr", {}, h("th", { scope: "row" }, "Expires"), h("td", { class: "num" }, s.neo_credits_is_expired ? "expired" : s.neo_credits_expires_at ? when(s.neo_credits_expires_at) : "never")))));
  const byok = h("section", { class: "card", "aria-label": "BYOK" }, h("h2", {}, "Bring your own key"),
    h("table", {}, h("tbody", {},
      h("tr", {}, h("th", { scope: "row" }, "Provider cost (credits)"), h("td", { class: "num" }, credits(s.byok.total_llm_cost))),
      h("tr", {}, h("th", { scope: "row" }, "Platform charge"), h("td", { class: "num" }, credits(s.byok.total_neo_cost))),
      h("tr", {}, h("th", { scope: "row" }, "Streams / tasks"), h("td", { class: "num" }, `${number(s.byok.total_streams)} / ${number(s.byok.total_tasks)}`)))));
  show(h("h1", {}, "Overview"), form, h("p", { class: "muted" }, `Periods are cut in ${TZ}.`),
    h("div", { class: "grid" },
      stat("Credits used", credits(s.total_neo_credits), "total-credits"),
      stat("Tasks", number(s.total_tasks), "total-tasks"),
      stat("Tool calls", number(s.total_tool_calls), "total-tools"),
      stat("Steps", number(s.total_steps), "total-steps")),
    h("section", { class: "card", "aria-label": "Credits over time" }, h("h2", {}, `Credits per ${groupBy}`), chart),
    h("div", { class: "panels" },
      barList("Credits by model", byModel, credits, "by-model"),
      s.by_email ? barList("Credits by member", s.by_email.map((e) => [e.email, e.neo_credits]), credits, "by-member") : null,
      barList("Tasks by status", byStatus, number, "by-status"),
      balance, capsPanel(s.caps), byok));
  drawCredits(chart, s.by_period || []);
}

/* ---------- tasks ---------- */

const STATUSES = ["completed", "error", "failed", "aborted", "blocked"];

async function tasksView(params, stale) {
  const limit = 50;
  const offset = Number(params.get("offset") || 0);
  const sort = params.get("sort") || "created_at";
  const extra = [
    h("label", {}, "Search", h("input", { type: "search", name: "search", value: params.get("search") || "", placeholder: "id, title or email" })),
    h("label", {}, "Status", h("select", { name: "status" }, h("option", { value: "" }, "any"), STATUSES.map((s) => h("option", { value: s, selected: params.get("status") === s }, s)))),
    h("label", {}, "Model", h("input", { name: "model", value: params.get("model") || "", size: 14 })),
    h("label", {}, "Sort by", h("select", { name: "sort" }, h("option", { value: "created_at", selected: sort === "created_at" }, "date"), h("option", { value: "cost", selected: sort === "cost" }, "cost"))),
  ];
  const { form, range } = rangeControls(params, "tasks", extra);
  show(h("h1", {}, "Tasks"), form, h("p", { class: "loading" }, "Loading…"));
  let page;
  try {
    page = await api("/api/v1/usage/tasks", { ...range, limit, offset, sort, search: params.get("search"), status: params.get("status"), model: params.get("model") });
  } catch (error) { return stale() || fail(error); }
  if (stale()) return;
  const admin = Boolean(me && me.team);
  const columns = [
    { label: "Task", cls: "c-task" },
    { label: "Title", cls: "c-title", truncates: true },
    ...(admin ? [{ label: "Member", cls: "c-member", truncates: true }] : []),
    { label: "Status", cls: "c-status", cellClass: (t) => `status-${t.status}` },
    { label: "Model", cls: "c-model wide", truncates: true },
    { label: "Created", cls: "c-date", sorted: sort === "created_at" ? "descending" : null },
    { label: "Streams", cls: "c-count wide", num: true },
    { label: "Tool calls", cls: "c-count wide", num: true },
    { label: "Credits", cls: "c-credits", num: true, sorted: sort === "cost" ? "descending" : null },
  ];
  const cells = (t) => [
    h("a", { href: `#/task/${encodeURIComponent(t.task_id)}` }, t.task_id),
    t.task_title || "",
    ...(admin ? [t.email || ""] : []),
    t.status, t.model, when(t.created_at), number(t.stream_count), number(t.tool_calls), charged(t),
  ];
  const shown = page.data.length ? `${offset + 1}–${offset + page.data.length} of ${page.total}` : `0 of ${page.total}`;
  show(h("h1", {}, "Tasks"), form,
    dataTable("tasks-table", `Tasks created in the range, by ${sort === "cost" ? "cost" : "date"}`, columns, page.data, cells),
    h("div", { class: "pager" },
      h("button", { type: "button", class: "secondary", disabled: offset === 0, onclick: () => go("tasks", { ...Object.fromEntries(params.entries()), offset: Math.max(0, offset - limit) }) }, "Previous"),
      h("span", { id: "page-info", "aria-live": "polite" }, shown),
      h("button", { type: "button", class: "secondary", disabled: !page.has_more, onclick: () => go("tasks", { ...Object.fromEntries(params.entries()), offset: offset + limit }) }, "Next")));
}

/* ---------- one task ---------- */

function timeline(history, task) {
  if (history.length === 0) return h("p", { class: "muted" }, "No tool calls.");
  // The waterfall runs over the task's whole duration, so idle gaps show as gaps.
  const start = Math.min(Date.parse(task.created_at), ...history.map((c) => c.timestamp));
  const end = Math.max(Date.parse(task.finished_at || task.created_at), ...history.map((c) => c.timestamp + c.duration_ms));
  const span = Math.max(1, end - start);
  return h("ol", { class: "timeline", id: "timeline", "aria-label": "Tool calls in time order" }, history.map((c) => {
    const bar = h("div", { class: "span", title: `${c.tool_name}: ${ms(c.duration_ms)} at +${ms(c.timestamp - start)}` });
    bar.style.left = `${(100 * (c.timestamp - start)) / span}%`;
    bar.style.width = `${Math.max(0.3, (100 * c.duration_ms) / span)}%`;
    return h("li", {}, h("span", {}, `${c.index}. ${c.tool_name}`), h("div", { class: "lane" }, bar));
  }));
}

async function taskView(taskId, stale) {
  show(h("h1", {}, `Task ${taskId}`), h("p", { class: "loading" }, "Loading…"));
  let task, streams;
  try {
    [task, streams] = await Promise.all([
      api(`/api/v1/usage/tasks/${encodeURIComponent(taskId)}`),
      api("/api/v1/usage/streams", { task_id: taskId, limit: 200 }),
    ]);
  } catch (error) { return stale() || fail(error); }
  if (stale()) return;
  const tools = Object.entries(task.tool_breakdown || {}).map(([n, v]) => [n, v.total_duration_ms]).sort((a, b) => b[1] - a[1]);
  show(h("p", {}, h("a", { href: "#/tasks" }, "← All tasks")),
    h("h1", {}, task.task_title || `Task ${task.task_id}`),
    h("p", { class: "muted" }, `${task.task_id} · ${task.model} · `, h("span", { class: `status-${task.status}` }, task.status), task.error_message ? ` · ${task.error_message}` : ""),
    h("div", { class: "grid" },
      stat("Credits", credits(task.neo_credits), "task-credits"),
      stat("Streams", number(task.stream_count), "task-streams"),
      stat("Tool calls", number(task.tool_calls), "task-tools"),
      stat("Steps", number(task.step_count)),
      stat("Tokens in / out", `${number(task.input_tokens)} / ${number(task.output_tokens)}`),
      stat("Execution", ms(task.total_execution_ms))),
    h("div", { class: "panels" },
      barList("Tool time", tools, ms, "tool-breakdown"),
      h("section", { class: "card", "aria-label": "Tool-call timeline" }, h("h2", {}, "Tool-call timeline"), timeline(task.tool_call_history || [], task))),
    h("h2", {}, "Streams"),
    dataTable("streams-table", null, [
      { label: "Stream", cls: "c-stream" },
      { label: "Status", cls: "c-status", cellClass: (x) => `status-${x.status}` },
      { label: "Model", cls: "c-model", truncates: true },
      { label: "Started", cls: "c-date" },
      { label: "Execution", cls: "c-time", num: true },
      { label: "Tool calls", cls: "c-count wide", num: true },
      { label: "Credits", cls: "c-credits", num: true },
    ], streams.data, (x) => [
      h("span", { title: x.stream_id }, x.stream_id.slice(0, 8)), x.status, x.model, when(x.created_at),
      ms(x.total_execution_ms), number(x.tool_calls), charged(x),
    ]));
}

/* ---------- shell ---------- */

function fail(error) {
  if (error.status === 401) { sessionStorage.removeItem(KEY); return go("signin"); }
  if (error.status === 403) return show(message("Usage data is visible to team admins only.", "error"));
  if (error.status === 404) return show(message("No such task in your scope.", "error"), h("p", {}, h("a", { href: "#/tasks" }, "All tasks")));
  return show(message(`Something went wrong: ${error.message}`, "error"));
}

async function render() {
  const ticket = ++navigation;
  const stale = () => ticket !== navigation;
  const { parts, params } = route();
  const view = parts[0] || "overview";
  const nav = document.getElementById("nav");
  if (!sessionStorage.getItem(KEY) || view === "signin") { nav.hidden = true; me = null; return signInView(); }
  if (!me) {
    try { me = await api("/api/v1/user"); } catch (error) { return stale() || fail(error); }
    if (stale()) return;
  }
  nav.hidden = false;
  document.getElementById("who").textContent = me.team ? `${me.email} · ${me.team.name}` : me.email;
  for (const link of nav.querySelectorAll("a[data-view]")) {
    if (link.dataset.view === view) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
  if (view === "tasks") await tasksView(params, stale);
  else if (view === "task") await taskView(decodeURIComponent(parts.slice(1).join("/")), stale);
  else await overviewView(params, stale);
  if (!stale()) main.focus({ preventScroll: true });
}

document.getElementById("sign-out").addEventListener("click", () => { sessionStorage.removeItem(KEY); me = null; go("signin"); });
window.addEventListener("hashchange", render);
render();
