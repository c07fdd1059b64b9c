// The account's files: list, download, delete.

import { api, download } from "./api.js";
import { announce, confirmDialog, errorBox, fill, h } from "./dom.js";
import { fmtBytes, fmtTime, isoTime } from "./format.js";

function row(file, problem, onDeleted) {
  const save = h("button", { type: "button", class: "button small", "aria-label": `Download ${file.filename}` }, "Download");
  const remove = h("button", { type: "button", class: "button small danger", "aria-label": `Delete ${file.filename}` }, "Delete");
  const tr = h("tr", { dataset: { id: file.id } },
    h("th", { scope: "row", "data-label": "Name" }, file.filename, h("span", { class: "muted small" }, file.id)),
    h("td", { "data-label": "Purpose" }, file.purpose),
    h("td", { "data-label": "Size", class: "num" }, fmtBytes(file.bytes)),
    h("td", { "data-label": "Created" }, h("time", { datetime: isoTime(file.created_at) }, fmtTime(file.created_at))),
    h("td", { "data-label": "Actions", class: "actions" }, save, remove));

  save.addEventListener("click", async () => {
    save.disabled = true;
    fill(problem);
    try {
      await download(file.id, file.filename);
      announce(`${file.filename} saved`);
    } catch (err) {
      fill(problem, errorBox(err));
    } finally {
      save.disabled = false;
    }
  });
  remove.addEventListener("click", async () => {
    const yes = await confirmDialog({
      title: `Delete ${file.filename}?`,
      body: "The file's content is removed for good.",
      confirm: "Delete file",
      cancel: "Keep it",
    });
    if (!yes) return;
    fill(problem);
    try {
      await api.deleteFile(file.id);
      tr.remove();
      onDeleted();
      announce(`${file.filename} deleted`);
    } catch (err) {
      fill(problem, errorBox(err));
    }
  });
  return tr;
}

export async function render(ctx) {
  document.title = "Files · lowtide";
  const problem = h("div");
  const tbody = h("tbody");
  const table = h("table", { class: "list files", hidden: true },
    h("caption", { class: "visually-hidden" }, "Files, newest first"),
    h("thead", {}, h("tr", {}, ["Name", "Purpose", "Size", "Created", "Actions"].map((c) => h("th", { scope: "col" }, c)))),
    tbody);
  const empty = h("p", { class: "empty", hidden: true }, "No files.");
  const refresh = () => {
    table.hidden = tbody.children.length === 0;
    empty.hidden = !table.hidden;
  };
  fill(ctx.main, h("div", { class: "heading" }, h("h1", { tabindex: "-1" }, "Files")), problem, table, empty);
  try {
    const page = await api.listFiles(ctx.signal);
    fill(tbody, page.data.map((file) => row(file, problem, refresh)));
    refresh();
  } catch (err) {
    if (err.name !== "AbortError") fill(problem, errorBox(err));
  }
}
