// How numbers, times, money and statuses read on the page.

export const RUNNING = new Set(["validating", "in_progress", "finalizing", "cancelling"]);
export const STATUSES = [
  "validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled",
];
const LABELS = {
  validating: "Validating", in_progress: "In progress", finalizing: "Finalizing", completed: "Completed",
  failed: "Failed", expired: "Expired", cancelling: "Cancelling", cancelled: "Cancelled",
};

export const statusLabel = (status) => LABELS[status] || status;

const integer = new Intl.NumberFormat();
export const fmtInt = (n) => integer.format(n ?? 0);

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

/** Seconds since the epoch, as local time; "" when absent. */
export const fmtTime = (seconds) => (seconds ? dateTime.format(new Date(seconds * 1000)) : "");
export const isoTime = (seconds) => (seconds ? new Date(seconds * 1000).toISOString() : "");

export function fmtCost(cost) {
  if (!cost) return "";
  const amount = Number(cost.amount) || 0;
  try {
    // Batch costs are often fractions of a cent: show up to six decimals, at least two.
    return new Intl.NumberFormat(undefined, {
      style: "currency", currency: cost.currency, minimumFractionDigits: 2, maximumFractionDigits: 6,
    }).format(amount);
  } catch {
    return `${amount} ${cost.currency}`; // not an ISO 4217 code
  }
}

export function fmtDuration(seconds) {
  if (!Number.isFinite(seconds)) return "";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  const hours = Math.floor(s / 3600);
  if (hours < 48) return `${hours} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

export function fmtRate(perSecond) {
  if (perSecond >= 10) return `${Math.round(perSecond)} req/s`;
  if (perSecond >= 1) return `${perSecond.toFixed(1)} req/s`;
  return `${(perSecond * 60).toFixed(1)} req/min`;
}

export function fmtBytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = n ?? 0;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

export const batchName = (batch) => batch.metadata?.ds_name || batch.id;
