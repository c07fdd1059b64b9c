-- The PostgreSQL store's statements (lowtide.store.postgres), one per `-- name:` block; the
-- SQLite store has the same names (sql/sqlite/queries.sql). Parameters are $1, $2... in the
-- same order as there; their meaning is in the calling method. Statuses and request states
-- are written by name ({status.x}, {state.x}, {from.x}: see lowtide.store.queries).
--
-- Rows locked with FOR UPDATE are always picked in a MATERIALIZED CTE and joined: written as
-- `WHERE key IN (SELECT ... LIMIT n FOR UPDATE)` the planner may rescan the subquery once
-- per outer row, and the statement then updates more than n rows (seen here with a nested
-- loop semi join: a claim of 3 took 5). Statements that lock many request rows lock them in
-- (batch_id, line) order, and request rows before batch rows, so that they cannot deadlock.

-- name: ping
SELECT 1

-- name: notify
SELECT pg_notify($1, '')

-- === files ===================================================================================

-- name: insert_file
INSERT INTO files (id, account, purpose, filename, bytes, created_at, expires_at, status,
    blob_key)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)

-- name: get_file
SELECT * FROM files WHERE id = $1

-- name: list_files
SELECT * FROM files WHERE {where} ORDER BY seq {order} LIMIT {limit}

-- name: delete_file
DELETE FROM files WHERE id = $1 AND account = $2 RETURNING *

-- name: file_usage
SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM files WHERE account = $1

-- name: kept_input
SELECT purpose, blob_key FROM kept_inputs WHERE batch_id = $1

-- name: keep_inputs
-- Files gone (purposes, blob keys, file ids, accounts): keep them as the input of the
-- account's batches still validating, which were created while the file existed.
INSERT INTO kept_inputs (batch_id, purpose, blob_key)
SELECT b.id, f.purpose, f.blob_key
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS f (purpose, blob_key, file_id,
    account)
JOIN batches b ON b.input_file_id = f.file_id AND b.account = f.account
WHERE b.status = {status.validating}

-- name: queue_blob_deletions
INSERT INTO blob_deletions (blob_key, file_id, queued_at)
SELECT k, f, $3 FROM unnest($1::text[], $2::text[]) AS d (k, f)
ON CONFLICT (blob_key) DO NOTHING

-- === batches: control plane ==================================================================

-- name: insert_batch
-- Columns in the order of lowtide.store.rows.BATCH_COLUMNS (a test checks it).
INSERT INTO batches (id, account, endpoint, input_file_id, completion_window, status,
    end_status, model, metadata, name_lower, created_at, expires_at, output_file_id,
    error_file_id, errors, total, completed, failed, input_tokens, cached_tokens, output_tokens,
    reasoning_tokens, input_price, output_price, discount, currency, output_expires_after,
    in_progress_at, finalizing_at, completed_at, failed_at, expired_at, cancelling_at,
    cancelled_at, priority, max_cost, max_error_rate)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::json, $10, $11, $12, $13, $14, $15::json, $16, $17,
    $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34, $35,
    $36, $37)

-- name: get_batch
SELECT * FROM batches WHERE id = $1

-- name: list_batches
-- Newest first; {where} holds the list filters (lowtide.store.filters).
SELECT * FROM batches WHERE {where} ORDER BY seq DESC LIMIT {limit}

-- name: count_live_batches
SELECT COUNT(*) FROM batches WHERE account = $1 AND endpoint = $2
AND status NOT IN {statuses.terminal}

-- name: cancel
-- The batch as it is after the cancel, or as it was if it could not be cancelled.
WITH moved AS (
    UPDATE batches SET status = {status.cancelling}, end_status = {status.cancelled},
        cancelling_at = $1, stop_reason = 'cancelled_by_user'
    WHERE id = $2 AND account = $3 AND status IN {from.cancelling}
    RETURNING *)
SELECT * FROM moved
UNION ALL
SELECT * FROM batches WHERE id = $2 AND account = $3 AND NOT EXISTS (SELECT 1 FROM moved)

-- === engine: validation ======================================================================

