-- 0001: the initial schema (lowtide 0.1).
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
    lease_until          double precision NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX batches_seq ON batches (seq);
CREATE INDEX batches_by_account ON batches (account, seq);
CREATE INDEX batches_by_status ON batches (status);
CREATE INDEX batches_leased ON batches (lease_owner) WHERE lease_owner IS NOT NULL;

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
    body             bytea,
    error_code       text,
    error_message    text,
    PRIMARY KEY (batch_id, line)
) WITH (fillfactor = 90);
-- Partial indexes stay as small as the work they find: pending lines in line order (claims),
-- leased lines (heartbeats, reclaim, "anything in flight?"), lines waiting for a retry.
CREATE INDEX requests_pending ON requests (batch_id, line) WHERE state = {state.pending};
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
