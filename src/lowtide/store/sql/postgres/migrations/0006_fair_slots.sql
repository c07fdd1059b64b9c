-- 0006: how many slots each worker wants, so that a backend's slots are shared fairly
-- between the workers that want them (lowtide.store.slots).
CREATE TABLE slot_demands (
    backend      text NOT NULL,
    owner        text NOT NULL,
    want         integer NOT NULL,
    lease_until  double precision NOT NULL,
    PRIMARY KEY (backend, owner)
);
