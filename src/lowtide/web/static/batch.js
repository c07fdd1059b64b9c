// One batch: status timeline, counts, usage and cost, validation errors, downloads, cancel.

import { api, download } from "./api.js";
import { announce, confirmDialog, definitions, errorBox, fill, h, poll } from "./dom.js";
import { RUNNING, batchName, fmtCost, fmtInt, fmtTime, isoTime, statusLabel } from "./format.js";
import { observe, progressBar, speedText } from "./progress.js";
import { statusBadge } from "./batches.js";
import { controlButtons, controlFacts, resultsSoFarButton } from "./controls.js";

const POLL_MS = 1000;
const CANCELLABLE = new Set(["validating", "in_progress"]);
const TERMINAL_AT = { completed: "completed_at", failed: "failed_at", expired: "expired_at", cancelled: "cancelled_at" };

/** The steps a batch went through, and those still ahead while it runs. */
function steps(batch) {
  const list = [["Created", batch.created_at]];
  if (batch.in_progress_at || RUNNING.has(batch.status)) list.push(["In progress", batch.in_progress_at]);
  if (batch.cancelling_at) list.push(["Cancelling", batch.cancelling_at]);
  if (batch.finalizing_at || (RUNNING.has(batch.status) && !batch.cancelling_at)) list.push(["Finalizing", batch.finalizing_at]);
  if (TERMINAL_AT[batch.status]) list.push([statusLabel(batch.status), batch[TERMINAL_AT[batch.status]]]);
  else list.push([batch.cancelling_at ? "Cancelled" : "Completed", null]);
  return list;
}

function timeline(batch) {
  const list = steps(batch);
  const current = list.findLastIndex(([, at]) => at);
  return h("ol", { class: "timeline" }, list.map(([label, at], i) =>
    h("li", { class: at ? "done" : "pending", "aria-current": i === current ? "step" : null },
      h("span", { class: "step" }, label),
      at ? h("time", { datetime: isoTime(at) }, fmtTime(at)) : h("span", { class: "muted" }, "not yet"))));
}

function usage(batch) {
  const u = batch.usage || {};
  return definitions([
    ["Input tokens", fmtInt(u.input_tokens)],
    ["Cached input tokens", fmtInt(u.input_tokens_details?.cached_tokens)],
    ["Output tokens", fmtInt(u.output_tokens)],
    ["Reasoning tokens", fmtInt(u.output_tokens_details?.reasoning_tokens)],
    ["Total tokens", fmtInt(u.total_tokens)],
    ["Cost", h("strong", {}, fmtCost(batch.cost))],
  ]);
}

function counts(batch) {
  const { total, completed, failed } = batch.request_counts;
  return definitions([
    ["Total", fmtInt(total)],
    ["Completed", fmtInt(completed)],
    ["Failed", fmtInt(failed)],
    ["Remaining", fmtInt(Math.max(0, total - completed - failed))],
    ...ranWhere(batch),
  ], { class: "facts counts" });
}

/** Where the lines ran, when some went to a hosted Batch API (`offloaded`, docs/offload.md). */
function ranWhere(batch) {
  const off = batch.offloaded;
  if (!off) return [];
  const { completed, failed } = batch.request_counts;
  const upstream = Object.entries(off.by_backend).map(([name, lines]) => {
    const running = off.running_by_backend[name] || 0;
    return [`Ran on ${name}`, running ? `${fmtInt(lines)} (${fmtInt(running)} running)` : fmtInt(lines)];
  });
  return [["Ran here", fmtInt(Math.max(0, completed + failed - off.lines))], ...upstream];
}

