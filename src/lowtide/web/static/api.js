// The JSON API, called with the key of this tab. The key lives in sessionStorage (gone when
// the tab closes) and leaves the page only as the Authorization header, never in a URL.

const KEY = "lowtide.apiKey";
const BASE = "/v1";

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  get signedIn() { return sessionStorage.getItem(KEY) !== null; },
  set(key) { sessionStorage.setItem(KEY, key); },
  clear() { sessionStorage.removeItem(KEY); },
};

/** An error answer of the API: the OpenAI envelope's message, param and code. */
export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `The server answered ${status}.`);
    this.status = status;
    this.param = error?.param ?? null;
    this.code = error?.code ?? null;
  }
}

async function toError(resp) {
  let body = null;
  try { body = await resp.json(); } catch { /* not JSON: keep the status alone */ }
  return new ApiError(resp.status, body?.error);
}

async function request(method, path, { json, form, signal, query } = {}) {
  const headers = { Accept: "application/json" };
  const key = session.key;
  if (key) headers.Authorization = `Bearer ${key}`;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form; // the browser writes the multipart boundary itself
  }
  const url = BASE + path + (query ? `?${new URLSearchParams(query)}` : "");
  const resp = await fetch(url, {
    method, headers, body, signal, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer",
  });
  if (!resp.ok) {
    const error = await toError(resp);
    if (resp.status === 401) {
      // A refused key is useless for every later call: forget it and ask for another.
      session.clear();
      window.dispatchEvent(new CustomEvent("lowtide:signed-out", { detail: error.message }));
    }
    throw error;
  }
  return resp;
}

async function json(method, path, options) {
  return (await request(method, path, options)).json();
}

function compact(params) {
  return Object.fromEntries(Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== ""));
}

const id = (value) => encodeURIComponent(value);

export const api = {
  listBatches: ({ status, name, after, limit = 100 } = {}, signal) =>
    json("GET", "/batches", { signal, query: compact({ status, ds_name: name, after, limit }) }),
  getBatch: (batchId, signal) => json("GET", `/batches/${id(batchId)}`, { signal }),
  createBatch: (params) => json("POST", "/batches", { json: params }),
  cancelBatch: (batchId) => json("POST", `/batches/${id(batchId)}/cancel`),
  // The batch controls (lowtide's extensions).
  pauseBatch: (batchId) => json("POST", `/batches/${id(batchId)}/pause`),
  resumeBatch: (batchId) => json("POST", `/batches/${id(batchId)}/resume`),
  retryBatch: (batchId) => json("POST", `/batches/${id(batchId)}/retry`),
  async resultsBlob(batchId, kind = "all") {
    return (await request("GET", `/batches/${id(batchId)}/results`, { query: { kind } })).blob();
  },
  listFiles: (signal) => json("GET", "/files", { signal }),
  listBackends: (signal) => json("GET", "/backends", { signal }),
  getFile: (fileId) => json("GET", `/files/${id(fileId)}`),
  deleteFile: (fileId) => json("DELETE", `/files/${id(fileId)}`),
  uploadFile(file, purpose = "batch") {
    const form = new FormData();
    form.append("purpose", purpose);
    form.append("file", file, file.name);
    return json("POST", "/files", { form });
  },
  async fileBlob(fileId) {
    return (await request("GET", `/files/${id(fileId)}/content`)).blob();
  },
};

/** Save a file through a Blob URL, so the download needs no key in its URL. */
export async function download(fileId, filename) {
  await saveBlob(await api.fileBlob(fileId), filename || `${fileId}.jsonl`);
}

/** Save a Blob under ``filename``. */
export async function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  // The click starts the download at once; the Blob can go a little later.
  setTimeout(() => URL.revokeObjectURL(url), 30_000);
}
