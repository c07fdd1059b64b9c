-- 0007: the batch state machine in the database. batch_moves holds the allowed moves (filled
-- from lowtide.domain.status.MOVES whenever a store opens); the trigger refuses any other.
CREATE TABLE batch_moves (
    src  text NOT NULL,
    dst  text NOT NULL,
    PRIMARY KEY (src, dst)
);

CREATE FUNCTION batches_status_move() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM batch_moves WHERE src = OLD.status AND dst = NEW.status) THEN
        RAISE EXCEPTION 'batch % may not move from % to %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER batches_status_moves BEFORE UPDATE OF status ON batches
FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
EXECUTE FUNCTION batches_status_move();
