// Upload a JSONL file and create a batch from it.

import { api } from "./api.js";
import { errorBox, fill, h } from "./dom.js";

const ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/chat/ds-test"];
const WINDOWS = ["24h", "48h", "72h", "7d", "14d"];
// Which form field an API error's ``param`` points at.
const FIELDS = {
  file: "batch-file", input_file_id: "batch-file", endpoint: "batch-endpoint",
  completion_window: "batch-window", "metadata.ds_name": "batch-name", "metadata.ds_description": "batch-description",
};

function field(id, label, control, hint) {
  const hintId = hint ? `${id}-hint` : null;
  if (hintId) control.setAttribute("aria-describedby", hintId);
  return h("div", { class: "field" }, h("label", { for: id }, label), control, hint && h("p", { id: hintId, class: "hint" }, hint));
}

/** The ``url`` of the file's first non-blank line, or null (not JSON, no url, too long). */
async function firstUrl(blob) {
  const head = await blob.slice(0, 1 << 20).text();
  const line = head.split("\n").find((l) => l.trim());
  try {
    const url = JSON.parse(line ?? "").url;
    return typeof url === "string" ? url : null;
  } catch {
    return null;
  }
}

export function render(ctx) {
  document.title = "New batch · lowtide";
  const file = h("input", { id: "batch-file", name: "file", type: "file", accept: ".jsonl,.json,.txt,application/jsonl,application/x-ndjson,text/plain", required: true });
  const endpoint = h("select", { id: "batch-endpoint", name: "endpoint" }, ENDPOINTS.map((e) => h("option", { value: e }, e)));
  const windowInput = h("input", { id: "batch-window", name: "completion_window", value: "24h", list: "batch-windows", required: true, pattern: "[1-9][0-9]{0,3}[hd]", autocomplete: "off", inputmode: "text" });
  const windows = h("datalist", { id: "batch-windows" }, WINDOWS.map((w) => h("option", { value: w })));
  const name = h("input", { id: "batch-name", name: "ds_name", maxlength: 100, autocomplete: "off" });
  const description = h("textarea", { id: "batch-description", name: "ds_description", maxlength: 200, rows: 3 });
  const submit = h("button", { type: "submit", class: "button primary" }, "Upload and create batch");
  const state = h("p", { class: "muted", role: "status" });
  const problem = h("div");
  const form = h("form", { class: "card narrow" },
    field("batch-file", "JSONL file", file, "One request per line: custom_id, method, url and body."),
    field("batch-endpoint", "Endpoint", endpoint, "Every line's url must be this endpoint."),
    field("batch-window", "Completion window", windowInput, "From 24h to 336h, or 1d to 14d."),
    windows,
    field("batch-name", "Name (optional)", name, "Up to 100 characters; the batches list filters on it."),
    field("batch-description", "Description (optional)", description, "Up to 200 characters."),
    problem,
    h("div", { class: "actions" }, submit, state));

  // The endpoint is the url of the file's lines: take it from the first one.
  file.addEventListener("change", async () => {
    const found = file.files[0] && await firstUrl(file.files[0]);
    if (found && ENDPOINTS.includes(found)) endpoint.value = found;
  });

  const busy = (text) => { state.textContent = text; submit.disabled = Boolean(text); };
  const fail = (err) => {
    busy("");
    fill(problem, errorBox(err));
    const target = document.getElementById(FIELDS[err.param] || "");
    if (target) { target.setAttribute("aria-invalid", "true"); target.focus(); }
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    fill(problem);
    form.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
    if (!form.reportValidity()) return;
    const metadata = {};
    if (name.value.trim()) metadata.ds_name = name.value.trim();
    if (description.value.trim()) metadata.ds_description = description.value.trim();
    let uploaded = null;
    try {
      busy("Uploading the file…");
      uploaded = await api.uploadFile(file.files[0]);
      busy("Creating the batch…");
      const batch = await api.createBatch({
        input_file_id: uploaded.id, endpoint: endpoint.value, completion_window: windowInput.value.trim(),
        metadata: Object.keys(metadata).length ? metadata : null,
      });
      ctx.navigate(`#/batches/${encodeURIComponent(batch.id)}`);
    } catch (err) {
      // The batch was refused: don't leave its input behind in the account's files.
      if (uploaded) api.deleteFile(uploaded.id).catch(() => {});
      fail(err);
    }
  });

  fill(ctx.main, h("h1", { tabindex: "-1" }, "New batch"), form);
}
