-- 0005: SQLite renames its `offset` column to byte_offset, the name PostgreSQL has used from
-- the start: nothing to change here. (The versions of both dialects stay in step.)
SELECT 1;
