-- 0007: the batch state machine in the database. batch_moves holds the allowed moves (filled
-- from lowtide.domain.status.MOVES whenever a store opens); the trigger refuses any other.
CREATE TABLE batch_moves (
    src  TEXT NOT NULL,
    dst  TEXT NOT NULL,
    PRIMARY KEY (src, dst)
) WITHOUT ROWID;

CREATE TRIGGER batches_status_moves BEFORE UPDATE OF status ON batches
WHEN NEW.status IS NOT OLD.status AND NOT EXISTS (
    SELECT 1 FROM batch_moves WHERE src = OLD.status AND dst = NEW.status)
BEGIN
    SELECT RAISE(ABORT, 'batch status move not allowed (batch_moves)');
END;
