// The page's router: #/batches, #/batches/<id>, #/new, #/files; sign-in before any of them.

import { session } from "./api.js";
import * as batch from "./batch.js";
import * as batches from "./batches.js";
import * as files from "./files.js";
import * as newBatch from "./newbatch.js";
import * as signin from "./signin.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const ROUTES = [
  [/^#\/batches\/([^/]+)$/, "batches", (ctx, m) => batch.render(ctx, decodeURIComponent(m[1]))],
  [/^#\/batches$/, "batches", (ctx) => batches.render(ctx)],
  [/^#\/new$/, "new", (ctx) => newBatch.render(ctx)],
  [/^#\/files$/, "files", (ctx) => files.render(ctx)],
];

let current = null; // the AbortController of the shown view: aborting stops its polls and fetches

function context() {
  current?.abort();
  current = new AbortController();
  return {
    main,
    signal: current.signal,
    navigate: (hash) => { location.hash = hash; },
    signedIn: () => show(true),
  };
}

function markNav(name) {
  nav.hidden = !session.signedIn;
  // On a server without keys there is nothing to sign out of.
  document.getElementById("sign-out").hidden = session.key === "";
  for (const link of nav.querySelectorAll("a[data-route]")) {
    if (link.dataset.route === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function show(moveFocus, message) {
  const ctx = context();
  if (!session.signedIn) {
    markNav(null);
    signin.render(ctx, { message });
    return;
  }
  const found = ROUTES.map(([re, name, view]) => [location.hash.match(re), name, view]).find(([m]) => m);
  if (!found) {
    location.replace("#/batches"); // fires hashchange, which renders it
    return;
  }
  const [m, name, view] = found;
  markNav(name);
  view(ctx, m);
  // After a page change, start keyboard and screen-reader users at the new page's heading.
  if (moveFocus) main.querySelector("h1")?.focus();
}

window.addEventListener("hashchange", () => show(true));
window.addEventListener("lowtide:signed-out", (event) => show(true, event.detail));
document.getElementById("sign-out").addEventListener("click", () => {
  session.clear();
  show(true);
});
show(false);
