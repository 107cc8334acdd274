"""What only the SQLite store does: migrating an old file in place, and one writer per file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from reconciler.errors import StoreError
from reconciler.store.sqlite import SqliteStore, migrations


async def test_a_version_1_store_is_migrated_keeping_its_ledger(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for version, script in migrations():
        if version == 1:
            db.executescript(script)
            db.execute("INSERT INTO schema_version (version) VALUES (1)")
    db.execute(
        "INSERT INTO ledger (target, person_id, remote_id, fingerprint, written, applied_at) "
        "VALUES ('lobby', '1', NULL, 'fp', '{}', 1.0)"
    )
    db.commit()
    db.close()

    store = await SqliteStore.open(path)
    try:
        assert (await store.ledger("lobby"))["1"].refs == {}
        assert await store.departments("lobby") == {}
    finally:
        await store.aclose()


async def test_the_file_lock_covers_every_target_and_names_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    one, two = await SqliteStore.open(path), await SqliteStore.open(path)
    try:
        async with one.writer(["lobby"]):
            # Another target of the same file is no way round it: one writer per file.
            with pytest.raises(StoreError, match=r"another reconciler \(pid \d+\) is applying"):
                async with two.writer(["kiosk"], partial=True):
                    pass
        async with two.writer(["kiosk"]):
            pass
    finally:
        await one.aclose()
        await two.aclose()
