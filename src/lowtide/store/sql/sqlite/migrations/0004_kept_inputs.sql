-- 0004: input files deleted while a batch that reads them was still validating. (A database
-- written by the release that brought this table may have it already.)
CREATE TABLE IF NOT EXISTS kept_inputs (
    batch_id    TEXT PRIMARY KEY,
    purpose     TEXT NOT NULL,
    blob_key    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS kept_inputs_by_blob ON kept_inputs (blob_key);
