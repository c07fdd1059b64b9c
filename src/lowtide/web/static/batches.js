// The account's batches: filters, and a table that refreshes itself while a batch runs.

import { api } from "./api.js";
import { announce, errorBox, fill, h, poll } from "./dom.js";
import { RUNNING, STATUSES, batchName, fmtCost, fmtTime, isoTime, statusLabel } from "./format.js";
import { observe, progressBar, speedText } from "./progress.js";
import { backendsSection } from "./backends.js";

const FAST_MS = 1000; // while a batch runs
const SLOW_MS = 15000; // otherwise, to notice batches created elsewhere
const filters = { status: "", name: "" }; // kept while the tab lives

export function statusBadge(status) {
  return h("span", { class: `badge status-${status}` }, statusLabel(status));
}

function row(batch) {
  const name = h("a", { href: `#/batches/${encodeURIComponent(batch.id)}` });
  const sub = h("span", { class: "muted small" });
  const status = h("td", { "data-label": "Status" });
  const bar = progressBar(`Progress of ${batchName(batch)}`);
  const speed = h("td", { "data-label": "Rate / ETA", class: "speed" });
  const cost = h("td", { "data-label": "Cost", class: "num" });
  const created = h("td", { "data-label": "Created" }, h("time", { datetime: isoTime(batch.created_at) }, fmtTime(batch.created_at)));
  const tr = h("tr", { dataset: { id: batch.id } },
    h("th", { scope: "row", "data-label": "Name" }, name, sub),
    status, h("td", { "data-label": "Progress" }, bar), speed, cost, created);
  tr.update = (b) => {
    name.textContent = batchName(b);
    sub.textContent = b.metadata?.ds_name ? b.id : "";
    fill(status, statusBadge(b.status));
    bar.update(b);
    speed.textContent = speedText(b);
    cost.textContent = fmtCost(b.cost);
  };
  return tr;
}

export function render(ctx) {
  document.title = "Batches · lowtide";
  const rows = new Map();
  const tbody = h("tbody");
  const table = h("table", { class: "list batches" },
    h("caption", { class: "visually-hidden" }, "Batches, newest first"),
    h("thead", {}, h("tr", {}, ["Name", "Status", "Progress", "Rate / ETA", "Cost", "Created"].map((c) => h("th", { scope: "col" }, c)))),
    tbody);
  const empty = h("p", { class: "empty", hidden: true });
  const more = h("p", { class: "muted small", hidden: true }, "Showing the newest 100 batches; narrow the filters to find older ones.");
  const problem = h("div");
  const backends = backendsSection();

  const status = h("select", { id: "filter-status", name: "status" },
    h("option", { value: "" }, "Any status"),
    STATUSES.map((s) => h("option", { value: s, selected: filters.status === s }, statusLabel(s))));
  const name = h("input", { id: "filter-name", name: "name", type: "search", value: filters.name, autocomplete: "off", maxlength: 100 });
  const form = h("form", { class: "filters", role: "search", "aria-label": "Filter batches" },
    h("div", { class: "field" }, h("label", { for: "filter-status" }, "Status"), status),
    h("div", { class: "field" }, h("label", { for: "filter-name" }, "Name contains"), name),
    h("button", { type: "submit", class: "button" }, "Filter"));

  let generation = 0; // answers to an older filter are dropped
  const load = async () => {
    const mine = ++generation;
    const [page] = await Promise.all([
      api.listBatches({ status: filters.status, name: filters.name }, ctx.signal),
      backends.load(ctx.signal),
    ]);
    if (mine !== generation) return FAST_MS; // a newer filter's answer is on its way
    fill(problem);
    show(page);
    return page.data.some((b) => RUNNING.has(b.status)) ? FAST_MS : SLOW_MS;
  };
  const show = (page) => {
    const seen = new Set();
    page.data.forEach((batch, i) => {
      observe(batch);
      let tr = rows.get(batch.id);
      if (!tr) { tr = row(batch); rows.set(batch.id, tr); }
      tr.update(batch);
      seen.add(batch.id);
      // Move a row only when its place changed: moving a node drops the focus inside it.
      if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
    });
    for (const [id, tr] of rows) if (!seen.has(id)) { tr.remove(); rows.delete(id); }
    const filtered = filters.status || filters.name;
    table.hidden = page.data.length === 0;
    empty.hidden = page.data.length !== 0;
    fill(empty, filtered ? "No batch matches these filters." : ["No batches yet. ", h("a", { href: "#/new" }, "Create one"), "."]);
    more.hidden = !page.has_more;
  };
  const apply = async () => {
    filters.status = status.value;
    filters.name = name.value.trim();
    try {
      await load();
      announce(`${rows.size} batch${rows.size === 1 ? "" : "es"} shown`);
    } catch (err) {
      if (err.name !== "AbortError") fill(problem, errorBox(err));
    }
  };
  let typing = null;
  form.addEventListener("submit", (event) => { event.preventDefault(); apply(); });
  status.addEventListener("change", apply);
  name.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(apply, 300); });
  ctx.signal.addEventListener("abort", () => clearTimeout(typing));

  fill(ctx.main,
    h("div", { class: "heading" }, h("h1", { tabindex: "-1" }, "Batches"), h("a", { class: "button primary push", href: "#/new" }, "New batch")),
    form, problem, table, empty, more, backends);
  table.hidden = true;
  poll(ctx.signal, async () => {
    try {
      return await load();
    } catch (err) {
      if (err.name !== "AbortError") fill(problem, errorBox(err));
      throw err;
    }
  });
}
