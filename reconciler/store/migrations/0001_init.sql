-- The ledger (what we applied and own, per target and person), passes, and store metadata.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

CREATE TABLE ledger (
    target      TEXT NOT NULL,
    person_id   TEXT NOT NULL,
    remote_id   TEXT,
    -- keyed fingerprint of the record last confirmed; '' while a write is unconfirmed
    fingerprint TEXT NOT NULL DEFAULT '',
    -- JSON object: write-only field -> keyed hash of what was last confirmed
    written     TEXT NOT NULL DEFAULT '{}',
    applied_at  REAL NOT NULL,
    PRIMARY KEY (target, person_id)
);

CREATE TABLE passes (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at       REAL NOT NULL,
    finished_at      REAL,
    mode             TEXT NOT NULL,
    result           TEXT,
    plan_fingerprint TEXT,
    summary          TEXT,
    error            TEXT
);
