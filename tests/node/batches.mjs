// Drives lowtide with the official openai package for Node.js, as a user's script would:
// upload, create, retrieve, list with a filter, cancel, download both result files, and a
// wrong key. Prints one JSON object of what it saw on stdout; tests/node/test_node_sdk.py
// starts lowtide and checks it. Exits 1, with the error on stderr, if a call fails unexpectedly.
//
// Environment: LOWTIDE_BASE_URL (ending in /v1), LOWTIDE_API_KEY, LOWTIDE_MODEL.

import OpenAI, { AuthenticationError, toFile } from "openai";

const baseURL = process.env.LOWTIDE_BASE_URL;
const apiKey = process.env.LOWTIDE_API_KEY;
const model = process.env.LOWTIDE_MODEL;
const TERMINAL = new Set(["completed", "failed", "expired", "cancelled"]);
const DEADLINE_MS = 60_000; // against hangs only

const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 30_000 });

function line(customId, content) {
  return {
    custom_id: customId,
    method: "POST",
    url: "/v1/chat/completions",
    body: { model, messages: [{ role: "user", content }], max_tokens: 8 },
  };
}

async function upload(lines, name) {
  const text = lines.map((l) => JSON.stringify(l)).join("\n") + "\n";
  return client.files.create({ file: await toFile(Buffer.from(text), name), purpose: "batch" });
}

async function create(file, dsName) {
  return client.batches.create({
    input_file_id: file.id,
    endpoint: "/v1/chat/completions",
    completion_window: "24h",
    metadata: { ds_name: dsName },
  });
}

async function waitFor(id, statuses = TERMINAL) {
  const deadline = Date.now() + DEADLINE_MS;
  for (;;) {
    const batch = await client.batches.retrieve(id);
    if (statuses.has(batch.status)) return batch;
    if (Date.now() > deadline) throw new Error(`batch ${id} stuck in ${batch.status}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function listIds(query) {
  const ids = [];
  // lowtide's filters ride along as query parameters; every page, by the SDK's pagination.
  for await (const batch of client.batches.list({ limit: 1, ...query })) ids.push(batch.id);
  return ids;
}

async function jsonLines(fileId) {
  if (!fileId) return [];
  const text = await (await client.files.content(fileId)).text();
  return text.split("\n").filter((l) => l).map((l) => JSON.parse(l));
}

async function wrongKey() {
  const stranger = new OpenAI({ baseURL, apiKey: "sk-not-a-key-000000", maxRetries: 0 });
  try {
    await stranger.batches.list();
    return { thrown: false };
  } catch (err) {
    return {
      thrown: true,
      authentication_error: err instanceof AuthenticationError,
      status: err.status,
      code: err.code ?? null,
      type: err.type ?? null,
    };
  }
}

async function main() {
  const tag = `node-sdk-${process.pid}`;
  const lines = [
    ...Array.from({ length: 6 }, (_, i) => line(`n${i}`, `question ${i}`)),
    line("n-bad", "this one FAIL400"),
  ];
  const file = await upload(lines, "node-input.jsonl");
  const created = await create(file, tag);
  const done = await waitFor(created.id);

  // Slow lines (the fake upstream holds each for a second), cancelled once they run.
  const slow = Array.from({ length: 60 }, (_, i) => line(`s${i}`, `SLOW ${i}`));
  const toCancel = await create(await upload(slow, "slow.jsonl"), tag);
  await waitFor(toCancel.id, new Set(["in_progress", ...TERMINAL]));
  const cancelling = await client.batches.cancel(toCancel.id);
  const cancelled = await waitFor(toCancel.id);

  const result = {
    file: { id: file.id, purpose: file.purpose, filename: file.filename, bytes: file.bytes },
    created: { id: created.id, status: created.status, metadata: created.metadata },
    done: {
      id: done.id,
      status: done.status,
      request_counts: done.request_counts,
      usage: done.usage ?? null,
      output_file_id: done.output_file_id,
      error_file_id: done.error_file_id,
    },
    cancel_answer: cancelling.status,
    cancelled: {
      id: cancelled.id,
      status: cancelled.status,
      request_counts: cancelled.request_counts,
      error_file_id: cancelled.error_file_id ?? null,
    },
    listed_completed: await listIds({ status: "completed", ds_name: tag }),
    listed_cancelled: await listIds({ status: "cancelled", ds_name: tag }),
    listed_all: await listIds({ ds_name: tag }),
    output_lines: await jsonLines(done.output_file_id),
    error_lines: await jsonLines(done.error_file_id),
    cancelled_error_lines: await jsonLines(cancelled.error_file_id),
    wrong_key: await wrongKey(),
  };
  process.stdout.write(JSON.stringify(result) + "\n");
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
