-- The target tier's memory (core.quarantine): failing passes in a row and the quarantine they
-- led to. One row per target that is failing or quarantined; a healthy target has none.
CREATE TABLE target_health (
    target         TEXT PRIMARY KEY,
    failing_passes INTEGER NOT NULL,
    since          DOUBLE PRECISION,
    until          DOUBLE PRECISION,
    quarantines    INTEGER NOT NULL,
    error          TEXT NOT NULL
);
