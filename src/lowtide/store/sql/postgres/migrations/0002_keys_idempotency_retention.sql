-- 0002: API keys made by `lowtide keys`, idempotency keys, and what the retention sweeper needs.

CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    digest      bytea NOT NULL UNIQUE,
    hint        text NOT NULL,
    account     text NOT NULL,
    label       text,
    created_at  bigint NOT NULL,
    revoked_at  bigint
);

CREATE TABLE idempotency_keys (
    account      text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('file', 'batch')),
    key          text NOT NULL,
    fingerprint  text NOT NULL,
    response     json NOT NULL,
    created_at   bigint NOT NULL,
    PRIMARY KEY (account, kind, key)
);
CREATE INDEX idempotency_by_age ON idempotency_keys (created_at);

CREATE TABLE blob_deletions (
    blob_key    text PRIMARY KEY,
    file_id     text NOT NULL,
    queued_at   bigint NOT NULL
);

CREATE INDEX files_expiring ON files (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX batches_by_age ON batches (created_at);