function errorsTable(batch) {
  const data = batch.errors?.data || [];
  if (!data.length) return null;
  return h("section", { class: "card", "aria-labelledby": "errors-h" },
    h("h2", { id: "errors-h" }, `Validation errors (${fmtInt(data.length)})`),
    h("div", { class: "scroll" },
      h("table", { class: "list errors" },
        h("thead", {}, h("tr", {}, ["Line", "Code", "Parameter", "Message"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, data.map((e) => h("tr", {},
          h("td", { "data-label": "Line", class: "num" }, e.line ?? ""),
          h("td", { "data-label": "Code" }, h("code", {}, e.code ?? "")),
          h("td", { "data-label": "Parameter" }, e.param ?? ""),
          h("td", { "data-label": "Message" }, e.message ?? "")))))));
}

function details(batch) {
  return definitions([
    ["ID", h("code", {}, batch.id)],
    ["Endpoint", h("code", {}, batch.endpoint)],
    ["Model", batch.model || "—"],
    ["Completion window", batch.completion_window],
    ["Expires", h("time", { datetime: isoTime(batch.expires_at) }, fmtTime(batch.expires_at))],
    ...controlFacts(batch),
  ]);
}

/** Why a batch shows no result files: not ended yet, or failed validation (no line ran). */
function noFilesText(batch) {
  if (batch.status === "failed") return "No result files: the input file failed validation, so no line ran. The errors above say why.";
  if (["completed", "expired", "cancelled"].includes(batch.status)) return "No result files.";
  return "Result files appear here when the batch ends.";
}

function downloadButton(label, fileId, problem) {
  const button = h("button", { type: "button", class: "button" }, label);
  button.addEventListener("click", async () => {
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    fill(problem);
    try {
      const meta = await api.getFile(fileId);
      await download(fileId, meta.filename);
      announce(`${label}: ${meta.filename} saved`);
    } catch (err) {
      fill(problem, errorBox(err));
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  });
  return button;
}

export function render(ctx, batchId) {
  document.title = "Batch · lowtide";
  const title = h("h1", { tabindex: "-1" }, batchId);
  const description = h("p", { class: "lead" });
  const status = h("span");
  const problem = h("div");
  const loadProblem = h("div");
  const crumb = h("span", { "aria-current": "page" }, batchId);
  const errors = h("div");
  const bar = progressBar("Progress");
  const speed = h("p", { class: "speed muted" });
  const countsBox = h("div");
  const timelineBox = h("div");
  const usageBox = h("div");
  const detailsBox = h("div");
  const files = h("div", { class: "actions wrap" });
  const soFar = h("div", { class: "actions wrap" });
  const cancel = h("button", { type: "button", class: "button danger push", hidden: true }, "Cancel batch");
  let shownFiles = "";
  let batch = null;

  const show = (b) => {
    batch = b;
    observe(b);
    document.title = `${batchName(b)} · lowtide`;
    title.textContent = batchName(b);
    crumb.textContent = batchName(b);
    description.textContent = b.metadata?.ds_description || "";
    description.hidden = !description.textContent;
    fill(status, statusBadge(b.status));
    bar.update(b);
    speed.textContent = speedText(b);
    fill(countsBox, counts(b));
    fill(timelineBox, timeline(b));
    fill(usageBox, usage(b));
    fill(detailsBox, details(b));
    fill(errors, errorsTable(b));
    cancel.hidden = !CANCELLABLE.has(b.status);
    controls.update(b);
    soFar.hidden = ["validating", "failed"].includes(b.status);
    // Rebuild the download buttons only when the set of files changed, to keep the focus.
    const key = [b.input_file_id, b.output_file_id, b.error_file_id].join();
    if (key !== shownFiles) {
      shownFiles = key;
      fill(files,
        downloadButton("Download input", b.input_file_id, problem),
        b.output_file_id && downloadButton("Download output", b.output_file_id, problem),
        b.error_file_id && downloadButton("Download errors", b.error_file_id, problem),
        !b.output_file_id && !b.error_file_id && h("p", { class: "muted small" }, noFilesText(b)));
    }
  };

  const controls = controlButtons(ctx, batchId, { show: (b) => show(b), problem, restart: () => restart() });
  fill(soFar, resultsSoFarButton(batchId, problem),
    h("p", { class: "muted small" }, "The output and error lines recorded so far, in line order."));

  cancel.addEventListener("click", async () => {
    const yes = await confirmDialog({
      title: `Cancel ${batchName(batch)}?`,
      body: "Requests already sent finish; the others are not sent. The results so far are kept in the output and error files.",
      confirm: "Cancel batch",
      cancel: "Keep running",
    });
    if (!yes) return;
    fill(problem);
    try {
      show(await api.cancelBatch(batchId));
      announce("Cancelling the batch");
      restart();
    } catch (err) {
      fill(problem, errorBox(err));
    }
  });

  let polling = false;
  const restart = () => {
    if (polling) return;
    polling = true;
    poll(ctx.signal, async () => {
      try {
        show(await api.getBatch(batchId, ctx.signal));
        fill(loadProblem);
      } catch (err) {
        if (err.name === "AbortError") throw err;
        fill(loadProblem, errorBox(err));
        if (err.status !== 404) throw err; // retried by poll
        polling = false;
        return null;
      }
      if (RUNNING.has(batch.status)) return POLL_MS;
      polling = false;
      return null;
    });
  };

  const section = (id, heading, ...body) =>
    h("section", { class: "card", "aria-labelledby": id }, h("h2", { id }, heading), ...body);

  fill(ctx.main,
    h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "#/batches" }, "Batches"), " / ", crumb),
    h("div", { class: "heading" }, title, status, h("span", { class: "push actions" }, controls, cancel)),
    description, loadProblem, problem, errors,
    h("div", { class: "grid" },
      section("progress-h", "Progress", bar, speed, countsBox),
      section("timeline-h", "Timeline", timelineBox),
      section("usage-h", "Usage and cost", usageBox),
      section("files-h", "Files", files, soFar),
      section("details-h", "Details", detailsBox)));

  restart();
}
