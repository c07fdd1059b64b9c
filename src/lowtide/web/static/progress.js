// Progress bars, and the rate and ETA of running batches, computed here from successive
// polls (the API reports counts, not speed).

import { h } from "./dom.js";
import { fmtDuration, fmtInt, fmtRate, fmtTime } from "./format.js";

const WINDOW_SECONDS = 30; // the rate is taken over about the last half minute
const samples = new Map(); // batch id -> [{t, done}], shared by every view

const NO_REQUESTS = {
  validating: "validating the file…", failed: "not run: the file is invalid", cancelled: "cancelled before it ran",
};

const doneOf = (batch) => batch.request_counts.completed + batch.request_counts.failed;

/** Record a poll's counts for the batch. */
export function observe(batch) {
  if (batch.status !== "in_progress") {
    samples.delete(batch.id);
    return;
  }
  const now = performance.now() / 1000;
  const list = samples.get(batch.id) || [];
  list.push({ t: now, done: doneOf(batch) });
  while (list.length > 2 && now - list[0].t > WINDOW_SECONDS) list.shift();
  samples.set(batch.id, list);
}

/** {rate, eta} in requests per second and seconds, or null until two polls are apart. */
export function speed(batch) {
  const list = samples.get(batch.id);
  if (!list || list.length < 2) return null;
  const first = list[0];
  const last = list[list.length - 1];
  const seconds = last.t - first.t;
  if (seconds < 0.5) return null;
  const rate = (last.done - first.done) / seconds;
  const left = batch.request_counts.total - doneOf(batch);
  return { rate, eta: rate > 0 ? left / rate : null };
}

/** "waiting for backend gpu-1: <cause>, since <time>" while every backend of the batch's model
 * is down (the server's waiting_for), else null. */
export function waitingText(batch) {
  const w = batch.waiting_for;
  return w ? `waiting for backend ${w.backend}: ${w.error || "no answer"}, since ${fmtTime(w.since)}` : null;
}

/** The server's pace, where it gives one (it sees every line end): lowtide's
 * ``lines_per_minute`` and ``estimated_completion_at``. */
function serverSpeed(batch) {
  if (batch.lines_per_minute == null) return null;
  const end = batch.estimated_completion_at;
  return { rate: batch.lines_per_minute / 60, eta: end == null ? null : Math.max(0, end - Date.now() / 1000) };
}

/** "12 req/s · 3 min 20 s left", "measuring…", what the batch waits for, "paused since…", or
 * "" when the batch is not running. */
export function speedText(batch) {
  if (batch.status !== "in_progress") return "";
  const waiting = waitingText(batch);
  if (waiting) return waiting;
  if (batch.paused_at) return `paused since ${fmtTime(batch.paused_at)}`;
  const s = serverSpeed(batch) || speed(batch);
  if (!s) return "measuring…";
  if (s.rate <= 0) return "stalled";
  return `${fmtRate(s.rate)} · ${s.eta === null ? "" : `${fmtDuration(s.eta)} left`}`;
}

export function percent(batch) {
  const { total } = batch.request_counts;
  return total > 0 ? Math.floor((100 * doneOf(batch)) / total) : 0;
}

function describe(batch) {
  const { total, completed, failed } = batch.request_counts;
  if (total === 0) return NO_REQUESTS[batch.status] || "no requests";
  return `${fmtInt(completed + failed)} of ${fmtInt(total)} done` + (failed ? `, ${fmtInt(failed)} failed` : "");
}

/** A progress bar: completed and failed segments, and a text under it. */
export function progressBar(label) {
  const ok = h("span", { class: "bar-ok" });
  const bad = h("span", { class: "bar-failed" });
  const bar = h("div", {
    class: "bar", role: "progressbar", "aria-label": label, "aria-valuemin": 0, "aria-valuemax": 100,
  }, ok, bad);
  const text = h("span", { class: "bar-text" });
  const root = h("div", { class: "progress" }, bar, text);
  root.update = (batch) => {
    const { total, completed, failed } = batch.request_counts;
    // Widths go through the CSSOM, which the page's Content-Security-Policy allows
    // (a style attribute in markup would be blocked).
    ok.style.width = total ? `${(100 * completed) / total}%` : "0";
    bad.style.width = total ? `${(100 * failed) / total}%` : "0";
    const value = percent(batch);
    bar.setAttribute("aria-valuenow", value);
    bar.setAttribute("aria-valuetext", `${value}% (${describe(batch)})`);
    text.textContent = total ? `${value}% · ${describe(batch)}` : describe(batch);
  };
  return root;
}
