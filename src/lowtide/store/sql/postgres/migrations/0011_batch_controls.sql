-- 0011: the batch controls (lowtide.domain.controls, docs/extensions.md).
-- priority: served before batches of lower priority (lowtide.domain.priority). max_cost,
-- max_error_rate: the caps that stop a batch like a cancel, with stop_reason saying why (an
-- ordinary cancel says cancelled_by_user). paused_at: since when a batch in progress is
-- paused (nothing new is sent while it is). counted_at: the time of the last group commit
-- that added to the batch's counters. pace_*: the pace marks the group commit keeps
-- (lowtide.domain.pace). Idempotency keys get a scope for retries of failed lines.
ALTER TABLE batches
    ADD COLUMN priority integer NOT NULL DEFAULT 0,
    ADD COLUMN max_cost double precision,
    ADD COLUMN max_error_rate double precision,
    ADD COLUMN stop_reason text,
    ADD COLUMN paused_at bigint,
    ADD COLUMN counted_at bigint,
    ADD COLUMN pace_at double precision NOT NULL DEFAULT 0,
    ADD COLUMN pace_done integer NOT NULL DEFAULT 0,
    ADD COLUMN pace_prev_at double precision NOT NULL DEFAULT 0,
    ADD COLUMN pace_prev_done integer NOT NULL DEFAULT 0;
UPDATE batches SET stop_reason = 'cancelled_by_user'
WHERE status IN ({status.cancelling}, {status.cancelled});
UPDATE batches SET pace_at = in_progress_at
WHERE status = {status.in_progress} AND in_progress_at IS NOT NULL;

ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_kind_check,
    ADD CONSTRAINT idempotency_keys_kind_check CHECK (kind IN ('file', 'batch', 'retry'));

-- A cap is judged where the group commit adds to the counters: a batch in progress, with
-- lines left, whose cost reached max_cost, or (once 100 lines ended) whose failed lines are
-- more than max_error_rate of those ended, stops like a cancel in the same statement
-- (lowtide.domain.controls.cap_crossed says the same in Python; a test holds them together).
-- Only a move that batch_moves allows is made (batches_status_moves does not see it: the
-- statement does not set the status itself).
CREATE FUNCTION batches_stop_at_caps() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status <> {status.in_progress} OR NEW.completed + NEW.failed >= NEW.total
        OR NOT EXISTS (SELECT 1 FROM batch_moves
                       WHERE src = NEW.status AND dst = {status.cancelling}) THEN
        RETURN NEW;
    END IF;
    IF NEW.max_cost IS NOT NULL AND round(((NEW.input_tokens * NEW.input_price
            + NEW.output_tokens * NEW.output_price) * NEW.discount / 1000000)::numeric, 10)
            >= NEW.max_cost THEN
        NEW.stop_reason := 'max_cost';
    ELSIF NEW.max_error_rate IS NOT NULL AND NEW.completed + NEW.failed >= 100
            AND NEW.failed > NEW.max_error_rate * (NEW.completed + NEW.failed) THEN
        NEW.stop_reason := 'max_error_rate';
    ELSE
        RETURN NEW;
    END IF;
    NEW.status := {status.cancelling};
    NEW.end_status := {status.cancelled};
    NEW.cancelling_at := COALESCE(NEW.counted_at, extract(epoch FROM now())::bigint);
    RETURN NEW;
END
$$;

CREATE TRIGGER batches_stop_at_caps BEFORE UPDATE OF completed, failed, input_tokens,
    output_tokens ON batches
FOR EACH ROW WHEN (NEW.max_cost IS NOT NULL OR NEW.max_error_rate IS NOT NULL)
EXECUTE FUNCTION batches_stop_at_caps();
