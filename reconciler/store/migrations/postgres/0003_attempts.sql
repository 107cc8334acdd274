-- Changes that failed after their request-level retries: each waits out an exponential back-off
-- before it is tried again, so one bad person never hammers a target.
CREATE TABLE attempts (
    target      TEXT NOT NULL,
    person_id   TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    failures    INTEGER NOT NULL,
    next_try    DOUBLE PRECISION NOT NULL,
    error       TEXT NOT NULL,
    PRIMARY KEY (target, person_id)
);
