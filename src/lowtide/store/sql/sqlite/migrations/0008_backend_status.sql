-- 0008: what each engine sees of each backend (up or down, since when, why, its current
-- concurrency limit), so that API processes can show it (/ready, /v1/backends, a batch's
-- waiting_for). Each engine rewrites its own rows; rows not refreshed for a while are
-- ignored (their engine is gone).
CREATE TABLE backend_status (
    backend            TEXT NOT NULL,
    owner              TEXT NOT NULL,
    up                 INTEGER NOT NULL,
    since              REAL NOT NULL,
    error              TEXT,
    concurrency_limit  INTEGER NOT NULL,
    in_flight          INTEGER NOT NULL,
    updated_at         REAL NOT NULL,
    PRIMARY KEY (backend, owner)
);
