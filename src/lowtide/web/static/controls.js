// The batch controls on a batch's page (lowtide's extensions, docs/extensions.md): pause and
// resume, retry of the failed lines, the results so far, and what the controls say of the
// batch (priority, caps, why it stopped).

import { api, saveBlob } from "./api.js";
import { announce, confirmDialog, errorBox, fill, h } from "./dom.js";
import { batchName, fmtCost, fmtInt, fmtTime, isoTime } from "./format.js";

const TERMINAL = new Set(["completed", "failed", "expired", "cancelled"]);
const STOPS = {
  max_cost: "it reached its cost cap",
  max_error_rate: "its error rate went over its cap",
  cancelled_by_user: "it was cancelled",
};

/** Pause / Resume and Retry buttons; ``update(batch)`` shows those that apply. */
export function controlButtons(ctx, batchId, { show, problem, restart }) {
  const pause = h("button", { type: "button", class: "button", hidden: true }, "Pause");
  const resume = h("button", { type: "button", class: "button primary", hidden: true }, "Resume");
  const retry = h("button", { type: "button", class: "button", hidden: true }, "Retry failed lines");
  let batch = null;

  const act = async (button, call, done) => {
    button.disabled = true;
    fill(problem);
    try {
      show(await call());
      announce(done);
      restart();
    } catch (err) {
      fill(problem, errorBox(err));
    } finally {
      button.disabled = false;
    }
  };
  pause.addEventListener("click", () => act(pause, () => api.pauseBatch(batchId), "Batch paused"));
  resume.addEventListener("click", () => act(resume, () => api.resumeBatch(batchId), "Batch resumed"));
  retry.addEventListener("click", async () => {
    const failed = batch.request_counts.failed;
    const yes = await confirmDialog({
      title: `Retry the failed lines of ${batchName(batch)}?`,
      body: `A new batch runs the ${fmtInt(failed)} line(s) that ended in error, as they were in the input file, with the same endpoint and window.`,
      confirm: "Retry failed lines",
      cancel: "Not now",
      danger: false,
    });
    if (!yes) return;
    retry.disabled = true;
    fill(problem);
    try {
      const made = await api.retryBatch(batchId);
      announce("Retry batch created");
      ctx.navigate(`#/batches/${encodeURIComponent(made.id)}`);
    } catch (err) {
      fill(problem, errorBox(err));
      retry.disabled = false;
    }
  });

  const group = h("span", { class: "actions" }, pause, resume, retry);
  group.update = (b) => {
    batch = b;
    const running = b.status === "in_progress";
    pause.hidden = !running || b.paused_at != null;
    resume.hidden = !running || b.paused_at == null;
    retry.hidden = !TERMINAL.has(b.status) || !b.request_counts.failed;
  };
  return group;
}

/** A button that saves the result lines recorded so far (output and error lines, in line
 * order), while the batch runs or after. */
export function resultsSoFarButton(batchId, problem) {
  const button = h("button", { type: "button", class: "button" }, "Results so far");
  button.addEventListener("click", async () => {
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    fill(problem);
    try {
      const filename = `${batchId}_results_so_far.jsonl`;
      await saveBlob(await api.resultsBlob(batchId), filename);
      announce(`Results so far: ${filename} saved`);
    } catch (err) {
      fill(problem, errorBox(err));
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  });
  return button;
}

/** The controls' facts for the Details list: only those the batch has. */
export function controlFacts(batch) {
  const facts = [];
  if (batch.paused_at && batch.status === "in_progress") {
    facts.push(["Paused since", h("time", { datetime: isoTime(batch.paused_at) }, fmtTime(batch.paused_at))]);
  }
  if (batch.stop_reason) facts.push(["Stopped", STOPS[batch.stop_reason] || batch.stop_reason]);
  if (batch.priority) facts.push(["Priority", String(batch.priority)]);
  if (batch.max_cost != null) facts.push(["Cost cap", fmtCost({ amount: batch.max_cost, currency: batch.cost?.currency || "USD" })]);
  if (batch.max_error_rate != null) facts.push(["Error rate cap", `${Math.round(batch.max_error_rate * 1000) / 10}%`]);
  if (batch.metadata?.retry_of) {
    facts.push(["Retry of", h("a", { href: `#/batches/${encodeURIComponent(batch.metadata.retry_of)}` }, batch.metadata.retry_of)]);
  }
  return facts;
}
