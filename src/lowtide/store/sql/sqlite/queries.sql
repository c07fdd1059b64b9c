-- The SQLite store's statements (lowtide.store.sqlite), one per `-- name:` block; the
-- PostgreSQL store has the same names (sql/postgres/queries.sql). Parameters are ?1, ?2...
-- in the same order as there (a statement may leave some out); their meaning is in the
-- calling method. Statuses and request states are written by name ({status.x}, {state.x},
-- {from.x}: see lowtide.store.queries).
--
-- Every write runs on the store's one writer thread, in a BEGIN IMMEDIATE transaction: no
-- two of these ever run at once, so nothing here locks rows or skips locked ones.

-- name: ping
SELECT 1

-- name: notify
-- absent: one process; the engine is woken directly.

-- === files ===================================================================================

-- name: insert_file
INSERT INTO files (id, account, purpose, filename, bytes, created_at, expires_at, status,
    blob_key, seq)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, (SELECT COALESCE(MAX(seq), 0) + 1 FROM files))

-- name: get_file
SELECT * FROM files WHERE id = ?1

-- name: list_files
SELECT * FROM files WHERE {where} ORDER BY seq {order} LIMIT {limit}

-- name: delete_file
DELETE FROM files WHERE id = ?1 AND account = ?2 RETURNING *

-- name: file_usage
SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM files WHERE account = ?1

-- name: kept_input
SELECT purpose, blob_key FROM kept_inputs WHERE batch_id = ?1

-- name: keep_inputs
-- A file gone (purpose, blob key, file id, account; one row per file): keep it as the input
-- of the account's batches still validating, which were created while the file existed.
INSERT INTO kept_inputs (batch_id, purpose, blob_key)
SELECT id, ?1, ?2 FROM batches
WHERE input_file_id = ?3 AND account = ?4 AND status = {status.validating}

-- name: queue_blob_deletions
-- One row per blob: (blob key, file id, queued at).
INSERT INTO blob_deletions (blob_key, file_id, queued_at) VALUES (?1, ?2, ?3)
ON CONFLICT (blob_key) DO NOTHING

-- === batches: control plane ==================================================================

-- name: insert_batch
-- Columns in the order of lowtide.store.rows.BATCH_COLUMNS (a test checks it).
INSERT INTO batches (id, account, endpoint, input_file_id, completion_window, status,
    end_status, model, metadata, name_lower, created_at, expires_at, output_file_id,
    error_file_id, errors, total, completed, failed, input_tokens, cached_tokens, output_tokens,
    reasoning_tokens, input_price, output_price, discount, currency, output_expires_after,
    in_progress_at, finalizing_at, completed_at, failed_at, expired_at, cancelling_at,
    cancelled_at, priority, max_cost, max_error_rate, seq)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19,
    ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33, ?34, ?35, ?36, ?37,
    (SELECT COALESCE(MAX(seq), 0) + 1 FROM batches))

-- name: get_batch
SELECT * FROM batches WHERE id = ?1

-- name: list_batches
-- Newest first; {where} holds the list filters (lowtide.store.filters).
SELECT * FROM batches WHERE {where} ORDER BY seq DESC LIMIT {limit}

-- name: count_live_batches
SELECT COUNT(*) FROM batches WHERE account = ?1 AND endpoint = ?2
AND status NOT IN {statuses.terminal}

-- name: cancel
-- The store reads the batch back afterwards, moved or not (get_batch).
UPDATE batches SET status = {status.cancelling}, end_status = {status.cancelled},
    cancelling_at = ?1, stop_reason = 'cancelled_by_user'
WHERE id = ?2 AND account = ?3 AND status IN {from.cancelling}

-- === engine: validation ======================================================================

-- name: claim_validation
UPDATE batches SET lease_owner = ?1, lease_until = ?2
WHERE id = (SELECT id FROM batches WHERE status = {status.validating} AND lease_until < ?3
            ORDER BY seq LIMIT 1)
RETURNING *

-- name: start_batch
UPDATE batches SET status = {status.in_progress}, in_progress_at = ?1, pace_at = ?1,
    model = ?2, total = ?3, input_price = ?4, output_price = ?5, discount = ?6, currency = ?7,
    lease_owner = NULL, lease_until = 0
