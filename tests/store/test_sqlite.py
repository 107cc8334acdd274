"""The SQLite store: ledger semantics, migrations, the fingerprint key and the writer lock."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from reconciler.core.changes import Attempt
from reconciler.core.planning import DepartmentEntry, LedgerEntry
from reconciler.errors import StoreError
from reconciler.store.sqlite import SqliteStore, migrations


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = await SqliteStore.open(tmp_path / "state" / "reconciler.sqlite3")
    yield opened
    await opened.aclose()


def entry(pid: str, fingerprint: str = "fp", remote_id: str | None = None) -> LedgerEntry:
    return LedgerEntry(
        person_id=pid,
        remote_id=remote_id,
        fingerprint=fingerprint,
        written={"avatar": "h"},
        applied_at=1.0,
    )


async def test_pending_rows_are_owned_and_confirmation_fills_them(store: SqliteStore) -> None:
    await store.mark_pending("lobby", ["1", "2"])
    ledger = await store.ledger("lobby")
    assert set(ledger) == {"1", "2"}
    assert all(e.pending for e in ledger.values())

    await store.record("lobby", [entry("1", remote_id="77")])
    await store.mark_pending("lobby", ["1"])  # a later write-ahead never erases a confirmation
    ledger = await store.ledger("lobby")
    assert (ledger["1"].fingerprint, ledger["1"].remote_id, dict(ledger["1"].written)) == (
        "fp",
        "77",
        {"avatar": "h"},
    )
    assert ledger["2"].pending


async def test_confirmed_deletes_remove_rows_and_targets_are_separate(store: SqliteStore) -> None:
    await store.record("lobby", [entry("1"), entry("2")])
    await store.record("kiosk", [entry("1")])
    await store.record("lobby", [], ["1"])
    assert set(await store.ledger("lobby")) == {"2"}
    assert set(await store.ledger("kiosk")) == {"1"}
    await store.forget("kiosk", ["1"])
    assert await store.ledger("kiosk") == {}


async def test_a_known_remote_id_is_kept_when_an_update_does_not_know_it(
    store: SqliteStore,
) -> None:
    await store.record("cms", [entry("1", remote_id="42")])
    await store.record("cms", [entry("1", fingerprint="fp2")])
    assert (await store.ledger("cms"))["1"].remote_id == "42"


async def test_passes_are_recorded(store: SqliteStore) -> None:
    pass_id = await store.begin_pass("apply")
    await store.finish_pass(pass_id, result="ok", plan_fingerprint="b2:x", summary={"applied": 3})
    (record,) = await store.passes()
    assert (record.mode, record.result, record.summary) == ("apply", "ok", {"applied": 3})
    assert record.finished_at is not None


async def test_the_fingerprint_key_is_made_once_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    first = await SqliteStore.open(path)
    key = await first.fingerprint_key()
    assert key == await first.fingerprint_key()
    await first.aclose()
    second = await SqliteStore.open(path)  # migrations run again: a no-op
    try:
        assert await second.fingerprint_key() == key
        assert len(key) == 32
    finally:
        await second.aclose()


async def test_only_one_writer_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    one, two = await SqliteStore.open(path), await SqliteStore.open(path)
    try:
        async with one.writer():
            with pytest.raises(StoreError, match="is applying"):
                async with two.writer():
                    pass
        async with two.writer():
            pass
    finally:
        await one.aclose()
        await two.aclose()


async def test_a_store_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = await SqliteStore.open(path)
    await store.aclose()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO schema_version (version) VALUES (99)")
    with pytest.raises(StoreError, match="upgrade reconciler"):
        await SqliteStore.open(path)


async def test_old_pass_records_are_dropped(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reconciler.store import sqlite as module

    monkeypatch.setattr(module, "PASSES_KEPT", 3)
    for _ in range(5):
        await store.begin_pass("apply")
    assert [p.id for p in await store.passes()] == [5, 4, 3]


async def test_refs_are_stored_replaced_and_dropped_with_the_row(store: SqliteStore) -> None:
    first = LedgerEntry(person_id="1", fingerprint="a", refs={"photoId": "p1"}, applied_at=1.0)
    await store.record("platform", [first])
    assert (await store.ledger("platform"))["1"].refs == {"photoId": "p1"}
    await store.record("platform", [LedgerEntry(person_id="1", fingerprint="b", applied_at=2.0)])
    assert (await store.ledger("platform"))["1"].refs == {}
    await store.record("platform", [], ["1"])
    assert await store.ledger("platform") == {}


async def test_the_department_ledger_records_and_forgets(store: SqliteStore) -> None:
    hq = DepartmentEntry(department_id="HQ", fingerprint="f1", applied_at=1.0)
    rd = DepartmentEntry(department_id="D01", parent="HQ", fingerprint="f2", applied_at=1.0)
    await store.record_departments("platform", [hq, rd])
    assert await store.departments("platform") == {"D01": rd, "HQ": hq}
    assert await store.departments("other") == {}
    await store.record_departments("platform", [], ["D01"])
    assert set(await store.departments("platform")) == {"HQ"}


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


async def test_attempts_are_recorded_replaced_and_cleared(store: SqliteStore) -> None:
    first = Attempt(person_id="1", fingerprint="f", failures=1, next_try=60.0, error="no face")
    await store.record_attempts("fog", [first])
    assert await store.attempts("fog") == {"1": first}
    second = Attempt(person_id="1", fingerprint="f", failures=2, next_try=120.0, error="no face")
    await store.record_attempts("fog", [second])
    assert await store.attempts("fog") == {"1": second}
    assert await store.attempts("other") == {}
    await store.record_attempts("fog", [], ["1"])
    assert await store.attempts("fog") == {}


async def test_the_ledger_version_moves_with_every_ledger_write_and_only_then(
    store: SqliteStore, tmp_path: Path
) -> None:
    versions = [await store.ledger_version("lobby")]

    async def moved() -> bool:
        versions.append(await store.ledger_version("lobby"))
        return versions[-1] != versions[-2]

    assert not await moved()
    await store.mark_pending("lobby", ["1"])
    assert await moved()
    await store.record("lobby", [entry("1")])
    assert await moved()
    await store.adopt("lobby", {"2": None})
    assert await moved()
    await store.record_departments("lobby", [DepartmentEntry(department_id="D1")])
    assert await moved()
    await store.forget("lobby", ["2"])
    assert await moved()
    # Other targets' rows, attempts and passes leave this target's ledger as it was.
    await store.record("kiosk", [entry("1")])
    await store.record_attempts(
        "lobby", [Attempt(person_id="1", fingerprint="fp", failures=1, next_try=2.0, error="e")]
    )
    await store.finish_pass(
        await store.begin_pass("apply"), result="ok", plan_fingerprint=None, summary={}
    )
    assert not await moved()
    # Another process writing the same file is seen too.
    other = await SqliteStore.open(store.path)
    try:
        await other.record("kiosk", [entry("3")])
    finally:
        await other.aclose()
    assert await moved()
    assert not await moved()
