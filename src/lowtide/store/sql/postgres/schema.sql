-- lowtide schema for PostgreSQL: what a fresh install gets.
-- An existing database is upgraded by migrations/NNNN_*.sql instead; a test checks that
-- this file and all the migrations applied in order give the same schema. Change both.
-- Times are Unix seconds, as in the SQLite schema: integers for the API's timestamps,
-- double precision for leases and retry times (compared with time.time()).

CREATE TABLE files (
    id          text PRIMARY KEY,
    seq         bigint GENERATED ALWAYS AS IDENTITY,  -- insertion order, for stable cursors
    account     text NOT NULL,
    purpose     text NOT NULL,
    filename    text NOT NULL,
    bytes       bigint NOT NULL,
    created_at  bigint NOT NULL,
    expires_at  bigint,
    status      text NOT NULL,
    blob_key    text NOT NULL
);
CREATE UNIQUE INDEX files_seq ON files (seq);
CREATE INDEX files_by_account ON files (account, seq);
CREATE INDEX files_expiring ON files (expires_at) WHERE expires_at IS NOT NULL;  -- the sweeper

CREATE TABLE batches (
    id                   text PRIMARY KEY,
    seq                  bigint GENERATED ALWAYS AS IDENTITY,  -- "newest first" without ties
    account              text NOT NULL,
    endpoint             text NOT NULL,
    input_file_id        text NOT NULL,
    completion_window    text NOT NULL,
    status               text NOT NULL CHECK (status IN {statuses.all}),
    end_status           text,
    model                text,
    metadata             json,              -- json, not jsonb: keeps the client's key order
    name_lower           text,              -- lower(metadata.ds_name), for the ds_name filter
    created_at           bigint NOT NULL,
    in_progress_at       bigint,
    expires_at           bigint NOT NULL,
    finalizing_at        bigint,
    completed_at         bigint,
    failed_at            bigint,
    expired_at           bigint,
    cancelling_at        bigint,
    cancelled_at         bigint,
    output_file_id       text,
    error_file_id        text,
    errors               json,
    total                integer NOT NULL DEFAULT 0,
    completed            integer NOT NULL DEFAULT 0,
    failed               integer NOT NULL DEFAULT 0,
    input_tokens         bigint NOT NULL DEFAULT 0,
    cached_tokens        bigint NOT NULL DEFAULT 0,
    output_tokens        bigint NOT NULL DEFAULT 0,
    reasoning_tokens     bigint NOT NULL DEFAULT 0,
    input_price          double precision NOT NULL,
    output_price         double precision NOT NULL,
    discount             double precision NOT NULL,
    currency             text NOT NULL,
    output_expires_after bigint,
    lease_owner          text,              -- who validates or finalises the batch
    lease_until          double precision NOT NULL DEFAULT 0,
    -- the batch controls (lowtide.domain.controls): served before lower priorities; the caps
    -- that stop it, and why it stopped; since when it is paused
    priority             integer NOT NULL DEFAULT 0,
    max_cost             double precision,
    max_error_rate       double precision,
    stop_reason          text,
    paused_at            bigint,
    counted_at           bigint,            -- the last group commit that added to the counters
    pace_at              double precision NOT NULL DEFAULT 0,  -- the pace marks (domain.pace)
    pace_done            integer NOT NULL DEFAULT 0,
    pace_prev_at         double precision NOT NULL DEFAULT 0,
    pace_prev_done       integer NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX batches_seq ON batches (seq);
CREATE INDEX batches_by_account ON batches (account, seq);
CREATE INDEX batches_by_status ON batches (status);
CREATE INDEX batches_leased ON batches (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE INDEX batches_by_age ON batches (created_at);  -- retention

-- One row per input line. Rows change several times each (claim, result, retries):
-- fillfactor leaves room on each page so that lease renewals are HOT updates.
CREATE TABLE requests (
    batch_id         text NOT NULL,
    line             integer NOT NULL,     -- 1-based line of the input file
    custom_id        text NOT NULL,
    byte_offset      bigint NOT NULL,      -- the body is read from the input blob, not copied
    length           integer NOT NULL,
    state            smallint NOT NULL DEFAULT {state.pending}
                         CHECK (state BETWEEN {state.pending} AND {state.failed}),
    attempts         integer NOT NULL DEFAULT 0,
    not_before       double precision NOT NULL DEFAULT 0,
    lease_owner      text,
    lease_epoch      bigint NOT NULL DEFAULT 0,  -- fencing token, bumped by every claim
    lease_until      double precision NOT NULL DEFAULT 0,
    status_code      integer,
    request_id       text,
    result           bytea,                -- its output/error-file line, once it has one
    error_code       text,
    error_message    text,
    send_order       integer NOT NULL DEFAULT 0,  -- claimed in (send_order, line) order
    prefix_group     bigint NOT NULL DEFAULT 0,   -- shared prompt prefix (router affinity)
    PRIMARY KEY (batch_id, line)
) WITH (fillfactor = 90);
-- Partial indexes stay as small as the work they find: pending lines in claim order,
-- leased lines (heartbeats, reclaim, "anything in flight?"), lines waiting for a retry.
CREATE INDEX requests_pending ON requests (batch_id, send_order, line)
    WHERE state = {state.pending};
CREATE INDEX requests_leased ON requests (batch_id) WHERE state = {state.leased};
CREATE INDEX requests_waiting ON requests (not_before)
    WHERE state = {state.pending} AND not_before > 0;

-- A backend's max_concurrency shared by a fleet: rows 0..limit-1, each held by one owner
-- at a time until its lease runs out (see lowtide.engine.capacity).
CREATE TABLE backend_slots (
    backend      text NOT NULL,
    slot         integer NOT NULL,
    owner        text,
    lease_until  double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (backend, slot)
);

-- The API's per-account request counters: one row per key and minute (old minutes are
-- deleted as new ones start).
CREATE TABLE rate_limits (
    key     text NOT NULL,        -- account:route class
    minute  bigint NOT NULL,      -- minute number since the epoch
    count   integer NOT NULL,
    PRIMARY KEY (key, minute)
);

-- API keys made by `lowtide keys create`. Only the SHA-256 digest of a secret is kept; the
-- API looks a key up by digest on every request, so a revoke holds at once on every process.
CREATE TABLE api_keys (
    id          text PRIMARY KEY,         -- key_...: names the key in `lowtide keys`
    digest      bytea NOT NULL UNIQUE,    -- SHA-256 of the secret
    hint        text NOT NULL,            -- its first characters, to tell keys apart
    account     text NOT NULL,
    label       text,
    created_at  bigint NOT NULL,
    revoked_at  bigint
);

-- Idempotency-Key of file uploads and batch creates: recorded in the transaction that creates
-- the object, with the first response, which a retry gets back for 24 hours.
CREATE TABLE idempotency_keys (
    account      text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('file', 'batch', 'retry')),
    key          text NOT NULL,
    fingerprint  text NOT NULL,           -- SHA-256 of the canonical request parameters
    response     json NOT NULL,           -- json, not jsonb: replayed byte for byte in order
    created_at   bigint NOT NULL,
    PRIMARY KEY (account, kind, key)
);
CREATE INDEX idempotency_by_age ON idempotency_keys (created_at);

