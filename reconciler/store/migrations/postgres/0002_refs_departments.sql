-- A target's other references per person (a platform photoId), and the departments we created
-- on kinds that have departments (sophon_sight): only these may ever be deleted.
ALTER TABLE ledger ADD COLUMN refs TEXT NOT NULL DEFAULT '{}';

CREATE TABLE department_ledger (
    target        TEXT NOT NULL,
    department_id TEXT NOT NULL,
    parent        TEXT,
    fingerprint   TEXT NOT NULL,
    applied_at    DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (target, department_id)
);
