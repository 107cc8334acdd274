"""The store contract, on both backends (SQLite and PostgreSQL): ledger semantics, attempts,
target health, passes, the fingerprint key, migrations and the writer lock."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from reconciler.core.changes import Attempt
from reconciler.core.planning import DepartmentEntry, LedgerEntry
from reconciler.core.quarantine import HEALTHY, Health
from reconciler.errors import StoreError
from reconciler.store import base
from reconciler.store.base import Settled, Store
from reconciler.store.postgres import PostgresStore, parse_url
from reconciler.store.sqlite import SqliteStore


@dataclass(frozen=True, slots=True)
class Backend:
    """One backend under test: how to open (another handle on) the same store, and how to
    write its schema version behind its back."""

    name: str
    open: Callable[[], Awaitable[Store]]
    set_version: Callable[[int], None]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        path = tmp_path / "state" / "reconciler.sqlite3"

        def sqlite_version(version: int) -> None:
            with sqlite3.connect(path) as db:
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

        return Backend("sqlite", lambda: SqliteStore.open(path), sqlite_version)
    url = request.getfixturevalue("postgres_schema")()
    location = parse_url(url)

    def postgres_version(version: int) -> None:
        with psycopg.connect(location.conninfo, autocommit=True) as db:
            db.execute(
                sql.SQL("INSERT INTO {}.schema_version (version) VALUES (%s)").format(
                    sql.Identifier(location.schema)
                ),
                (version,),
            )

    return Backend("postgres", lambda: PostgresStore.open(url), postgres_version)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    opened = await backend.open()
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


async def test_pending_rows_are_owned_and_confirmation_fills_them(store: Store) -> None:
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


async def test_confirmed_deletes_remove_rows_and_targets_are_separate(store: Store) -> None:
    await store.record("lobby", [entry("1"), entry("2")])
    await store.record("kiosk", [entry("1")])
    await store.record("lobby", [], ["1"])
    assert set(await store.ledger("lobby")) == {"2"}
    assert set(await store.ledger("kiosk")) == {"1"}
    await store.forget("kiosk", ["1"])
    assert await store.ledger("kiosk") == {}


async def test_writes_of_many_rows_take_every_row(store: Store) -> None:
    """More rows than one statement writes (the SQLite store writes them 100 at a time)."""
    pids = [f"{n:04d}" for n in range(250)]
    await store.mark_pending("lobby", pids)
    assert set(await store.ledger("lobby")) == set(pids)
    await store.record("lobby", [entry(pid, remote_id=pid) for pid in pids[:201]], pids[201:])
    ledger = await store.ledger("lobby")
    assert set(ledger) == set(pids[:201])
    assert all(e.remote_id == pid and not e.pending for pid, e in ledger.items())
    await store.record("lobby", [], pids[:150])
    assert set(await store.ledger("lobby")) == set(pids[150:201])
    failed = [
        Attempt(person_id=pid, fingerprint="f", failures=1, next_try=1.0, error="x") for pid in pids
    ]
    await store.record_attempts("lobby", failed)
    await store.record_attempts("lobby", [], pids[:249])
    assert set(await store.attempts("lobby")) == {pids[249]}
    await store.adopt("kiosk", {pid: f"r{pid}" for pid in pids})
    assert len(await store.ledger("kiosk")) == 250
    departments = [
        DepartmentEntry(department_id=pid, parent=None, fingerprint="f", applied_at=1.0)
        for pid in pids
    ]
    await store.record_departments("lobby", departments)
    await store.record_departments("lobby", [], pids[:120])
    assert set(await store.departments("lobby")) == set(pids[120:])


async def test_a_known_remote_id_is_kept_when_an_update_does_not_know_it(
    store: Store,
) -> None:
    await store.record("cms", [entry("1", remote_id="42")])
    await store.record("cms", [entry("1", fingerprint="fp2")])
    assert (await store.ledger("cms"))["1"].remote_id == "42"


async def test_passes_are_recorded(store: Store) -> None:
    pass_id = await store.begin_pass("apply")
    await store.finish_pass(pass_id, result="ok", plan_fingerprint="b2:x", summary={"applied": 3})
    (record,) = await store.passes()
    assert (record.mode, record.result, record.summary) == ("apply", "ok", {"applied": 3})
    assert record.finished_at is not None


async def test_refs_are_stored_replaced_and_dropped_with_the_row(store: Store) -> None:
    first = LedgerEntry(person_id="1", fingerprint="a", refs={"photoId": "p1"}, applied_at=1.0)
    await store.record("platform", [first])
    assert (await store.ledger("platform"))["1"].refs == {"photoId": "p1"}
    await store.record("platform", [LedgerEntry(person_id="1", fingerprint="b", applied_at=2.0)])
    assert (await store.ledger("platform"))["1"].refs == {}
    await store.record("platform", [], ["1"])
    assert await store.ledger("platform") == {}


async def test_the_department_ledger_records_and_forgets(store: Store) -> None:
    hq = DepartmentEntry(department_id="HQ", fingerprint="f1", applied_at=1.0)
    rd = DepartmentEntry(department_id="D01", parent="HQ", fingerprint="f2", applied_at=1.0)
    await store.record_departments("platform", [hq, rd])
    assert await store.departments("platform") == {"D01": rd, "HQ": hq}
    assert await store.departments("other") == {}
    await store.record_departments("platform", [], ["D01"])
    assert set(await store.departments("platform")) == {"HQ"}


async def test_attempts_are_recorded_replaced_and_cleared(store: Store) -> None:
    first = Attempt(person_id="1", fingerprint="f", failures=1, next_try=60.0, error="no face")
    await store.record_attempts("fog", [first])
    assert await store.attempts("fog") == {"1": first}
    second = Attempt(person_id="1", fingerprint="f", failures=2, next_try=120.0, error="no face")
    await store.record_attempts("fog", [second])
    assert await store.attempts("fog") == {"1": second}
    assert await store.attempts("other") == {}
    await store.record_attempts("fog", [], ["1"])
    assert await store.attempts("fog") == {}


async def test_target_health_is_kept_until_the_target_is_healthy(store: Store) -> None:
    failing = Health(failing_passes=2, since=100.0, error="connection refused")
    await store.record_health("lobby", failing)
    assert await store.health() == {"lobby": failing}
    quarantined = Health(
        failing_passes=3, since=100.0, until=700.0, quarantines=1, error="connection refused"
    )
    await store.record_health("lobby", quarantined)
    await store.record_health("fog", failing)
    assert await store.health() == {"fog": failing, "lobby": quarantined}
    await store.record_health("lobby", HEALTHY)
    assert await store.health() == {"fog": failing}


async def test_the_fingerprint_key_is_made_once_and_survives_reopening(backend: Backend) -> None:
    first = await backend.open()
    key = await first.fingerprint_key()
    assert key == await first.fingerprint_key()
    await first.aclose()
    second = await backend.open()  # migrations run again: a no-op
    try:
        assert await second.fingerprint_key() == key
        assert len(key) == 32
    finally:
        await second.aclose()


async def test_a_store_from_a_newer_version_is_refused(backend: Backend) -> None:
    store = await backend.open()
    await store.aclose()
    backend.set_version(99)
    with pytest.raises(StoreError, match="upgrade reconciler"):
        await backend.open()


async def test_old_pass_records_are_dropped(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "PASSES_KEPT", 3)
    for _ in range(5):
        await store.begin_pass("apply")
    assert [p.id for p in await store.passes()] == [5, 4, 3]


async def test_managed_counts_ledger_rows_per_target(store: Store) -> None:
    await store.record("lobby", [entry("1"), entry("2")])
    await store.mark_pending("kiosk", ["9"])
    assert await store.managed() == {"lobby": 2, "kiosk": 1}


async def test_adopted_persons_are_owned_pending_with_their_remote_ids(store: Store) -> None:
    await store.record("cms", [entry("1", remote_id="41")])
    await store.adopt("cms", {"1": "99", "2": "42", "3": None})
    ledger = await store.ledger("cms")
    # Already owned and confirmed: unchanged.
    assert (ledger["1"].pending, ledger["1"].remote_id) == (False, "41")
    assert (ledger["2"].pending, ledger["2"].remote_id) == (True, "42")
    assert (ledger["3"].pending, ledger["3"].remote_id) == (True, None)


async def test_one_writer_per_target_at_a_time(backend: Backend) -> None:
    one, two = await backend.open(), await backend.open()
    try:
        async with one.writer(["lobby"]) as held:
            assert held == {"lobby"}
            async with one.writer(["lobby"]) as again:  # re-entrant: the pass inside a pass
                assert again == {"lobby"}
            with pytest.raises(StoreError, match=r"lobby|is applying"):
                async with two.writer(["lobby"]):
                    pass
        async with two.writer(["lobby"]) as held:
            assert held == {"lobby"}
    finally:
        await one.aclose()
        await two.aclose()


async def test_a_waiting_writer_gets_the_target_once_it_is_released(backend: Backend) -> None:
    one, two = await backend.open(), await backend.open()
    released = asyncio.Event()
    try:

        async def hold() -> None:
            async with one.writer(["lobby"]):
                await asyncio.sleep(0.3)
            released.set()

        holding = asyncio.create_task(hold())
        await asyncio.sleep(0.05)
        async with two.writer(["lobby"], wait=30.0) as held:
            assert released.is_set()
            assert held == {"lobby"}
        await holding
    finally:
        await one.aclose()
        await two.aclose()


async def test_the_ledger_version_moves_with_every_ledger_write_and_only_then(
    store: Store, backend: Backend
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
    # Another process writing this target's ledger is seen too.
    other = await backend.open()
    try:
        await other.record("lobby", [entry("3")])
    finally:
        await other.aclose()
    assert await moved()
    assert not await moved()


async def test_the_ledger_version_outlives_the_process(backend: Backend) -> None:
    first = await backend.open()
    try:
        await first.record("lobby", [entry("1")])
        version = await first.ledger_version("lobby")
    finally:
        await first.aclose()
    second = await backend.open()
    try:
        assert await second.ledger_version("lobby") == version
        await second.record("lobby", [entry("1", fingerprint="fp2")])
        assert await second.ledger_version("lobby") != version
    finally:
        await second.aclose()


async def test_settled_plans_are_kept_per_target_replaced_and_outlive_the_process(
    backend: Backend,
) -> None:
    one = Settled(key="k1", plan={"target": "lobby", "foreign": ["9"]}, expires_at=10.5)
    two = Settled(key="k2", plan={"target": "lobby", "foreign": []}, expires_at=20.0)
    first = await backend.open()
    try:
        assert await first.settled("lobby") is None
        await first.remember_settled("lobby", one)
        await first.remember_settled("kiosk", two)
        assert await first.settled("lobby") == one
        await first.remember_settled("lobby", two)
    finally:
        await first.aclose()
    second = await backend.open()
    try:
        assert await second.settled("lobby") == two
        assert await second.settled("kiosk") == two
    finally:
        await second.aclose()
