-- 0008: what each engine sees of each backend (up or down, since when, why, its current
-- concurrency limit), so that API processes can show it (/ready, /v1/backends, a batch's
-- waiting_for). Each engine rewrites its own rows; rows not refreshed for a while are
-- ignored (their engine is gone).
CREATE TABLE backend_status (
    backend            text NOT NULL,
    owner              text NOT NULL,
    up                 boolean NOT NULL,
    since              double precision NOT NULL,
    error              text,
    concurrency_limit  integer NOT NULL,
    in_flight          integer NOT NULL,
    updated_at         double precision NOT NULL,
    PRIMARY KEY (backend, owner)
);
