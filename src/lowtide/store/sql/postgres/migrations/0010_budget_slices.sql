-- 0010: the fleet's shared rpm/tpm budgets of backends (lowtide.engine.budgets): each row is a
-- slice of a backend's rolling minute that a worker took; it counts against the budget until
-- `until` (the end of its use) plus the window, then it is deleted.
CREATE TABLE budget_slices (
    id        bigserial PRIMARY KEY,
    backend   text NOT NULL,
    owner     text NOT NULL,
    until     double precision NOT NULL,
    requests  integer NOT NULL,
    tokens    bigint NOT NULL
);
CREATE INDEX budget_slices_by_backend ON budget_slices (backend, until);
