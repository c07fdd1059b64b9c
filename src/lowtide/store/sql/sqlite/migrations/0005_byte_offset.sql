-- 0005: the column PostgreSQL calls byte_offset has that name here too.
ALTER TABLE requests RENAME COLUMN offset TO byte_offset;
