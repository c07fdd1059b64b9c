// Sign in with an API key: it is checked with one list call, then kept for this tab. A server
// with no keys at all (every caller is the account "default", on loopback) needs no sign-in.

import { api, session } from "./api.js";
import { errorBox, fill, h } from "./dom.js";

/** True when the server answers without a key; asked with a plain fetch, so that its 401
 * does not count as a refused key. */
async function keysOff(signal) {
  try {
    const resp = await fetch("/v1/batches?limit=1", { cache: "no-store", credentials: "omit", signal });
    return resp.ok;
  } catch {
    return false;
  }
}

export async function render(ctx, { message } = {}) {
  if (!message && await keysOff(ctx.signal)) {
    session.set(""); // an empty key: signed in, and no Authorization header is sent
    ctx.signedIn();
    return;
  }
  if (ctx.signal.aborted) return;
  document.title = "Sign in · lowtide";
  const error = h("div", { id: "signin-error" }, errorBox(message && { message }));
  const input = h("input", {
    id: "api-key", name: "api-key", type: "password", autocomplete: "off", spellcheck: "false",
    autocapitalize: "off", "aria-describedby": "api-key-hint", "aria-invalid": message ? "true" : null,
  });
  const button = h("button", { type: "submit", class: "button primary" }, "Sign in");
  const form = h("form", { class: "card narrow", novalidate: true },
    h("div", { class: "field" },
      h("label", { for: "api-key" }, "API key"),
      input,
      h("p", { id: "api-key-hint", class: "hint" },
        "Kept in this browser tab only (session storage) and sent as the Bearer key; ",
        "closing the tab forgets it.")),
    error,
    h("div", { class: "actions" }, button));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    fill(error);
    session.set(input.value.trim());
    try {
      await api.listBatches({ limit: 1 });
      ctx.signedIn();
    } catch (err) {
      // A 401 signs out and re-renders this view with the API's message; show anything else.
      if (err.status !== 401) {
        session.clear();
        fill(error, errorBox(err));
        button.disabled = false;
      }
    }
  });

  fill(ctx.main,
    h("h1", { tabindex: "-1" }, "Sign in"),
    h("p", {}, "Use one of this server's API keys to see the account's batches and files."),
    form);
  input.focus();
}