WHERE id = ?8 AND lease_owner = ?9 AND status IN {from.in_progress}

-- name: fail_batch
UPDATE batches SET status = {status.failed}, failed_at = ?1, errors = ?2,
    lease_owner = NULL, lease_until = 0
WHERE id = ?3 AND lease_owner = ?4 AND status IN {from.failed}

-- name: drop_batch_lease
UPDATE batches SET lease_owner = NULL, lease_until = 0 WHERE id = ?1 AND lease_owner = ?2

-- name: delete_requests
DELETE FROM requests WHERE batch_id = ?1

-- name: insert_requests
INSERT INTO requests (batch_id, line, custom_id, byte_offset, length, send_order, prefix_group)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)

-- === engine: dispatch ========================================================================

-- name: active
-- Batches in progress and not paused, earliest deadline first, with what the serving order
-- reads (the store puts them in that order: lowtide.domain.priority).
SELECT b.id, b.account, b.model, b.endpoint, f.blob_key, b.expires_at, b.input_file_id,
    b.priority, b.total, b.completed + b.failed, b.in_progress_at, b.pace_at, b.pace_done,
    b.pace_prev_at, b.pace_prev_done, b.max_cost IS NOT NULL OR b.max_error_rate IS NOT NULL
FROM batches b LEFT JOIN files f ON f.id = b.input_file_id
WHERE b.status = {status.in_progress} AND b.paused_at IS NULL ORDER BY b.expires_at, b.seq

-- name: claimable_requests
-- The rows claim_requests takes next (same parameters), as one JSON array: in the same
-- transaction both statements see the same rows, and one value comes back in one step,
-- where UPDATE ... RETURNING would return each row in a step of its own (see record_finals).
-- INDEXED BY: the planner otherwise walks the primary key past every finished row of the
-- batch, so claims slowed from 1 to 4 ms over a 50k batch.
-- Claim order: (send_order, line), the order lowtide.domain.prefix gave at validation; the
-- rows come back unordered, with their send_order last, and the store sorts them.
SELECT json_group_array(json_array(line, custom_id, byte_offset, length, attempts,
    lease_epoch + 1, prefix_group, send_order))
FROM requests WHERE batch_id = ?1 AND line IN (
    SELECT line FROM requests INDEXED BY requests_by_state
    WHERE batch_id = ?1 AND state = {state.pending} AND not_before <= ?4
    ORDER BY send_order, line LIMIT ?5)

-- name: claim_requests
UPDATE requests SET state = {state.leased}, lease_owner = ?2, lease_until = ?3,
    lease_epoch = lease_epoch + 1
WHERE batch_id = ?1 AND line IN (
    SELECT line FROM requests INDEXED BY requests_by_state
    WHERE batch_id = ?1 AND state = {state.pending} AND not_before <= ?4
    ORDER BY send_order, line LIMIT ?5)

-- name: record_outcomes
-- absent: a group is applied by record_finals (record_final where a lease was lost),
-- record_retry and add_to_batch, and finished_batches says which batches are done.

-- name: record_finals
-- Final outcomes of a group, one statement for up to 64 of them: {values} is that many rows
-- of (state, attempts, status_code, request_id, result, error_code, error_message, batch_id,
-- line, epoch), as `?` marks. Each step of a statement gives the GIL up and takes it back,
-- and while the engine's thread holds it, taking it back waits up to a switch interval: one
-- UPDATE per row cost 7 us a row alone and 170-180 us a row next to a busy Python thread;
-- one UPDATE ... FROM (VALUES ...) of 230 rows, 8 and 15 us a row.
UPDATE requests SET state = o.column1, lease_owner = NULL, attempts = o.column2,
    status_code = o.column3, request_id = o.column4, result = o.column5,
    error_code = o.column6, error_message = o.column7
FROM (VALUES {values}) AS o
WHERE requests.batch_id = o.column8 AND requests.line = o.column9
  AND requests.lease_epoch = o.column10 AND requests.state = {state.leased}

-- name: record_final
-- One final outcome, the same columns as a row of record_finals; fenced by the epoch.
UPDATE requests SET state = ?1, lease_owner = NULL, attempts = ?2, status_code = ?3,
    request_id = ?4, result = ?5, error_code = ?6, error_message = ?7
WHERE batch_id = ?8 AND line = ?9 AND lease_epoch = ?10 AND state = {state.leased}

