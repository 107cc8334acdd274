-- Each target's last settled plan (nothing to do), with the key of everything it was computed
-- from, so that a new process (`reconciler plan` by hand) need not read the whole target and
-- plan every person again when nothing changed. Anything off is a miss, never an error. (The
-- ledger version in the key is a checksum of the rows as the server holds them.)
CREATE TABLE settled_plans (
    target     TEXT PRIMARY KEY,
    key        TEXT NOT NULL,
    plan       TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
