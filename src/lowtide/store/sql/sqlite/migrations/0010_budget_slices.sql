-- 0010: the fleet's shared rpm/tpm budgets of backends (lowtide.engine.budgets): each row is a
-- slice of a backend's rolling minute that a worker took; it counts against the budget until
-- `until` (the end of its use) plus the window, then it is deleted. (One process owns a SQLite
-- database and keeps its budgets in memory; the table keeps both dialects' schemas alike.)
CREATE TABLE budget_slices (
    id        INTEGER PRIMARY KEY,
    backend   TEXT NOT NULL,
    owner     TEXT NOT NULL,
    until     REAL NOT NULL,
    requests  INTEGER NOT NULL,
    tokens    INTEGER NOT NULL
);
CREATE INDEX budget_slices_by_backend ON budget_slices (backend, until);
