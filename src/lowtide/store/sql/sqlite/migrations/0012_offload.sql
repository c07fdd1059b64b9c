-- 0012: offload to hosted Batch APIs (lowtide.engine.offload, docs/offload.md). A chunk is a
-- group of one batch's requests sent to one batch backend as one upstream input file and one
-- upstream batch; its states are those of lowtide.domain.offload (claimed ... done). Its
-- requests stay leased to it (lease_owner 'offload:<chunk id>', a lease that never runs out
-- by itself) until it records their outcomes; the chunk's own lease is what a worker renews
-- and another takes over. offload_lines holds each request's lease epoch at the moment the
-- chunk took it: the fence of the outcome the chunk records for it. Done chunks stay, as the
-- record of which lines ran where and at what price factor.
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
