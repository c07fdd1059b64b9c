-- The PostgreSQL store's statements (lowtide.store.postgres), one per `-- name:` block.
-- Parameters are $1, $2...: their meaning is in the calling method.
--
-- Rows locked with FOR UPDATE are always picked in a MATERIALIZED CTE and joined: written as
-- `WHERE key IN (SELECT ... LIMIT n FOR UPDATE)` the planner may rescan the subquery once
-- per outer row, and the statement then updates more than n rows (seen here with a nested
-- loop semi join: a claim of 3 took 5). Statements that lock many request rows lock them in
-- (batch_id, line) order, and request rows before batch rows, so that they cannot deadlock.

-- name: insert_file
INSERT INTO files (id, account, purpose, filename, bytes, created_at, expires_at, status,
    blob_key)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)

-- name: cancel
-- The batch as it is after the cancel, or as it was if it could not be cancelled.
WITH moved AS (
    UPDATE batches SET status = 'cancelling', end_status = 'cancelled', cancelling_at = $1
    WHERE id = $2 AND account = $3 AND status IN ('validating', 'in_progress')
    RETURNING *)
SELECT * FROM moved
UNION ALL
SELECT * FROM batches WHERE id = $2 AND account = $3 AND NOT EXISTS (SELECT 1 FROM moved)

-- name: claim_validation
UPDATE batches SET lease_owner = $1, lease_until = $2
WHERE id = (SELECT id FROM batches WHERE status = 'validating' AND lease_until < $3
            ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING *

-- name: start_batch
WITH moved AS (
    UPDATE batches SET status = 'in_progress', in_progress_at = $1, model = $2, total = $3,
        input_price = $4, output_price = $5, discount = $6, currency = $7,
        lease_owner = NULL, lease_until = 0
    WHERE id = $8 AND lease_owner = $9 AND status = 'validating'
    RETURNING 1)
SELECT COUNT(*) FROM moved

-- name: fail_batch
WITH moved AS (
    UPDATE batches SET status = 'failed', failed_at = $1, errors = $2::json,
        lease_owner = NULL, lease_until = 0
    WHERE id = $3 AND lease_owner = $4 AND status = 'validating'
    RETURNING 1)
SELECT COUNT(*) FROM moved

-- name: drop_batch_lease
UPDATE batches SET lease_owner = NULL, lease_until = 0 WHERE id = $1 AND lease_owner = $2

-- name: drop_owner_batch_leases
UPDATE batches SET lease_owner = NULL, lease_until = 0 WHERE lease_owner = $1

-- name: active
SELECT b.id, b.account, b.model, b.endpoint, f.blob_key, b.expires_at, b.input_file_id
FROM batches b LEFT JOIN files f ON f.id = b.input_file_id
WHERE b.status = 'in_progress' ORDER BY b.expires_at, b.seq

-- name: claim_requests
-- Workers claiming from the same batch at once skip each other's rows instead of waiting.
WITH picked AS MATERIALIZED (
    SELECT line FROM requests WHERE batch_id = $1 AND state = 0 AND not_before <= $4
    ORDER BY line LIMIT $5 FOR UPDATE SKIP LOCKED)
UPDATE requests r SET state = 1, lease_owner = $2, lease_until = $3,
    lease_epoch = r.lease_epoch + 1
FROM picked p WHERE r.batch_id = $1 AND r.line = p.line
RETURNING r.line, r.custom_id, r.byte_offset, r.length, r.attempts, r.lease_epoch

-- name: record
-- The group commit, in one statement: lock the rows in key order, apply each outcome whose
-- lease is still the current one (the fence), add what applied to its batch's counters,
-- and say which batches now have every request done.
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
        state = CASE o.kind WHEN 'retry' THEN 0 WHEN 'succeeded' THEN 2 ELSE 3 END,
        lease_owner = NULL,
        attempts = o.attempts,
        not_before = CASE WHEN o.kind = 'retry' THEN o.not_before ELSE r.not_before END,
        status_code = CASE WHEN o.kind = 'retry' THEN r.status_code ELSE o.status_code END,
        request_id = CASE WHEN o.kind = 'retry' THEN r.request_id ELSE o.request_id END,
        result = CASE WHEN o.kind = 'retry' THEN r.result ELSE o.result END,
        error_code = CASE WHEN o.kind = 'retry' THEN r.error_code ELSE o.error_code END,
        error_message = CASE WHEN o.kind = 'retry' THEN r.error_message ELSE o.error_message END
    FROM o JOIN locked l USING (batch_id, line)
    WHERE r.batch_id = o.batch_id AND r.line = o.line
      AND r.lease_epoch = o.epoch AND r.state = 1
    RETURNING o.batch_id, o.kind, o.input_tokens, o.cached_tokens, o.output_tokens,
        o.reasoning_tokens),
delta AS (
    SELECT batch_id,
        COUNT(*) FILTER (WHERE kind = 'succeeded') AS completed,
        COUNT(*) FILTER (WHERE kind = 'failed') AS failed,
        COALESCE(SUM(input_tokens) FILTER (WHERE kind = 'succeeded'), 0) AS input_tokens,
        COALESCE(SUM(cached_tokens) FILTER (WHERE kind = 'succeeded'), 0) AS cached_tokens,
        COALESCE(SUM(output_tokens) FILTER (WHERE kind = 'succeeded'), 0) AS output_tokens,
        COALESCE(SUM(reasoning_tokens) FILTER (WHERE kind = 'succeeded'), 0) AS reasoning
    FROM applied GROUP BY batch_id),
