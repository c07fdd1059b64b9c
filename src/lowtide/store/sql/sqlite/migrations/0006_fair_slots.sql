-- 0006: a backend's max_concurrency as leased slots, and how many each worker wants, so that
-- slots are shared fairly between the workers that want them (lowtide.store.slots).
CREATE TABLE backend_slots (
    backend      TEXT NOT NULL,
    slot         INTEGER NOT NULL,
    owner        TEXT,
    lease_until  REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (backend, slot)
);

CREATE TABLE slot_demands (
    backend      TEXT NOT NULL,
    owner        TEXT NOT NULL,
    want         INTEGER NOT NULL,
    lease_until  REAL NOT NULL,
    PRIMARY KEY (backend, owner)
);
