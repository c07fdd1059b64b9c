-- 0002: per-account rate limits, API keys made by `lowtide keys`, idempotency keys, and what
-- the retention sweeper needs. A database of the second 0.1 release has rate_limits already.

CREATE TABLE IF NOT EXISTS rate_limits (
    key     TEXT NOT NULL,        -- account:route class
    minute  INTEGER NOT NULL,     -- minute number since the epoch
    count   INTEGER NOT NULL,
    PRIMARY KEY (key, minute)
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    digest      BLOB NOT NULL UNIQUE,
    hint        TEXT NOT NULL,
    account     TEXT NOT NULL,
    label       TEXT,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

CREATE TABLE idempotency_keys (
    account      TEXT NOT NULL,
    kind         TEXT NOT NULL,
    key          TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    response     TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (account, kind, key)
);
CREATE INDEX idempotency_by_age ON idempotency_keys (created_at);

CREATE TABLE blob_deletions (
    blob_key    TEXT PRIMARY KEY,
    file_id     TEXT NOT NULL,
    queued_at   INTEGER NOT NULL
);

CREATE INDEX files_expiring ON files (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX batches_by_age ON batches (created_at);
