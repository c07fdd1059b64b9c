-- 0003: requests keep their rendered output/error-file line instead of the backend's answer
-- body, so that finalisation only concatenates stored lines. The lines of batches still
-- running are rendered from the old columns by the Python step of this migration
-- (lowtide.store.migrations.AFTER), which then drops ``body``.
ALTER TABLE requests ADD COLUMN result BLOB;