-- name: record_retry
-- (not_before, attempts, batch_id, line, epoch): back to pending, fenced by the epoch.
UPDATE requests SET state = {state.pending}, lease_owner = NULL, not_before = ?1, attempts = ?2
WHERE batch_id = ?3 AND line = ?4 AND lease_epoch = ?5 AND state = {state.leased}

-- name: add_to_batch
-- A group's counts (which may stop the batch: the trigger batches_stop_at_caps), the time
-- of the commit (?8), and the pace marks (lowtide.domain.pace): at the first commit ?9
-- seconds or more after the current mark opened, that mark becomes the previous one and a
-- new one opens now, with the lines ended so far.
UPDATE batches SET completed = completed + ?1, failed = failed + ?2,
    input_tokens = input_tokens + ?3, cached_tokens = cached_tokens + ?4,
    output_tokens = output_tokens + ?5, reasoning_tokens = reasoning_tokens + ?6,
    counted_at = ?8,
    pace_prev_at = CASE WHEN ?8 - pace_at >= ?9 THEN pace_at ELSE pace_prev_at END,
    pace_prev_done = CASE WHEN ?8 - pace_at >= ?9 THEN pace_done ELSE pace_prev_done END,
    pace_done = CASE WHEN ?8 - pace_at >= ?9 THEN completed + failed + ?1 + ?2
        ELSE pace_done END,
    pace_at = CASE WHEN ?8 - pace_at >= ?9 THEN ?8 ELSE pace_at END
WHERE id = ?7

-- name: finished_batches
-- {ids}: the batches a group touched, as `?` marks.
SELECT id FROM batches WHERE id IN ({ids}) AND completed + failed >= total

-- name: renew_requests
UPDATE requests SET lease_until = ?2 WHERE state = {state.leased} AND lease_owner = ?1

-- name: renew_batch_leases
UPDATE batches SET lease_until = ?2 WHERE lease_owner = ?1

-- name: release_requests
UPDATE requests SET state = {state.pending}, lease_owner = NULL
WHERE state = {state.leased} AND lease_owner = ?1

-- name: release_all_requests
-- Not the requests held by an offload chunk ('offload:<chunk id>'): the chunk outlives the
-- process, and gives them back itself.
UPDATE requests SET state = {state.pending}, lease_owner = NULL WHERE state = {state.leased}
AND lease_owner NOT LIKE 'offload:%'

-- name: drop_owner_batch_leases
UPDATE batches SET lease_owner = NULL, lease_until = 0 WHERE lease_owner = ?1

-- name: drop_all_batch_leases
UPDATE batches SET lease_owner = NULL, lease_until = 0 WHERE lease_owner IS NOT NULL

-- name: reclaim
UPDATE requests SET state = {state.pending}, lease_owner = NULL
WHERE state = {state.leased} AND lease_until < ?1

-- name: next_retry_at
SELECT MIN(not_before) FROM requests WHERE state = {state.pending} AND not_before > 0

-- === engine: concurrency slots (lowtide.store.slots) =========================================

-- name: record_slot_demand
-- How many slots a worker wants now, until its lease runs out.
INSERT INTO slot_demands (backend, owner, want, lease_until) VALUES (?1, ?2, ?3, ?4)
ON CONFLICT (backend, owner) DO UPDATE SET want = excluded.want,
    lease_until = excluded.lease_until

-- name: drop_slots_above
-- A lowered ceiling drops the slot rows above it.
DELETE FROM backend_slots WHERE backend = ?1 AND slot >= ?2

