-- lowtide schema for SQLite: what a fresh database gets.
-- An existing database is upgraded by migrations/NNNN_*.sql instead (PRAGMA user_version is
-- the last one applied); a test checks that this file and all the migrations applied in
-- order give the same schema. Change both. Request states are written by name
-- (lowtide.store.queries fills them in).

CREATE TABLE files (
    id          TEXT PRIMARY KEY,
    account     TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    filename    TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    status      TEXT NOT NULL,
    blob_key    TEXT NOT NULL,
    seq         INTEGER NOT NULL         -- insertion order, for stable cursors
);
CREATE INDEX files_by_account ON files (account, seq);

CREATE TABLE batches (
    id                   TEXT PRIMARY KEY,
    seq                  INTEGER NOT NULL,  -- insertion order: "newest first" without ties
    account              TEXT NOT NULL,
    endpoint             TEXT NOT NULL,
    input_file_id        TEXT NOT NULL,
    completion_window    TEXT NOT NULL,
    status               TEXT NOT NULL,
    end_status           TEXT,
    model                TEXT,
    metadata             TEXT,              -- JSON object or NULL
    name_lower           TEXT,              -- lower(metadata.ds_name), for the ds_name filter
    created_at           INTEGER NOT NULL,
    in_progress_at       INTEGER,
    expires_at           INTEGER NOT NULL,
    finalizing_at        INTEGER,
    completed_at         INTEGER,
    failed_at            INTEGER,
    expired_at           INTEGER,
    cancelling_at        INTEGER,
    cancelled_at         INTEGER,
    output_file_id       TEXT,
    error_file_id        TEXT,
    errors               TEXT,              -- JSON list or NULL
    total                INTEGER NOT NULL DEFAULT 0,
    completed            INTEGER NOT NULL DEFAULT 0,
    failed               INTEGER NOT NULL DEFAULT 0,
    input_tokens         INTEGER NOT NULL DEFAULT 0,
    cached_tokens        INTEGER NOT NULL DEFAULT 0,
    output_tokens        INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens     INTEGER NOT NULL DEFAULT 0,
    input_price          REAL NOT NULL,
    output_price         REAL NOT NULL,
    discount             REAL NOT NULL,
    currency             TEXT NOT NULL,
    output_expires_after INTEGER,
    lease_owner          TEXT,              -- who validates or finalises the batch
    lease_until          REAL NOT NULL DEFAULT 0,
    -- the batch controls (lowtide.domain.controls): served before lower priorities; the caps
    -- that stop it, and why it stopped; since when it is paused
    priority             INTEGER NOT NULL DEFAULT 0,
    max_cost             REAL,
    max_error_rate       REAL,
    stop_reason          TEXT,
    paused_at            INTEGER,
    counted_at           INTEGER,           -- the last group commit that added to the counters
    pace_at              REAL NOT NULL DEFAULT 0,     -- the pace marks (lowtide.domain.pace)
    pace_done            INTEGER NOT NULL DEFAULT 0,
    pace_prev_at         REAL NOT NULL DEFAULT 0,
    pace_prev_done       INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX batches_seq ON batches (seq);
CREATE INDEX batches_by_account ON batches (account, seq);
CREATE INDEX batches_by_status ON batches (status);

CREATE TABLE requests (
    batch_id         TEXT NOT NULL,
    line             INTEGER NOT NULL,     -- 1-based line of the input file
    custom_id        TEXT NOT NULL,
    byte_offset      INTEGER NOT NULL,     -- the body is read from the input blob, not copied here
    length           INTEGER NOT NULL,
    state            INTEGER NOT NULL DEFAULT {state.pending},
    attempts         INTEGER NOT NULL DEFAULT 0,
    not_before       REAL NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_epoch      INTEGER NOT NULL DEFAULT 0,
    lease_until      REAL NOT NULL DEFAULT 0,
    status_code      INTEGER,
    request_id       TEXT,
    result           BLOB,                 -- its output/error-file line, once it has one
    error_code       TEXT,
    error_message    TEXT,
    send_order       INTEGER NOT NULL DEFAULT 0,  -- claimed in (send_order, line) order
    prefix_group     INTEGER NOT NULL DEFAULT 0,  -- shared prompt prefix (router affinity)
    PRIMARY KEY (batch_id, line)
) WITHOUT ROWID;
CREATE INDEX requests_by_state ON requests (batch_id, state, send_order, line);
CREATE INDEX requests_leased ON requests (state, lease_until) WHERE state = {state.leased};
CREATE INDEX requests_waiting ON requests (state, not_before)
    WHERE state = {state.pending} AND not_before > 0;

CREATE TABLE rate_limits (
    key     TEXT NOT NULL,        -- account:route class
    minute  INTEGER NOT NULL,     -- minute number since the epoch
    count   INTEGER NOT NULL,
    PRIMARY KEY (key, minute)
);

-- API keys made by `lowtide keys create`. Only the SHA-256 digest of a secret is kept.
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,          -- key_...: names the key in `lowtide keys`
    digest      BLOB NOT NULL UNIQUE,      -- SHA-256 of the secret
    hint        TEXT NOT NULL,             -- its first characters, to tell keys apart
    account     TEXT NOT NULL,
    label       TEXT,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

-- Idempotency-Key of file uploads and batch creates: the first response, replayed for 24 h.
CREATE TABLE idempotency_keys (
    account      TEXT NOT NULL,
    kind         TEXT NOT NULL,            -- 'file', 'batch' or 'retry'
    key          TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,            -- SHA-256 of the canonical request parameters
    response     TEXT NOT NULL,            -- the first response (JSON)
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (account, kind, key)
);
CREATE INDEX idempotency_by_age ON idempotency_keys (created_at);

-- Bytes of deleted and expired files, deleted by the retention sweeper once no running
-- batch reads them (a batch keeps reading its input file after the file is deleted).
CREATE TABLE blob_deletions (
    blob_key    TEXT PRIMARY KEY,
    file_id     TEXT NOT NULL,
    queued_at   INTEGER NOT NULL
);

-- Input files deleted while a batch that reads them was still validating: the batch validates
-- from these bytes all the same. They stay queued in blob_deletions until no live batch reads
-- them, and this row goes when they do.
CREATE TABLE kept_inputs (
    batch_id    TEXT PRIMARY KEY,
    purpose     TEXT NOT NULL,
    blob_key    TEXT NOT NULL
);
CREATE INDEX kept_inputs_by_blob ON kept_inputs (blob_key);

CREATE INDEX files_expiring ON files (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX batches_by_age ON batches (created_at);

-- A backend's max_concurrency as slots leased to workers, and how many each worker wants
-- (lowtide.store.slots shares them fairly). One SQLite process is one worker, but the store
-- keeps the same books as PostgreSQL's.
CREATE TABLE backend_slots (
    backend      TEXT NOT NULL,
    slot         INTEGER NOT NULL,
    owner        TEXT,
    lease_until  REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (backend, slot)
);

CREATE TABLE slot_demands (
    backend      TEXT NOT NULL,
    owner        TEXT NOT NULL,
    want         INTEGER NOT NULL,      -- slots the worker asked for at its last renewal
    lease_until  REAL NOT NULL,         -- its demand counts until then
    PRIMARY KEY (backend, owner)
);

-- The fleet's shared rpm/tpm budgets (lowtide.engine.budgets): slices of a backend's rolling
-- minute taken by workers; a slice counts until `until` (the end of its use) plus the window.
CREATE TABLE budget_slices (
    id        INTEGER PRIMARY KEY,
    backend   TEXT NOT NULL,
    owner     TEXT NOT NULL,
    until     REAL NOT NULL,
    requests  INTEGER NOT NULL,             -- granted, then what was used
    tokens    INTEGER NOT NULL
);
CREATE INDEX budget_slices_by_backend ON budget_slices (backend, until);

-- The batch state machine: the allowed moves (kept equal to lowtide.domain.status.MOVES
-- whenever a store opens); the trigger refuses any other change of a batch's status.
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

-- What each engine sees of each backend, for the API (/ready, /v1/backends, a batch's
-- waiting_for); rows not refreshed for a while are ignored (their engine is gone).
CREATE TABLE backend_status (
    backend            TEXT NOT NULL,
    owner              TEXT NOT NULL,
    up                 INTEGER NOT NULL,
    since              REAL NOT NULL,  -- when it last went up or down (Unix seconds)
    error              TEXT,  -- why it went down (kept after it is back)
    concurrency_limit  INTEGER NOT NULL,  -- requests this engine may have in flight to it now
    in_flight          INTEGER NOT NULL,
    updated_at         REAL NOT NULL,
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
    id                 TEXT PRIMARY KEY,
    batch_id           TEXT NOT NULL,
    backend            TEXT NOT NULL,
    state              TEXT NOT NULL,
    lines              INTEGER NOT NULL,
    bytes              INTEGER NOT NULL DEFAULT 0,
    price_factor       REAL NOT NULL,
    completion_window  TEXT NOT NULL,
    created_at         REAL NOT NULL,
    file_id            TEXT,
    upstream_id        TEXT,
    upstream_status    TEXT,
    output_file_id     TEXT,
    error_file_id      TEXT,
    creates            INTEGER NOT NULL DEFAULT 0,
    cancel_sent        INTEGER NOT NULL DEFAULT 0,
    recorded           INTEGER NOT NULL DEFAULT 0,
    completed          INTEGER NOT NULL DEFAULT 0,
    failed             INTEGER NOT NULL DEFAULT 0,
    input_tokens       INTEGER NOT NULL DEFAULT 0,
    cached_tokens      INTEGER NOT NULL DEFAULT 0,
    output_tokens      INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens   INTEGER NOT NULL DEFAULT 0,
    error              TEXT,
    lease_owner        TEXT,
    lease_epoch        INTEGER NOT NULL DEFAULT 0,
    lease_until        REAL NOT NULL DEFAULT 0,
    updated_at         REAL NOT NULL
);
CREATE INDEX offload_chunks_by_batch ON offload_chunks (batch_id);
CREATE INDEX offload_chunks_open ON offload_chunks (lease_until) WHERE state <> 'done';

CREATE TABLE offload_lines (
    chunk_id  TEXT NOT NULL,
    line      INTEGER NOT NULL,
    batch_id  TEXT NOT NULL,
    epoch     INTEGER NOT NULL,
    PRIMARY KEY (chunk_id, line)
) WITHOUT ROWID;
