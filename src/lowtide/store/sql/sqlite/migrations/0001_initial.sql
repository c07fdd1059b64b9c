-- 0001: the initial schema (lowtide 0.1), as the first release created it.
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
    lease_until          REAL NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX batches_seq ON batches (seq);
CREATE INDEX batches_by_account ON batches (account, seq);
CREATE INDEX batches_by_status ON batches (status);

CREATE TABLE requests (
    batch_id         TEXT NOT NULL,
    line             INTEGER NOT NULL,     -- 1-based line of the input file
    custom_id        TEXT NOT NULL,
    offset           INTEGER NOT NULL,     -- the body is read from the input blob, not copied here
    length           INTEGER NOT NULL,
    state            INTEGER NOT NULL DEFAULT {state.pending},
    attempts         INTEGER NOT NULL DEFAULT 0,
    not_before       REAL NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_epoch      INTEGER NOT NULL DEFAULT 0,
    lease_until      REAL NOT NULL DEFAULT 0,
    status_code      INTEGER,
    request_id       TEXT,
    body             BLOB,
    error_code       TEXT,
    error_message    TEXT,
    PRIMARY KEY (batch_id, line)
) WITHOUT ROWID;
CREATE INDEX requests_by_state ON requests (batch_id, state, line);
CREATE INDEX requests_leased ON requests (state, lease_until) WHERE state = {state.leased};
CREATE INDEX requests_waiting ON requests (state, not_before)
    WHERE state = {state.pending} AND not_before > 0;