-- Bytes of deleted and expired files, deleted by the retention sweeper once no running
-- batch reads them (a batch keeps reading its input file after the file is deleted).
CREATE TABLE blob_deletions (
    blob_key    text PRIMARY KEY,
    file_id     text NOT NULL,
    queued_at   bigint NOT NULL
);

-- Input files deleted while a batch that reads them was still validating: the batch validates
-- from these bytes all the same. They stay queued in blob_deletions until no live batch reads
-- them, and this row goes when they do.
CREATE TABLE kept_inputs (
    batch_id    text PRIMARY KEY,
    purpose     text NOT NULL,
    blob_key    text NOT NULL
);
CREATE INDEX kept_inputs_by_blob ON kept_inputs (blob_key);

-- How many slots each worker wants, so that a backend's slots are shared fairly between the
-- workers that want them (lowtide.store.slots).
CREATE TABLE slot_demands (
    backend      text NOT NULL,
    owner        text NOT NULL,
    want         integer NOT NULL,           -- slots the worker asked for at its last renewal
    lease_until  double precision NOT NULL,  -- its demand counts until then
    PRIMARY KEY (backend, owner)
);

-- The fleet's shared rpm/tpm budgets (lowtide.engine.budgets): slices of a backend's rolling
-- minute taken by workers; a slice counts until `until` (the end of its use) plus the window.
CREATE TABLE budget_slices (
    id        bigserial PRIMARY KEY,
    backend   text NOT NULL,
    owner     text NOT NULL,
    until     double precision NOT NULL,
    requests  integer NOT NULL,               -- granted, then what was used
    tokens    bigint NOT NULL
);
CREATE INDEX budget_slices_by_backend ON budget_slices (backend, until);