-- name: claim_validation
UPDATE batches SET lease_owner = $1, lease_until = $2
WHERE id = (SELECT id FROM batches WHERE status = {status.validating} AND lease_until < $3
            ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING *

-- name: start_batch
WITH moved AS (
    UPDATE batches SET status = {status.in_progress}, in_progress_at = $1,
        pace_at = $1::bigint, model = $2, total = $3, input_price = $4, output_price = $5, discount = $6, currency = $7,
        lease_owner = NULL, lease_until = 0
    WHERE id = $8 AND lease_owner = $9 AND status IN {from.in_progress}
    RETURNING 1)
SELECT COUNT(*) FROM moved

-- name: fail_batch
WITH moved AS (
    UPDATE batches SET status = {status.failed}, failed_at = $1, errors = $2::json,
        lease_owner = NULL, lease_until = 0
    WHERE id = $3 AND lease_owner = $4 AND status IN {from.failed}
    RETURNING 1)
SELECT COUNT(*) FROM moved

-- name: drop_batch_lease
UPDATE batches SET lease_owner = NULL, lease_until = 0 WHERE id = $1 AND lease_owner = $2

-- name: delete_requests
DELETE FROM requests WHERE batch_id = $1

-- name: insert_requests
-- absent: the rows are copied in (COPY, asyncpg's copy_records_to_table), not inserted.

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
-- absent: claim_requests returns the rows it claims.

-- name: claim_requests
-- Workers claiming from the same batch at once skip each other's rows instead of waiting.
-- Claim order: (send_order, line), the order lowtide.domain.prefix gave at validation;
-- RETURNING gives the rows unordered, with their send_order last, and the store sorts them.
WITH picked AS MATERIALIZED (
    SELECT line FROM requests
    WHERE batch_id = $1 AND state = {state.pending} AND not_before <= $4
    ORDER BY send_order, line LIMIT $5 FOR UPDATE SKIP LOCKED)
UPDATE requests r SET state = {state.leased}, lease_owner = $2, lease_until = $3,
    lease_epoch = r.lease_epoch + 1
FROM picked p WHERE r.batch_id = $1 AND r.line = p.line
RETURNING r.line, r.custom_id, r.byte_offset, r.length, r.attempts, r.lease_epoch,
    r.prefix_group, r.send_order

-- name: record_outcomes
-- The group commit, in one statement: lock the rows in key order, apply each outcome whose
-- lease is still the current one (the fence), add what applied to its batch's counters,
-- and say which batches now have every request done. $16 is the time of the commit; the
-- counters may stop a batch (the trigger batches_stop_at_caps), and the pace marks move on as
-- add_to_batch says in the SQLite store ($17 is the window, lowtide.domain.pace).
WITH o AS (
    SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::text[], $5::int[],
        $6::text[], $7::bytea[], $8::text[], $9::text[], $10::bigint[], $11::bigint[],
        $12::bigint[], $13::bigint[], $14::float8[], $15::int[])
    AS o(batch_id, line, epoch, kind, status_code, request_id, result, error_code,
         error_message, input_tokens, cached_tokens, output_tokens, reasoning_tokens,
         not_before, attempts)),
locked AS MATERIALIZED (
    SELECT r.batch_id, r.line FROM requests r JOIN o USING (batch_id, line)
    ORDER BY r.batch_id, r.line FOR UPDATE OF r),
applied AS (
    UPDATE requests r SET
        state = CASE o.kind WHEN {outcome.retry} THEN {state.pending}
            WHEN {outcome.succeeded} THEN {state.succeeded} ELSE {state.failed} END,
        lease_owner = NULL,
        attempts = o.attempts,
        not_before = CASE WHEN o.kind = {outcome.retry} THEN o.not_before ELSE r.not_before END,
        status_code = CASE WHEN o.kind = {outcome.retry} THEN r.status_code ELSE o.status_code END,
        request_id = CASE WHEN o.kind = {outcome.retry} THEN r.request_id ELSE o.request_id END,
        result = CASE WHEN o.kind = {outcome.retry} THEN r.result ELSE o.result END,
        error_code = CASE WHEN o.kind = {outcome.retry} THEN r.error_code ELSE o.error_code END,
        error_message = CASE WHEN o.kind = {outcome.retry} THEN r.error_message
            ELSE o.error_message END
    FROM o JOIN locked l USING (batch_id, line)
    WHERE r.batch_id = o.batch_id AND r.line = o.line
      AND r.lease_epoch = o.epoch AND r.state = {state.leased}
    RETURNING o.batch_id, o.kind, o.input_tokens, o.cached_tokens, o.output_tokens,
        o.reasoning_tokens),
delta AS (
    SELECT batch_id,
        COUNT(*) FILTER (WHERE kind = {outcome.succeeded}) AS completed,
        COUNT(*) FILTER (WHERE kind = {outcome.failed}) AS failed,
        COALESCE(SUM(input_tokens) FILTER (WHERE kind = {outcome.succeeded}), 0) AS input_tokens,
        COALESCE(SUM(cached_tokens) FILTER (WHERE kind = {outcome.succeeded}), 0) AS cached_tokens,
        COALESCE(SUM(output_tokens) FILTER (WHERE kind = {outcome.succeeded}), 0) AS output_tokens,
        COALESCE(SUM(reasoning_tokens) FILTER (WHERE kind = {outcome.succeeded}), 0) AS reasoning
    FROM applied GROUP BY batch_id),
locked_batches AS MATERIALIZED (
    SELECT b.id FROM batches b JOIN delta d ON d.batch_id = b.id
    ORDER BY b.id FOR UPDATE OF b)
UPDATE batches b SET
    completed = b.completed + d.completed, failed = b.failed + d.failed,
    input_tokens = b.input_tokens + d.input_tokens,
    cached_tokens = b.cached_tokens + d.cached_tokens,
    output_tokens = b.output_tokens + d.output_tokens,
    reasoning_tokens = b.reasoning_tokens + d.reasoning,
    counted_at = $16::bigint,
    pace_prev_at = CASE WHEN $16 - b.pace_at >= $17 THEN b.pace_at ELSE b.pace_prev_at END,
    pace_prev_done = CASE WHEN $16 - b.pace_at >= $17 THEN b.pace_done ELSE b.pace_prev_done END,
    pace_done = CASE WHEN $16 - b.pace_at >= $17
        THEN b.completed + b.failed + d.completed + d.failed ELSE b.pace_done END,
    pace_at = CASE WHEN $16 - b.pace_at >= $17 THEN $16 ELSE b.pace_at END
FROM delta d JOIN locked_batches lb ON lb.id = d.batch_id
WHERE b.id = d.batch_id
RETURNING b.id, b.completed + b.failed >= b.total

-- name: record_finals
-- absent: record_outcomes applies every outcome of a group in one statement.

-- name: record_final
-- absent: record_outcomes applies every outcome of a group in one statement.

-- name: record_retry
-- absent: record_outcomes applies every outcome of a group in one statement.

-- name: add_to_batch
-- absent: record_outcomes adds to the batches' counters in the same statement.

-- name: finished_batches
-- absent: record_outcomes says which batches are done.

-- name: renew_requests
WITH mine AS MATERIALIZED (
    SELECT batch_id, line FROM requests WHERE state = {state.leased} AND lease_owner = $1
    ORDER BY batch_id, line FOR UPDATE)
UPDATE requests r SET lease_until = $2 FROM mine m
WHERE r.batch_id = m.batch_id AND r.line = m.line

-- name: renew_batch_leases
UPDATE batches SET lease_until = $2 WHERE lease_owner = $1

-- name: release_requests
WITH mine AS MATERIALIZED (
    SELECT batch_id, line FROM requests WHERE state = {state.leased} AND lease_owner = $1
    ORDER BY batch_id, line FOR UPDATE)
UPDATE requests r SET state = {state.pending}, lease_owner = NULL FROM mine m
WHERE r.batch_id = m.batch_id AND r.line = m.line

-- name: release_all_requests
-- Not the requests held by an offload chunk ('offload:<chunk id>'): the chunk outlives the
-- process, and gives them back itself.
UPDATE requests SET state = {state.pending}, lease_owner = NULL WHERE state = {state.leased}
AND lease_owner NOT LIKE 'offload:%'

-- name: drop_owner_batch_leases
UPDATE batches SET lease_owner = NULL, lease_until = 0 WHERE lease_owner = $1

-- name: drop_all_batch_leases
UPDATE batches SET lease_owner = NULL, lease_until = 0 WHERE lease_owner IS NOT NULL

-- name: reclaim
-- A row locked by someone else is being committed or renewed right now: skip it (if its
-- lease really ran out, the next sweep gets it).
WITH expired AS MATERIALIZED (
    SELECT batch_id, line FROM requests WHERE state = {state.leased} AND lease_until < $1
    FOR UPDATE SKIP LOCKED)
UPDATE requests r SET state = {state.pending}, lease_owner = NULL FROM expired e
WHERE r.batch_id = e.batch_id AND r.line = e.line

-- name: next_retry_at
SELECT MIN(not_before) FROM requests WHERE state = {state.pending} AND not_before > 0

-- === engine: fleet-wide concurrency slots (lowtide.store.slots) =============================

-- name: record_slot_demand
-- How many slots a worker wants now, until its lease runs out. Taking the backend's lock
-- first (until commit) makes the grants of one backend one at a time: a fair share computed
-- from a picture that another worker is changing at the same moment would not be fair.
INSERT INTO slot_demands (backend, owner, want, lease_until)
SELECT $1, $2, $3, $4 FROM (SELECT pg_advisory_xact_lock(hashtext('lowtide-slots:' || $1))) l
ON CONFLICT (backend, owner) DO UPDATE SET want = EXCLUDED.want,
    lease_until = EXCLUDED.lease_until

-- name: drop_slots_above
-- A lowered ceiling drops the slot rows above it.
DELETE FROM backend_slots WHERE backend = $1 AND slot >= $2

-- name: ensure_slots
-- Slot rows 0..limit-1 of a backend.
INSERT INTO backend_slots (backend, slot)
SELECT $1, g FROM generate_series(0, $2 - 1) g
WHERE NOT EXISTS (SELECT 1 FROM backend_slots WHERE backend = $1 AND slot = $2 - 1)
ON CONFLICT DO NOTHING

-- name: renew_slots
WITH renewed AS (
    UPDATE backend_slots SET lease_until = $3 WHERE backend = $1 AND owner = $2 RETURNING 1)
SELECT COUNT(*) FROM renewed

-- name: slot_demand
-- The workers that want slots of a backend (their lease has not run out), with how many
-- they want and how many they hold.
SELECT d.owner, d.want, (SELECT COUNT(*) FROM backend_slots s
    WHERE s.backend = d.backend AND s.owner = d.owner AND s.lease_until >= $2)
FROM slot_demands d WHERE d.backend = $1 AND d.lease_until >= $2 AND d.want > 0

-- name: give_back_slots
WITH extra AS MATERIALIZED (
    SELECT slot FROM backend_slots WHERE backend = $1 AND owner = $2
    ORDER BY slot DESC LIMIT $3 FOR UPDATE)
UPDATE backend_slots s SET owner = NULL, lease_until = 0 FROM extra e
WHERE s.backend = $1 AND s.slot = e.slot

-- name: take_slots
WITH free AS MATERIALIZED (
    SELECT slot FROM backend_slots WHERE backend = $1 AND (owner IS NULL OR lease_until < $4)
    ORDER BY slot LIMIT $5 FOR UPDATE SKIP LOCKED),
taken AS (
    UPDATE backend_slots s SET owner = $2, lease_until = $3 FROM free f
    WHERE s.backend = $1 AND s.slot = f.slot
    RETURNING 1)
SELECT COUNT(*) FROM taken

-- name: release_owner_slots
UPDATE backend_slots SET owner = NULL, lease_until = 0 WHERE owner = $1

-- name: release_all_slots
UPDATE backend_slots SET owner = NULL, lease_until = 0 WHERE owner IS NOT NULL

-- name: forget_owner_slot_demand
DELETE FROM slot_demands WHERE owner = $1

-- name: forget_all_slot_demand
DELETE FROM slot_demands

-- === engine: fleet-wide rpm/tpm budgets (lowtide.engine.budgets, lowtide.store.budgets) ======

-- name: lock_budget
-- A backend's budget is granted one worker at a time (until commit): two workers reading the
-- same live slices would both take the same room.
SELECT pg_advisory_xact_lock(hashtext('lowtide-budget:' || $1))

-- name: settle_budget_slice
-- What a worker used of its last slice (the rest goes back to the fleet).
UPDATE budget_slices SET requests = $3, tokens = $4 WHERE id = $1 AND owner = $2

-- name: forget_budget_slices
-- Slices whose use ended a window ago or more count no longer.
DELETE FROM budget_slices WHERE backend = $1 AND until <= $2

-- name: budget_used
SELECT COALESCE(SUM(requests), 0), COALESCE(SUM(tokens), 0), MIN(until)
FROM budget_slices WHERE backend = $1

-- name: take_budget_slice
INSERT INTO budget_slices (backend, owner, until, requests, tokens) VALUES ($1, $2, $3, $4, $5)
RETURNING id

-- === engine: expiry, cancel, finalisation ====================================================

-- name: expire
WITH due AS MATERIALIZED (
    SELECT id FROM batches WHERE status IN {from.finalizing} AND expires_at <= $1
    FOR UPDATE SKIP LOCKED)
UPDATE batches b SET status = {status.finalizing}, end_status = {status.expired},
    finalizing_at = $1
FROM due d WHERE b.id = d.id
RETURNING b.id

-- name: to_finalize
SELECT id FROM batches b WHERE lease_until < $1 AND (
    (status = {status.in_progress} AND completed + failed >= total)
    OR (status IN ({status.cancelling}, {status.finalizing}) AND NOT EXISTS (
        SELECT 1 FROM requests r WHERE r.batch_id = b.id AND r.state = {state.leased}
        AND r.lease_until >= $1)))
ORDER BY seq

-- name: claim_finalization
-- A finished in_progress batch moves to finalizing (ending completed); a cancelling or
-- finalizing one keeps its status and the end status it was given.
UPDATE batches SET lease_owner = $2, lease_until = $3,
    status = CASE WHEN status = {status.in_progress} THEN {status.finalizing} ELSE status END,
    end_status = COALESCE(end_status, {status.completed}),
    finalizing_at = CASE WHEN status = {status.in_progress} THEN $4 ELSE finalizing_at END
WHERE id = (
    SELECT id FROM batches WHERE id = $1 AND lease_until < $5
    AND (status IN ({status.cancelling}, {status.finalizing})
         OR (status = {status.in_progress} AND completed + failed >= total))
    FOR UPDATE SKIP LOCKED)
RETURNING *

-- name: results
SELECT line, state, CASE WHEN result IS NULL THEN custom_id END, result
FROM requests WHERE batch_id = $1 AND line > $2 ORDER BY line LIMIT $3

-- name: batch_lease_owner
SELECT lease_owner FROM batches WHERE id = $1

-- name: fail_unrun
WITH unrun AS MATERIALIZED (
    SELECT line FROM requests
    WHERE batch_id = $1 AND state IN ({state.pending}, {state.leased})
    ORDER BY line FOR UPDATE)
UPDATE requests r SET state = {state.failed}, error_code = $2, error_message = $3,
    lease_owner = NULL
FROM unrun u WHERE r.batch_id = $1 AND r.line = u.line

-- name: finish_batch
-- The terminal status $1 and its timestamp; the move itself is checked by the database.
WITH moved AS (
    UPDATE batches SET status = $1,
        completed_at = CASE WHEN $1 = {status.completed} THEN $2 ELSE completed_at END,
        expired_at = CASE WHEN $1 = {status.expired} THEN $2 ELSE expired_at END,
        cancelled_at = CASE WHEN $1 = {status.cancelled} THEN $2 ELSE cancelled_at END,
        output_file_id = $3, error_file_id = $4, failed = failed + $5,
        lease_owner = NULL, lease_until = 0
    WHERE id = $6 AND lease_owner = $7
    RETURNING 1)
SELECT COUNT(*) FROM moved

-- === batch controls (lowtide.domain.controls): pause, stop, results so far, retries =====

-- name: pause
-- The batch as it is after the pause, or as it was if it could not be paused. A batch
-- paused again keeps its first paused_at.
WITH moved AS (
    UPDATE batches SET paused_at = COALESCE(paused_at, $1)
    WHERE id = $2 AND account = $3 AND status = {status.in_progress}
    RETURNING *)
SELECT * FROM moved
UNION ALL
SELECT * FROM batches WHERE id = $2 AND account = $3 AND NOT EXISTS (SELECT 1 FROM moved)

-- name: resume
-- (batch id, account, now): the pace starts afresh from now (the paused time is no pace).
WITH moved AS (
    UPDATE batches SET paused_at = NULL, pace_at = $3, pace_done = completed + failed,
        pace_prev_at = 0, pace_prev_done = 0
    WHERE id = $1 AND account = $2 AND status = {status.in_progress} AND paused_at IS NOT NULL
    RETURNING *)
SELECT * FROM moved
UNION ALL
SELECT * FROM batches WHERE id = $1 AND account = $2 AND NOT EXISTS (SELECT 1 FROM moved)

-- name: stop
-- (now, reason, batch id): stop a batch like a cancel, saying why.
WITH moved AS (
    UPDATE batches SET status = {status.cancelling}, end_status = {status.cancelled},
        cancelling_at = $1, stop_reason = $2
    WHERE id = $3 AND status IN {from.cancelling}
    RETURNING 1)
SELECT COUNT(*) FROM moved

-- name: result_marks
-- (batch id, after): after line $2, the first line with no result yet (NULL: none), and the
-- last line that has one, of each kind (output, error).
SELECT (SELECT MIN(line) FROM requests WHERE batch_id = $1 AND line > $2
            AND state IN ({state.pending}, {state.leased})),
    (SELECT MAX(line) FROM requests WHERE batch_id = $1 AND line > $2
        AND state = {state.succeeded}),
    (SELECT MAX(line) FROM requests WHERE batch_id = $1 AND line > $2
        AND state = {state.failed})

-- name: failed_requests
-- (batch id, after line, limit): a batch's requests that ended in error, in line order: where
-- each lies in the input file, and its error code as its error line has it.
SELECT line, byte_offset, length, COALESCE(error_code, 'http_' || status_code)
FROM requests WHERE batch_id = $1 AND line > $2 AND state = {state.failed}
ORDER BY line LIMIT $3

-- name: model_paces
-- (model, since): the pace marks of the model's batches that ended lines since $2.
SELECT status, in_progress_at, completed + failed, pace_at, pace_done, pace_prev_at,
    pace_prev_done, counted_at
FROM batches WHERE model = $1 AND counted_at >= $2

-- === operations ==============================================================================

-- name: status_counts
SELECT status, COUNT(*) FROM batches GROUP BY status

-- name: lines_pending
SELECT COALESCE(SUM(total - completed - failed), 0) FROM batches
WHERE status IN ({status.in_progress}, {status.cancelling}, {status.finalizing})

-- === accounts: rate limits, API keys, idempotency keys =======================================

-- name: forget_rate_minutes
-- absent: rate_limit_hit forgets finished minutes in the same statement.

-- name: rate_limit_hit
-- Forget finished minutes and count this hit, in one statement.
WITH gone AS (DELETE FROM rate_limits WHERE minute < $2 - 1)
INSERT INTO rate_limits AS t (key, minute, count) VALUES ($1, $2, 1)
ON CONFLICT (key, minute) DO UPDATE SET count = t.count + 1
RETURNING count

-- name: insert_api_key
INSERT INTO api_keys (id, digest, hint, account, label, created_at, revoked_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)

-- name: find_api_key
SELECT account FROM api_keys WHERE digest = $1 AND revoked_at IS NULL

-- name: has_api_keys
SELECT EXISTS (SELECT 1 FROM api_keys)

-- name: list_api_keys
SELECT id, account, hint, created_at, label, revoked_at FROM api_keys
WHERE $1::text IS NULL OR account = $1
ORDER BY created_at, id

-- name: revoke_api_key
-- A key revoked before keeps its first revoked_at.
UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1
RETURNING id, account, hint, created_at, label, revoked_at

-- name: claim_idempotency
-- Record an Idempotency-Key, replacing one recorded before $7 (lapsed). A key held by a
-- transaction still running makes this wait for it; if that one commits, no row comes back.
INSERT INTO idempotency_keys AS k (account, kind, key, fingerprint, response, created_at)
VALUES ($1, $2, $3, $4, $5::json, $6)
ON CONFLICT (account, kind, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint,
    response = EXCLUDED.response, created_at = EXCLUDED.created_at
WHERE k.created_at < $7
RETURNING 1

-- name: find_idempotency
SELECT fingerprint, response, created_at FROM idempotency_keys
WHERE account = $1 AND kind = $2 AND key = $3 AND created_at >= $4

-- name: forget_idempotency
DELETE FROM idempotency_keys WHERE created_at < $1

-- === retention ===============================================================================

-- name: expire_files
-- Expired files, oldest expiry first; workers sweeping at once skip each other's rows.
WITH due AS MATERIALIZED (
    SELECT id FROM files WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2
    FOR UPDATE SKIP LOCKED)
DELETE FROM files f USING due d WHERE f.id = d.id
RETURNING f.blob_key, f.id, f.purpose, f.account

-- name: blobs_to_delete
SELECT d.blob_key FROM blob_deletions d WHERE NOT EXISTS (
    SELECT 1 FROM batches b WHERE b.input_file_id = d.file_id
    AND b.status IN {statuses.live})
ORDER BY d.queued_at LIMIT $1

-- name: forget_blob_deletions
DELETE FROM blob_deletions WHERE blob_key = ANY($1::text[])

-- name: forget_kept_inputs
DELETE FROM kept_inputs WHERE blob_key = ANY($1::text[])

-- name: retired_batches
SELECT id FROM batches b WHERE created_at < $1
AND status IN {statuses.terminal}
AND EXISTS (SELECT 1 FROM requests r WHERE r.batch_id = b.id)
ORDER BY created_at LIMIT $2

-- name: retire_requests
DELETE FROM requests WHERE batch_id = ANY($1::text[])

-- === the state machine's table (lowtide.store.migrations keeps it equal to domain MOVES) ====

-- name: batch_moves
SELECT src, dst FROM batch_moves ORDER BY src, dst

-- name: forget_batch_moves
DELETE FROM batch_moves

-- name: add_batch_move
INSERT INTO batch_moves (src, dst) VALUES ($1, $2)

-- name: report_backend
-- An engine's view of one backend, replacing its previous one.
INSERT INTO backend_status (backend, owner, up, since, error, concurrency_limit, in_flight,
    updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (backend, owner) DO UPDATE SET up = excluded.up, since = excluded.since,
    error = excluded.error, concurrency_limit = excluded.concurrency_limit,
    in_flight = excluded.in_flight, updated_at = excluded.updated_at

-- name: forget_backends
-- An engine's views (it stops), and views nobody refreshed since $2 (their engine died).
DELETE FROM backend_status WHERE owner = $1 OR updated_at < $2

-- name: backend_statuses
SELECT backend, owner, up, since, error, concurrency_limit, in_flight, updated_at
FROM backend_status WHERE updated_at >= $1 ORDER BY backend, owner

-- === offload to hosted Batch APIs (lowtide.store.postgres.offload) ==========================
-- A request held by a chunk is leased to 'offload:<chunk id>' until a far-away time: no
-- reclaim, heartbeat or dispatcher touches it; the chunk's own lease is in offload_chunks.

-- name: offload_candidates_first
-- (batch_id, now, longest line, how many): pending lines that may go upstream, in claim order.
SELECT line, length FROM requests
WHERE batch_id = $1 AND state = {state.pending} AND not_before <= $2 AND length <= $3
ORDER BY send_order, line LIMIT $4

-- name: offload_candidates_last
-- As offload_candidates_first, from the other end: a spill takes the lines the HTTP backends
-- would reach last, so that the two do not contend for the same rows.
SELECT line, length FROM requests
WHERE batch_id = $1 AND state = {state.pending} AND not_before <= $2 AND length <= $3
ORDER BY send_order DESC, line DESC LIMIT $4

-- name: offload_oversized
-- (batch_id, now, longest line, how many): pending lines too long for any upstream file.
SELECT line FROM requests
WHERE batch_id = $1 AND state = {state.pending} AND not_before <= $2 AND length > $3
LIMIT $4

-- name: offload_take
-- (batch_id, holder, lease_until, lines): lease those still pending, locked in line order (as
-- every statement that locks many request rows); rows another worker is claiming are skipped.
WITH picked AS MATERIALIZED (
    SELECT line FROM requests
    WHERE batch_id = $1 AND state = {state.pending} AND line = ANY($4::int[])
    ORDER BY line FOR UPDATE SKIP LOCKED)
UPDATE requests r SET state = {state.leased}, lease_owner = $2, lease_until = $3,
    lease_epoch = r.lease_epoch + 1
FROM picked p WHERE r.batch_id = $1 AND r.line = p.line
RETURNING r.line, r.lease_epoch, r.custom_id, r.attempts

-- name: offload_insert_chunk
INSERT INTO offload_chunks (id, batch_id, backend, state, lines, price_factor,
    completion_window, created_at, lease_owner, lease_epoch, lease_until, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)

-- name: offload_insert_lines
-- (chunk_id, lines, batch_id, epochs): one row per line.
INSERT INTO offload_lines (chunk_id, line, batch_id, epoch)
SELECT $1, l, $3, e FROM unnest($2::int[], $4::bigint[]) AS t (l, e)

-- name: offload_chunk_lines
SELECT ol.line, r.custom_id, r.byte_offset, r.length, r.attempts, ol.epoch
FROM offload_lines ol JOIN requests r ON r.batch_id = ol.batch_id AND r.line = ol.line
WHERE ol.chunk_id = $1 ORDER BY ol.line

-- name: offload_save_chunk
-- Everything a step changes; fenced by the chunk's lease (owner and epoch).
WITH saved AS (
    UPDATE offload_chunks SET state = $1, bytes = $2, file_id = $3, upstream_id = $4,
        upstream_status = $5, output_file_id = $6, error_file_id = $7, creates = $8,
        cancel_sent = $9, recorded = $10, completed = $11, failed = $12, input_tokens = $13,
        cached_tokens = $14, output_tokens = $15, reasoning_tokens = $16, error = $17,
        updated_at = $18
    WHERE id = $19 AND lease_owner = $20 AND lease_epoch = $21
    RETURNING 1)
SELECT COUNT(*) FROM saved

-- name: offload_claim_chunks
-- (owner, lease_until, now, how many): unfinished chunks whose lease ran out.
WITH picked AS MATERIALIZED (
    SELECT id FROM offload_chunks WHERE state <> 'done' AND lease_until < $3
    ORDER BY created_at LIMIT $4 FOR UPDATE SKIP LOCKED)
UPDATE offload_chunks c SET lease_owner = $1, lease_until = $2,
    lease_epoch = c.lease_epoch + 1
FROM picked p WHERE c.id = p.id
RETURNING c.*

-- name: offload_renew_chunks
UPDATE offload_chunks SET lease_until = $2 WHERE lease_owner = $1 AND state <> 'done'

-- name: offload_release_chunks
UPDATE offload_chunks SET lease_until = 0 WHERE lease_owner = $1 AND state <> 'done'

-- name: offload_release_all_chunks
UPDATE offload_chunks SET lease_until = 0 WHERE state <> 'done'

-- name: offload_chunk_results
-- The lines whose result came from the chunk: final under the lease epoch the chunk held
-- them with, with a rendered line (a line finalisation failed as never run has none).
SELECT ol.line, r.state FROM offload_lines ol
JOIN requests r ON r.batch_id = ol.batch_id AND r.line = ol.line
WHERE ol.chunk_id = $1 AND r.lease_epoch = ol.epoch
  AND r.state IN ({state.succeeded}, {state.failed}) AND r.result IS NOT NULL

-- name: offload_forget_lines
DELETE FROM offload_lines WHERE chunk_id = $1

-- name: offload_shares
-- Per batch, backend and price factor: lines with a result from its chunks, lines its open
-- chunks hold and have not recorded yet, lines they recorded, tokens.
SELECT batch_id, backend, price_factor, SUM(completed), SUM(failed),
    SUM(CASE WHEN state IN ('cleaning', 'done') THEN 0 ELSE lines - recorded END),
    SUM(CASE WHEN state IN ('cleaning', 'done') THEN 0 ELSE recorded END),
    SUM(input_tokens), SUM(cached_tokens), SUM(output_tokens), SUM(reasoning_tokens)
FROM offload_chunks WHERE batch_id = ANY($1::text[])
GROUP BY batch_id, backend, price_factor ORDER BY batch_id, backend, price_factor

-- name: offload_chunks_of
SELECT * FROM offload_chunks WHERE batch_id = $1 ORDER BY created_at, id
