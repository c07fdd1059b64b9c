-- 0011: the batch controls (lowtide.domain.controls, docs/extensions.md).
-- priority: served before batches of lower priority (lowtide.domain.priority). max_cost,
-- max_error_rate: the caps that stop a batch like a cancel, with stop_reason saying why (an
-- ordinary cancel says cancelled_by_user). paused_at: since when a batch in progress is
-- paused (nothing new is sent while it is). counted_at: the time of the last group commit
-- that added to the batch's counters. pace_*: the pace marks the group commit keeps
-- (lowtide.domain.pace).
ALTER TABLE batches ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN max_cost REAL;
ALTER TABLE batches ADD COLUMN max_error_rate REAL;
ALTER TABLE batches ADD COLUMN stop_reason TEXT;
ALTER TABLE batches ADD COLUMN paused_at INTEGER;
ALTER TABLE batches ADD COLUMN counted_at INTEGER;
ALTER TABLE batches ADD COLUMN pace_at REAL NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN pace_done INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN pace_prev_at REAL NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN pace_prev_done INTEGER NOT NULL DEFAULT 0;
UPDATE batches SET stop_reason = 'cancelled_by_user'
WHERE status IN ({status.cancelling}, {status.cancelled});
UPDATE batches SET pace_at = in_progress_at
WHERE status = {status.in_progress} AND in_progress_at IS NOT NULL;

-- A cap is judged where the group commit adds to the counters: a batch in progress, with
-- lines left, whose cost reached max_cost, or (once 100 lines ended) whose failed lines are
-- more than max_error_rate of those ended, stops like a cancel in the same transaction
-- (lowtide.domain.controls.cap_crossed says the same in Python; a test holds them together).
-- The status move is checked by batches_status_moves, as any other.
CREATE TRIGGER batches_stop_at_caps AFTER UPDATE OF completed, failed, input_tokens,
    output_tokens ON batches
WHEN NEW.status = {status.in_progress} AND NEW.completed + NEW.failed < NEW.total AND (
    (NEW.max_cost IS NOT NULL AND ROUND((NEW.input_tokens * NEW.input_price
        + NEW.output_tokens * NEW.output_price) * NEW.discount / 1000000.0, 10) >= NEW.max_cost)
    OR (NEW.max_error_rate IS NOT NULL AND NEW.completed + NEW.failed >= 100
        AND NEW.failed > NEW.max_error_rate * (NEW.completed + NEW.failed)))
BEGIN
    UPDATE batches SET status = {status.cancelling}, end_status = {status.cancelled},
        cancelling_at = COALESCE(NEW.counted_at, CAST(strftime('%s', 'now') AS INTEGER)),
        stop_reason = CASE WHEN NEW.max_cost IS NOT NULL AND ROUND((NEW.input_tokens
            * NEW.input_price + NEW.output_tokens * NEW.output_price) * NEW.discount
            / 1000000.0, 10) >= NEW.max_cost THEN 'max_cost' ELSE 'max_error_rate' END
    WHERE id = NEW.id;
END;