-- The batch state machine: the allowed moves (kept equal to lowtide.domain.status.MOVES
-- whenever a store opens); the trigger refuses any other change of a batch's status.
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

-- What each engine sees of each backend, for the API (/ready, /v1/backends, a batch's
-- waiting_for); rows not refreshed for a while are ignored (their engine is gone).
CREATE TABLE backend_status (
    backend            text NOT NULL,
    owner              text NOT NULL,
    up                 boolean NOT NULL,
    since              double precision NOT NULL,  -- when it last went up or down (Unix seconds)
    error              text,  -- why it went down (kept after it is back)
    concurrency_limit  integer NOT NULL,  -- requests this engine may have in flight to it now
    in_flight          integer NOT NULL,
    updated_at         double precision NOT NULL,
    PRIMARY KEY (backend, owner)
);

-- Offload to hosted Batch APIs (lowtide.engine.offload, docs/offload.md): a chunk is a group of
-- one batch's requests sent to one batch backend as one upstream file and batch (its states:
-- lowtide.domain.offload). Its requests stay leased to it (lease_owner 'offload:<chunk id>',
-- a lease that never runs out by itself) until it records their outcomes; the chunk's own
-- lease is what a worker renews and another takes over. offload_lines keeps each request's
-- lease epoch when the chunk took it: the fence of the outcome the chunk records. Done chunks
-- stay, as the record of which lines ran where and at what price factor.
CREATE TABLE offload_chunks (
    id                 text PRIMARY KEY,
    batch_id           text NOT NULL,
    backend            text NOT NULL,
    state              text NOT NULL,
    lines              integer NOT NULL,
    bytes              bigint NOT NULL DEFAULT 0,
    price_factor       double precision NOT NULL,
    completion_window  text NOT NULL,
    created_at         double precision NOT NULL,
    file_id            text,
    upstream_id        text,
    upstream_status    text,
    output_file_id     text,
    error_file_id      text,
    creates            integer NOT NULL DEFAULT 0,
    cancel_sent        integer NOT NULL DEFAULT 0,
    recorded           integer NOT NULL DEFAULT 0,
    completed          integer NOT NULL DEFAULT 0,
    failed             integer NOT NULL DEFAULT 0,
    input_tokens       bigint NOT NULL DEFAULT 0,
    cached_tokens      bigint NOT NULL DEFAULT 0,
    output_tokens      bigint NOT NULL DEFAULT 0,
    reasoning_tokens   bigint NOT NULL DEFAULT 0,
    error              text,
    lease_owner        text,
    lease_epoch        bigint NOT NULL DEFAULT 0,
    lease_until        double precision NOT NULL DEFAULT 0,
    updated_at         double precision NOT NULL
);
CREATE INDEX offload_chunks_by_batch ON offload_chunks (batch_id);
CREATE INDEX offload_chunks_open ON offload_chunks (lease_until) WHERE state <> 'done';

CREATE TABLE offload_lines (
    chunk_id  text NOT NULL,
    line      integer NOT NULL,
    batch_id  text NOT NULL,
    epoch     bigint NOT NULL,
    PRIMARY KEY (chunk_id, line)
);
