-- The ledger version that outlives a process: a counter per target that every write to its
-- ledger or department ledger moves. Triggers move it, so no writer can forget to: not this
-- store, another process, nor an operator's sqlite3 shell.
CREATE TABLE ledger_versions (
    target  TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);

CREATE TRIGGER ledger_inserted AFTER INSERT ON ledger BEGIN
    INSERT INTO ledger_versions (target, version) VALUES (NEW.target, 1)
    ON CONFLICT (target) DO UPDATE SET version = version + 1;
END;
CREATE TRIGGER ledger_updated AFTER UPDATE ON ledger BEGIN
    INSERT INTO ledger_versions (target, version) VALUES (NEW.target, 1)
    ON CONFLICT (target) DO UPDATE SET version = version + 1;
    INSERT INTO ledger_versions (target, version) VALUES (OLD.target, 1)
    ON CONFLICT (target) DO UPDATE SET version = version + 1;
END;
CREATE TRIGGER ledger_deleted AFTER DELETE ON ledger BEGIN
    INSERT INTO ledger_versions (target, version) VALUES (OLD.target, 1)
    ON CONFLICT (target) DO UPDATE SET version = version + 1;
END;
CREATE TRIGGER department_ledger_inserted AFTER INSERT ON department_ledger BEGIN
    INSERT INTO ledger_versions (target, version) VALUES (NEW.target, 1)
    ON CONFLICT (target) DO UPDATE SET version = version + 1;
END;
CREATE TRIGGER department_ledger_updated AFTER UPDATE ON department_ledger BEGIN
    INSERT INTO ledger_versions (target, version) VALUES (NEW.target, 1)
    ON CONFLICT (target) DO UPDATE SET version = version + 1;
    INSERT INTO ledger_versions (target, version) VALUES (OLD.target, 1)
    ON CONFLICT (target) DO UPDATE SET version = version + 1;
END;
CREATE TRIGGER department_ledger_deleted AFTER DELETE ON department_ledger BEGIN
    INSERT INTO ledger_versions (target, version) VALUES (OLD.target, 1)
    ON CONFLICT (target) DO UPDATE SET version = version + 1;
END;

-- Each target's last settled plan (nothing to do), with the key of everything it was computed
-- from, so that a new process (`reconciler plan` by hand) need not read the whole target and
-- plan every person again when nothing changed. Anything off is a miss, never an error.
CREATE TABLE settled_plans (
    target     TEXT PRIMARY KEY,
    key        TEXT NOT NULL,
    plan       TEXT NOT NULL,
    expires_at REAL NOT NULL
);
