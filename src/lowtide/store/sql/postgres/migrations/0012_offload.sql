-- 0012: offload to hosted Batch APIs (lowtide.engine.offload, docs/offload.md). A chunk is a
-- group of one batch's requests sent to one batch backend as one upstream input file and one
-- upstream batch; its states are those of lowtide.domain.offload (claimed ... done). Its
-- requests stay leased to it (lease_owner 'offload:<chunk id>', a lease that never runs out
-- by itself) until it records their outcomes; the chunk's own lease is what a worker renews
-- and another takes over. offload_lines holds each request's lease epoch at the moment the
-- chunk took it: the fence of the outcome the chunk records for it. Done chunks stay, as the
-- record of which lines ran where and at what price factor.
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