locked_batches AS MATERIALIZED (
    SELECT b.id FROM batches b JOIN delta d ON d.batch_id = b.id
    ORDER BY b.id FOR UPDATE OF b)
UPDATE batches b SET
    completed = b.completed + d.completed, failed = b.failed + d.failed,
    input_tokens = b.input_tokens + d.input_tokens,
    cached_tokens = b.cached_tokens + d.cached_tokens,
    output_tokens = b.output_tokens + d.output_tokens,
    reasoning_tokens = b.reasoning_tokens + d.reasoning
FROM delta d JOIN locked_batches lb ON lb.id = d.batch_id
WHERE b.id = d.batch_id
RETURNING b.id, b.completed + b.failed >= b.total

-- name: renew_requests
WITH mine AS MATERIALIZED (
    SELECT batch_id, line FROM requests WHERE state = 1 AND lease_owner = $1
    ORDER BY batch_id, line FOR UPDATE)
UPDATE requests r SET lease_until = $2 FROM mine m
WHERE r.batch_id = m.batch_id AND r.line = m.line

-- name: release_requests
WITH mine AS MATERIALIZED (
    SELECT batch_id, line FROM requests WHERE state = 1 AND lease_owner = $1
    ORDER BY batch_id, line FOR UPDATE)
UPDATE requests r SET state = 0, lease_owner = NULL FROM mine m
WHERE r.batch_id = m.batch_id AND r.line = m.line

-- name: reclaim
-- A row locked by someone else is being committed or renewed right now: skip it (if its
-- lease really ran out, the next sweep gets it).
WITH expired AS MATERIALIZED (
    SELECT batch_id, line FROM requests WHERE state = 1 AND lease_until < $1
    FOR UPDATE SKIP LOCKED)
UPDATE requests r SET state = 0, lease_owner = NULL FROM expired e
WHERE r.batch_id = e.batch_id AND r.line = e.line

-- name: ensure_slots
-- Slot rows 0..limit-1 of a backend (a lowered ceiling drops the rows above it).
WITH dropped AS (DELETE FROM backend_slots WHERE backend = $1 AND slot >= $2)
INSERT INTO backend_slots (backend, slot)
SELECT $1, g FROM generate_series(0, $2 - 1) g
WHERE NOT EXISTS (SELECT 1 FROM backend_slots WHERE backend = $1 AND slot = $2 - 1)
ON CONFLICT DO NOTHING

-- name: renew_slots
WITH renewed AS (
    UPDATE backend_slots SET lease_until = $3 WHERE backend = $1 AND owner = $2 RETURNING 1)
SELECT COUNT(*) FROM renewed

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

-- name: expire
WITH due AS MATERIALIZED (
    SELECT id FROM batches WHERE status IN ('validating', 'in_progress') AND expires_at <= $1
    FOR UPDATE SKIP LOCKED)
UPDATE batches b SET status = 'finalizing', end_status = 'expired', finalizing_at = $1
FROM due d WHERE b.id = d.id
RETURNING b.id

-- name: to_finalize
SELECT id FROM batches b WHERE lease_until < $1 AND (
    (status = 'in_progress' AND completed + failed >= total)
    OR (status IN ('cancelling', 'finalizing') AND NOT EXISTS (
        SELECT 1 FROM requests r WHERE r.batch_id = b.id AND r.state = 1
        AND r.lease_until >= $1)))
ORDER BY seq

-- name: claim_finalization
UPDATE batches SET lease_owner = $2, lease_until = $3,
    status = CASE WHEN status = 'in_progress' THEN 'finalizing' ELSE status END,
    end_status = COALESCE(end_status, 'completed'),
    finalizing_at = CASE WHEN status = 'in_progress' THEN $4 ELSE finalizing_at END
WHERE id = (
    SELECT id FROM batches WHERE id = $1 AND lease_until < $5
    AND (status IN ('cancelling', 'finalizing')
         OR (status = 'in_progress' AND completed + failed >= total))
    FOR UPDATE SKIP LOCKED)
RETURNING *

-- name: results
SELECT line, state, CASE WHEN result IS NULL THEN custom_id END, result
FROM requests WHERE batch_id = $1 AND line > $2 ORDER BY line LIMIT $3

-- name: fail_unrun
WITH unrun AS MATERIALIZED (
    SELECT line FROM requests WHERE batch_id = $1 AND state IN (0, 1)
    ORDER BY line FOR UPDATE)
UPDATE requests r SET state = 3, error_code = $2, error_message = $3, lease_owner = NULL
FROM unrun u WHERE r.batch_id = $1 AND r.line = u.line

-- name: rate_limit_hit
-- Forget finished minutes and count this hit, in one statement.
WITH gone AS (DELETE FROM rate_limits WHERE minute < $2 - 1)
INSERT INTO rate_limits AS t (key, minute, count) VALUES ($1, $2, 1)
ON CONFLICT (key, minute) DO UPDATE SET count = t.count + 1
RETURNING count

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

-- name: queue_blob_deletions
INSERT INTO blob_deletions (blob_key, file_id, queued_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
ON CONFLICT (blob_key) DO NOTHING

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
    AND b.status IN ('validating', 'in_progress', 'cancelling', 'finalizing'))
ORDER BY d.queued_at LIMIT $1

-- name: retired_batches
SELECT id FROM batches b WHERE created_at < $1
AND status IN ('completed', 'failed', 'expired', 'cancelled')
AND EXISTS (SELECT 1 FROM requests r WHERE r.batch_id = b.id)
ORDER BY created_at LIMIT $2
