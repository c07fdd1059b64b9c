-- Input files deleted while a batch that reads them was still validating: the batch validates
-- from these bytes all the same. They stay queued in blob_deletions until no live batch reads
-- them, and this row goes when they do.
CREATE TABLE kept_inputs (
    batch_id    text PRIMARY KEY,
    purpose     text NOT NULL,
    blob_key    text NOT NULL
);
CREATE INDEX kept_inputs_by_blob ON kept_inputs (blob_key);
