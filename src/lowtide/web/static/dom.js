// Tiny DOM helpers. Text always goes in as text nodes, never as HTML, so nothing a batch or
// file carries (names, error messages) can inject markup.

/**
 * h("a", { href: "#/x", class: "c", onclick: fn }, "text", child)
 * Attributes set to null, undefined or false are left out; true sets an empty attribute.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A <dl> from [term, description] pairs; each description may be a node or text. */
export function definitions(pairs, attrs = {}) {
  return h("dl", { class: "facts", ...attrs },
    pairs.map(([term, value]) => h("div", {}, h("dt", {}, term), h("dd", {}, value))));
}

/**
 * Call ``tick`` now and then again after the delay (ms) it returns, until it returns null or
 * the signal aborts (the view was left). Skips the call while the tab is hidden.
 */
export function poll(signal, tick) {
  let timer = null;
  const run = async () => {
    if (signal.aborted) return;
    let delay = 1000;
    try {
      if (!document.hidden) delay = await tick();
    } catch (error) {
      if (signal.aborted || error?.name === "AbortError") return;
      delay = 5000; // a failed refresh is retried later; the view shows the last good data
    }
    if (delay !== null && !signal.aborted) timer = setTimeout(run, delay);
  };
  signal.addEventListener("abort", () => clearTimeout(timer));
  run();
}

/** Tell screen readers about something that changed without a page change. */
export function announce(text) {
  const region = document.getElementById("announcer");
  region.textContent = "";
  // A fresh text node after a tick makes the live region speak even for a repeated message.
  setTimeout(() => { region.textContent = text; }, 50);
}

/** An alert box for an error, or null; ``role=alert`` is read out at once. */
export function errorBox(error) {
  if (!error) return null;
  const message = error.message || String(error);
  return h("div", { class: "alert", role: "alert" }, message);
}

/** A modal confirmation; resolves true only when the confirm button is pressed. */
export function confirmDialog({ title, body, confirm, cancel = "Keep it", danger = true }) {
  return new Promise((resolve) => {
    const titleId = `dialog-title-${Math.random().toString(36).slice(2)}`;
    const dialog = h("dialog", { class: "dialog", "aria-labelledby": titleId });
    const opener = document.activeElement;
    const done = (value) => {
      dialog.close();
      dialog.remove();
      if (opener instanceof HTMLElement && opener.isConnected) opener.focus();
      resolve(value);
    };
    const keep = h("button", { type: "button", class: "button", onclick: () => done(false) }, cancel);
    const yes = h("button", { type: "button", class: danger ? "button danger" : "button primary", onclick: () => done(true) }, confirm);
    fill(dialog, h("h2", { id: titleId }, title), h("p", {}, body), h("div", { class: "actions" }, keep, yes));
    dialog.addEventListener("cancel", (event) => { event.preventDefault(); done(false); }); // Escape
    document.body.append(dialog);
    dialog.showModal();
    keep.focus(); // the safe choice has the focus
  });
}
