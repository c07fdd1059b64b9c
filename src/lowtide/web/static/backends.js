// The backends as the engines see them (GET /v1/backends, docs/extensions.md): up or down and
// since when, the last error, and the concurrency limit each works to now (adaptive or fixed).

import { api } from "./api.js";
import { fill, h } from "./dom.js";
import { fmtInt, fmtTime, isoTime } from "./format.js";

const STATES = { up: "Up", down: "Down", unknown: "Unknown" };

function stateCell(backend) {
  const badge = h("span", { class: `badge backend-${backend.state}` }, STATES[backend.state] || backend.state);
  if (!backend.since) return badge;
  return [badge, " ", h("span", { class: "muted small" }, "since ",
    h("time", { datetime: isoTime(backend.since) }, fmtTime(backend.since)))];
}

function row(backend) {
  return h("tr", { dataset: { backend: backend.name } },
    h("th", { scope: "row", "data-label": "Backend" }, backend.name),
    h("td", { "data-label": "Models" }, (backend.models || []).join(", ")),
    h("td", { "data-label": "State" }, stateCell(backend)),
    h("td", { "data-label": "Limit", class: "num" }, fmtInt(backend.concurrency_limit)),
    h("td", { "data-label": "In flight", class: "num" }, fmtInt(backend.in_flight)),
    h("td", { "data-label": "Last error", class: "small" }, backend.error || "—"));
}

/** A section listing the backends; ``load()`` refreshes it (quietly empty on a server without
 * backends, such as one that serves only the test model). */
export function backendsSection() {
  const tbody = h("tbody");
  const table = h("table", { class: "list backends" },
    h("caption", { class: "visually-hidden" }, "Backends"),
    h("thead", {}, h("tr", {}, ["Backend", "Models", "State", "Limit", "In flight", "Last error"].map((c) => h("th", { scope: "col" }, c)))),
    tbody);
  const section = h("section", { "aria-labelledby": "backends-h", hidden: true },
    h("h2", { id: "backends-h" }, "Backends"),
    h("p", { class: "muted small" }, "The concurrency limit each backend works to now, and whether it answers."),
    table);
  section.load = async (signal) => {
    const page = await api.listBackends(signal);
    fill(tbody, page.data.map(row));
    section.hidden = page.data.length === 0;
  };
  return section;
}