-- name: ensure_slots
-- Slot rows 0..limit-1 of a backend. (WHERE TRUE: SQLite's parser needs a WHERE between an
-- INSERT's SELECT and its ON CONFLICT.)
WITH RECURSIVE g (slot) AS (SELECT 0 UNION ALL SELECT slot + 1 FROM g WHERE slot + 1 < ?2)
INSERT INTO backend_slots (backend, slot) SELECT ?1, slot FROM g WHERE TRUE
ON CONFLICT DO NOTHING

-- name: renew_slots
UPDATE backend_slots SET lease_until = ?3 WHERE backend = ?1 AND owner = ?2

-- name: slot_demand
-- The workers that want slots of a backend (their lease has not run out), with how many
-- they want and how many they hold.
SELECT d.owner, d.want, (SELECT COUNT(*) FROM backend_slots s
    WHERE s.backend = d.backend AND s.owner = d.owner AND s.lease_until >= ?2)
FROM slot_demands d WHERE d.backend = ?1 AND d.lease_until >= ?2 AND d.want > 0

-- name: give_back_slots
UPDATE backend_slots SET owner = NULL, lease_until = 0
WHERE backend = ?1 AND slot IN (
    SELECT slot FROM backend_slots WHERE backend = ?1 AND owner = ?2
    ORDER BY slot DESC LIMIT ?3)

-- name: take_slots
UPDATE backend_slots SET owner = ?2, lease_until = ?3
WHERE backend = ?1 AND slot IN (
    SELECT slot FROM backend_slots WHERE backend = ?1 AND (owner IS NULL OR lease_until < ?4)
    ORDER BY slot LIMIT ?5)

-- name: release_owner_slots
UPDATE backend_slots SET owner = NULL, lease_until = 0 WHERE owner = ?1

-- name: release_all_slots
UPDATE backend_slots SET owner = NULL, lease_until = 0 WHERE owner IS NOT NULL

-- name: forget_owner_slot_demand
DELETE FROM slot_demands WHERE owner = ?1

-- name: forget_all_slot_demand
DELETE FROM slot_demands

-- === engine: fleet-wide rpm/tpm budgets (lowtide.engine.budgets, lowtide.store.budgets) ======

-- name: lock_budget
-- absent: a SQLite write transaction (BEGIN IMMEDIATE) already excludes every other writer.

-- name: settle_budget_slice
-- What a worker used of its last slice (the rest goes back to the fleet).
UPDATE budget_slices SET requests = ?3, tokens = ?4 WHERE id = ?1 AND owner = ?2

-- name: forget_budget_slices
-- Slices whose use ended a window ago or more count no longer.
DELETE FROM budget_slices WHERE backend = ?1 AND until <= ?2

-- name: budget_used
SELECT COALESCE(SUM(requests), 0), COALESCE(SUM(tokens), 0), MIN(until)
FROM budget_slices WHERE backend = ?1

-- name: take_budget_slice
INSERT INTO budget_slices (backend, owner, until, requests, tokens) VALUES (?1, ?2, ?3, ?4, ?5)
RETURNING id

-- === engine: expiry, cancel, finalisation ====================================================

-- name: expire
UPDATE batches SET status = {status.finalizing}, end_status = {status.expired},
    finalizing_at = ?1
WHERE status IN {from.finalizing} AND expires_at <= ?1
RETURNING id

-- name: to_finalize
SELECT id FROM batches b WHERE lease_until < ?1 AND (
    (status = {status.in_progress} AND completed + failed >= total)
    OR (status IN ({status.cancelling}, {status.finalizing}) AND NOT EXISTS (
        SELECT 1 FROM requests r WHERE r.batch_id = b.id AND r.state = {state.leased}
        AND r.lease_until >= ?1)))
ORDER BY seq

-- name: claim_finalization
-- A finished in_progress batch moves to finalizing (ending completed); a cancelling or
-- finalizing one keeps its status and the end status it was given.
UPDATE batches SET lease_owner = ?2, lease_until = ?3,
    status = CASE WHEN status = {status.in_progress} THEN {status.finalizing} ELSE status END,
    end_status = COALESCE(end_status, {status.completed}),
    finalizing_at = CASE WHEN status = {status.in_progress} THEN ?4 ELSE finalizing_at END
WHERE id = ?1 AND lease_until < ?5
AND (status IN ({status.cancelling}, {status.finalizing})
     OR (status = {status.in_progress} AND completed + failed >= total))
RETURNING *

-- name: results
SELECT line, state, CASE WHEN result IS NULL THEN custom_id END, result
FROM requests WHERE batch_id = ?1 AND line > ?2 ORDER BY line LIMIT ?3

-- name: batch_lease_owner
SELECT lease_owner FROM batches WHERE id = ?1

-- name: fail_unrun
UPDATE requests SET state = {state.failed}, error_code = ?2, error_message = ?3,
    lease_owner = NULL
WHERE batch_id = ?1 AND state IN ({state.pending}, {state.leased})

-- name: finish_batch
-- The terminal status ?1 and its timestamp; the move itself is checked by the database.
UPDATE batches SET status = ?1,
    completed_at = CASE WHEN ?1 = {status.completed} THEN ?2 ELSE completed_at END,
    expired_at = CASE WHEN ?1 = {status.expired} THEN ?2 ELSE expired_at END,
    cancelled_at = CASE WHEN ?1 = {status.cancelled} THEN ?2 ELSE cancelled_at END,
    output_file_id = ?3, error_file_id = ?4, failed = failed + ?5,
    lease_owner = NULL, lease_until = 0
WHERE id = ?6 AND lease_owner = ?7

-- === batch controls (lowtide.domain.controls): pause, stop, results so far, retries =====

-- name: pause
-- The store reads the batch back afterwards, paused or not (get_batch). A batch paused again
-- keeps its first paused_at.
UPDATE batches SET paused_at = COALESCE(paused_at, ?1)
WHERE id = ?2 AND account = ?3 AND status = {status.in_progress}

-- name: resume
-- (batch id, account, now): the pace starts afresh from now (the paused time is no pace).
UPDATE batches SET paused_at = NULL, pace_at = ?3, pace_done = completed + failed,
    pace_prev_at = 0, pace_prev_done = 0
WHERE id = ?1 AND account = ?2 AND status = {status.in_progress} AND paused_at IS NOT NULL

-- name: stop
-- (now, reason, batch id): stop a batch like a cancel, saying why.
UPDATE batches SET status = {status.cancelling}, end_status = {status.cancelled},
    cancelling_at = ?1, stop_reason = ?2
WHERE id = ?3 AND status IN {from.cancelling}

-- name: result_marks
-- (batch id, after): after line ?2, the first line with no result yet (NULL: none), and the
-- last line that has one, of each kind (output, error).
SELECT (SELECT MIN(line) FROM requests WHERE batch_id = ?1 AND line > ?2
            AND state IN ({state.pending}, {state.leased})),
    (SELECT MAX(line) FROM requests WHERE batch_id = ?1 AND line > ?2
        AND state = {state.succeeded}),
    (SELECT MAX(line) FROM requests WHERE batch_id = ?1 AND line > ?2
        AND state = {state.failed})

-- name: failed_requests
-- (batch id, after line, limit): a batch's requests that ended in error, in line order: where
-- each lies in the input file, and its error code as its error line has it.
SELECT line, byte_offset, length, COALESCE(error_code, 'http_' || status_code)
FROM requests WHERE batch_id = ?1 AND line > ?2 AND state = {state.failed}
ORDER BY line LIMIT ?3

-- name: model_paces
-- (model, since): the pace marks of the model's batches that ended lines since ?2.
SELECT status, in_progress_at, completed + failed, pace_at, pace_done, pace_prev_at,
    pace_prev_done, counted_at
FROM batches WHERE model = ?1 AND counted_at >= ?2

-- === operations ==============================================================================

-- name: status_counts
SELECT status, COUNT(*) FROM batches GROUP BY status

-- name: lines_pending
SELECT COALESCE(SUM(total - completed - failed), 0) FROM batches
WHERE status IN ({status.in_progress}, {status.cancelling}, {status.finalizing})

-- === accounts: rate limits, API keys, idempotency keys =======================================

-- name: forget_rate_minutes
-- (key, minute): forget the minutes before the last one.
DELETE FROM rate_limits WHERE minute < ?2 - 1

-- name: rate_limit_hit
INSERT INTO rate_limits (key, minute, count) VALUES (?1, ?2, 1)
ON CONFLICT (key, minute) DO UPDATE SET count = count + 1
RETURNING count

-- name: insert_api_key
INSERT INTO api_keys (id, digest, hint, account, label, created_at, revoked_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)

-- name: find_api_key
SELECT account FROM api_keys WHERE digest = ?1 AND revoked_at IS NULL

-- name: has_api_keys
SELECT EXISTS (SELECT 1 FROM api_keys)

-- name: list_api_keys
SELECT id, account, hint, created_at, label, revoked_at FROM api_keys
WHERE ?1 IS NULL OR account = ?1
ORDER BY created_at, id

-- name: revoke_api_key
-- A key revoked before keeps its first revoked_at.
UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1
RETURNING id, account, hint, created_at, label, revoked_at

-- name: claim_idempotency
-- Record an Idempotency-Key, replacing one recorded before ?7 (lapsed); no row comes back
-- when the key is held.
INSERT INTO idempotency_keys (account, kind, key, fingerprint, response, created_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)
ON CONFLICT (account, kind, key) DO UPDATE SET fingerprint = excluded.fingerprint,
    response = excluded.response, created_at = excluded.created_at
WHERE idempotency_keys.created_at < ?7
RETURNING 1

-- name: find_idempotency
SELECT fingerprint, response, created_at FROM idempotency_keys
WHERE account = ?1 AND kind = ?2 AND key = ?3 AND created_at >= ?4

-- name: forget_idempotency
DELETE FROM idempotency_keys WHERE created_at < ?1

-- === retention ===============================================================================

-- name: expire_files
DELETE FROM files WHERE id IN (
    SELECT id FROM files WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2)
RETURNING blob_key, id, purpose, account

-- name: blobs_to_delete
SELECT d.blob_key FROM blob_deletions d WHERE NOT EXISTS (
    SELECT 1 FROM batches b WHERE b.input_file_id = d.file_id
    AND b.status IN {statuses.live})
ORDER BY d.queued_at LIMIT ?1

-- name: forget_blob_deletions
-- One row per blob key.
DELETE FROM blob_deletions WHERE blob_key = ?1

-- name: forget_kept_inputs
-- One row per blob key.
DELETE FROM kept_inputs WHERE blob_key = ?1

-- name: retired_batches
SELECT id FROM batches b WHERE created_at < ?1
AND status IN {statuses.terminal}
AND EXISTS (SELECT 1 FROM requests r WHERE r.batch_id = b.id)
ORDER BY created_at LIMIT ?2

-- name: retire_requests
-- One row per batch id.
DELETE FROM requests WHERE batch_id = ?1

-- === the state machine's table (lowtide.store.migrations keeps it equal to domain MOVES) ====

-- name: batch_moves
SELECT src, dst FROM batch_moves ORDER BY src, dst

-- name: forget_batch_moves
DELETE FROM batch_moves

-- name: add_batch_move
INSERT INTO batch_moves (src, dst) VALUES (?1, ?2)

-- name: report_backend
-- An engine's view of one backend, replacing its previous one.
INSERT INTO backend_status (backend, owner, up, since, error, concurrency_limit, in_flight,
    updated_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
ON CONFLICT (backend, owner) DO UPDATE SET up = excluded.up, since = excluded.since,
    error = excluded.error, concurrency_limit = excluded.concurrency_limit,
    in_flight = excluded.in_flight, updated_at = excluded.updated_at

-- name: forget_backends
-- An engine's views (it stops), and views nobody refreshed since ?2 (their engine died).
DELETE FROM backend_status WHERE owner = ?1 OR updated_at < ?2

-- name: backend_statuses
SELECT backend, owner, up, since, error, concurrency_limit, in_flight, updated_at
FROM backend_status WHERE updated_at >= ?1 ORDER BY backend, owner

-- === offload to hosted Batch APIs (lowtide.store.sqlite.offload) ============================
-- A request held by a chunk is leased to 'offload:<chunk id>' until a far-away time: no
-- reclaim, heartbeat or dispatcher touches it; the chunk's own lease is in offload_chunks.

-- name: offload_candidates_first
-- (batch_id, now, longest line, how many): pending lines that may go upstream, in claim order.
SELECT line, length FROM requests INDEXED BY requests_by_state
WHERE batch_id = ?1 AND state = {state.pending} AND not_before <= ?2 AND length <= ?3
ORDER BY send_order, line LIMIT ?4

-- name: offload_candidates_last
-- As offload_candidates_first, from the other end: a spill takes the lines the HTTP backends
-- would reach last, so that the two do not contend for the same rows.
SELECT line, length FROM requests INDEXED BY requests_by_state
WHERE batch_id = ?1 AND state = {state.pending} AND not_before <= ?2 AND length <= ?3
ORDER BY send_order DESC, line DESC LIMIT ?4

-- name: offload_oversized
-- (batch_id, now, longest line, how many): pending lines too long for any upstream file.
SELECT line FROM requests
WHERE batch_id = ?1 AND state = {state.pending} AND not_before <= ?2 AND length > ?3
LIMIT ?4

-- name: offload_take
-- (batch_id, holder, lease_until, lines as a JSON array): lease those still pending.
UPDATE requests SET state = {state.leased}, lease_owner = ?2, lease_until = ?3,
    lease_epoch = lease_epoch + 1
WHERE batch_id = ?1 AND state = {state.pending} AND line IN (SELECT value FROM json_each(?4))
RETURNING line, lease_epoch, custom_id, attempts

-- name: offload_insert_chunk
INSERT INTO offload_chunks (id, batch_id, backend, state, lines, price_factor,
    completion_window, created_at, lease_owner, lease_epoch, lease_until, updated_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)

-- name: offload_insert_lines
-- One row per line: (chunk_id, line, batch_id, epoch).
INSERT INTO offload_lines (chunk_id, line, batch_id, epoch) VALUES (?1, ?2, ?3, ?4)

-- name: offload_chunk_lines
SELECT ol.line, r.custom_id, r.byte_offset, r.length, r.attempts, ol.epoch
FROM offload_lines ol JOIN requests r ON r.batch_id = ol.batch_id AND r.line = ol.line
WHERE ol.chunk_id = ?1 ORDER BY ol.line

-- name: offload_save_chunk
-- Everything a step changes; fenced by the chunk's lease (owner and epoch).
UPDATE offload_chunks SET state = ?1, bytes = ?2, file_id = ?3, upstream_id = ?4,
    upstream_status = ?5, output_file_id = ?6, error_file_id = ?7, creates = ?8,
    cancel_sent = ?9, recorded = ?10, completed = ?11, failed = ?12, input_tokens = ?13,
    cached_tokens = ?14, output_tokens = ?15, reasoning_tokens = ?16, error = ?17,
    updated_at = ?18
WHERE id = ?19 AND lease_owner = ?20 AND lease_epoch = ?21

-- name: offload_claim_chunks
-- (owner, lease_until, now, how many): unfinished chunks whose lease ran out.
UPDATE offload_chunks SET lease_owner = ?1, lease_until = ?2, lease_epoch = lease_epoch + 1
WHERE id IN (SELECT id FROM offload_chunks WHERE state <> 'done' AND lease_until < ?3
             ORDER BY created_at LIMIT ?4)
RETURNING *

-- name: offload_renew_chunks
UPDATE offload_chunks SET lease_until = ?2 WHERE lease_owner = ?1 AND state <> 'done'

-- name: offload_release_chunks
UPDATE offload_chunks SET lease_until = 0 WHERE lease_owner = ?1 AND state <> 'done'

-- name: offload_release_all_chunks
UPDATE offload_chunks SET lease_until = 0 WHERE state <> 'done'

-- name: offload_chunk_results
-- The lines whose result came from the chunk: final under the lease epoch the chunk held
-- them with, with a rendered line (a line finalisation failed as never run has none).
SELECT ol.line, r.state FROM offload_lines ol
JOIN requests r ON r.batch_id = ol.batch_id AND r.line = ol.line
WHERE ol.chunk_id = ?1 AND r.lease_epoch = ol.epoch
  AND r.state IN ({state.succeeded}, {state.failed}) AND r.result IS NOT NULL

-- name: offload_forget_lines
DELETE FROM offload_lines WHERE chunk_id = ?1

-- name: offload_shares
-- Per batch, backend and price factor: lines with a result from its chunks, lines its open
-- chunks hold and have not recorded yet, lines they recorded, tokens. {ids}: `?` marks.
SELECT batch_id, backend, price_factor, SUM(completed), SUM(failed),
    SUM(CASE WHEN state IN ('cleaning', 'done') THEN 0 ELSE lines - recorded END),
    SUM(CASE WHEN state IN ('cleaning', 'done') THEN 0 ELSE recorded END),
    SUM(input_tokens), SUM(cached_tokens), SUM(output_tokens), SUM(reasoning_tokens)
FROM offload_chunks WHERE batch_id IN ({ids})
GROUP BY batch_id, backend, price_factor ORDER BY batch_id, backend, price_factor

-- name: offload_chunks_of
SELECT * FROM offload_chunks WHERE batch_id = ?1 ORDER BY created_at, id
