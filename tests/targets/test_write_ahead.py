"""The write-ahead, through the real executor and store: no create reaches a device before its
pending row is in the ledger, although the rows are now written batch by batch, while earlier
calls are in flight, rather than all before the first call."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path

import orjson
from aiohttp import web

from reconciler import executor
from reconciler.core import planning
from reconciler.core.changes import Action, Change, Reason
from reconciler.simulators.base import Simulator, serve
from reconciler.simulators.nebula_pass import NebulaPassSimulator
from reconciler.simulators.sophon_fog import SophonFogSimulator
from reconciler.store.sqlite import SqliteStore
from reconciler.targets import KINDS
from tests.targets.test_contract import FAST, HASHER, desired, person

PERSONS = 450


class _Watch:
    """Notes, as each create arrives, which of its persons the ledger does not hold yet."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.arrived: list[str] = []
        self.unowned: list[str] = []

    def check(self, person_ids: list[str]) -> None:
        with contextlib.closing(sqlite3.connect(self.database)) as db:
            owned = {row[0] for row in db.execute("SELECT person_id FROM ledger")}
        self.arrived.extend(person_ids)
        self.unowned.extend(pid for pid in person_ids if pid not in owned)


class WatchedNebula(NebulaPassSimulator):
    def __init__(self, watch: _Watch) -> None:
        super().__init__(username="admin", password="nebula-pw-123")
        self.watch = watch

    async def _upsert_batch(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.watch.check([user["user_id"] for user in body["user_list"]])
        return await super()._upsert_batch(request)


class WatchedFog(SophonFogSimulator):
    def __init__(self, watch: _Watch) -> None:
        super().__init__()
        self.watch = watch

    async def _create(self, request: web.Request) -> web.Response:
        self.watch.check([orjson.loads(await request.read())["identity_id"]])
        return await super()._create(request)


async def _first_sync(
    tmp_path: Path, kind: str, simulator: Callable[[_Watch], Simulator], **settings: object
) -> _Watch:
    database = tmp_path / "store.sqlite3"
    store = await SqliteStore.open(database)
    watch = _Watch(database)
    async with await serve(simulator(watch)) as served:
        entry = KINDS[kind]
        values = {"url": served.url, "rate_limit": None, "concurrency": 4, **settings}
        target = entry.build("door", entry.settings(**values), FAST)
        try:
            wanted = desired(*(person(f"{n:04d}") for n in range(PERSONS)))
            observed = await target.observe()
            plan = planning.compute(
                wanted, target.spec, observed, await store.ledger("door"), HASHER
            )
            report = await executor.apply(plan, target, store)
        finally:
            await target.aclose()
            await store.aclose()
    assert report.applied == PERSONS, report.failures
    return watch


async def test_a_batch_of_creates_is_owned_before_it_is_sent(tmp_path: Path) -> None:
    watch = await _first_sync(
        tmp_path, "nebula_pass", WatchedNebula, username="admin", password="nebula-pw-123"
    )
    assert sorted(watch.arrived) == [f"{n:04d}" for n in range(PERSONS)]
    assert watch.unowned == []


async def test_a_create_per_call_is_owned_before_it_is_sent(tmp_path: Path) -> None:
    watch = await _first_sync(tmp_path, "sophon_fog", WatchedFog)
    assert sorted(watch.arrived) == [f"{n:04d}" for n in range(PERSONS)]
    assert watch.unowned == []


class _Runs(SqliteStore):
    """The real store, noting each write-ahead run it is asked for."""

    runs: list[list[str]]

    async def mark_pending(self, target: str, person_ids: Iterable[str]) -> None:
        run = list(person_ids)
        self.runs.append(run)
        await super().mark_pending(target, run)


def _change(pid: str, action: Action) -> Change:
    return Change(action=action, person_id=pid, reason=Reason.INTENT, fingerprint="f")


async def _runs(
    tmp_path: Path, batches: list[list[Change]], changes: list[Change]
) -> tuple[_Runs, list[int]]:
    """The runs written for these batches, asked for in this order, and how many of each
    batch's creates had no row written or being written when it asked."""
    store = await _Runs.open(tmp_path / "store.sqlite3")
    store.runs = []
    unwritten = []
    try:
        ahead = executor._WriteAhead(store, "door", changes)
        for batch in batches:
            creates = [c.person_id for c in batch if c.action is Action.CREATE]
            unwritten.append(sum(1 for pid in creates if pid not in ahead._writes))
            await ahead.before(batch)
        await ahead.settled()
        assert set(await store.ledger("door")) >= {
            c.person_id for batch in batches for c in batch if c.action is Action.CREATE
        }
    finally:
        await store.aclose()
    return store, unwritten


async def test_write_ahead_runs_cover_each_create_once_ahead_of_the_calls(
    tmp_path: Path,
) -> None:
    # Every fifth change is an update: it has a ledger row already and needs none.
    changes = [
        _change(f"{n:04d}", Action.UPDATE if n % 5 == 0 else Action.CREATE) for n in range(3000)
    ]
    creates = [c.person_id for c in changes if c.action is Action.CREATE]
    batches = [changes[i : i + 100] for i in range(0, len(changes), 100)]
    store, unwritten = await _runs(tmp_path, batches, changes)
    # The first call waits for its own 80 creates alone; every later one finds its rows
    # written or being written, by runs that reach further each time, up to RUN_AHEAD.
    assert unwritten == [80] + [0] * (len(batches) - 1)
    assert store.runs[0] == creates[:80]
    assert [len(run) for run in store.runs[:4]] == [80, 80, 160, 320]
    assert max(len(run) for run in store.runs) == executor._WriteAhead.RUN_AHEAD
    assert [pid for run in store.runs for pid in run] == creates  # plan order, each once


async def test_a_batch_sent_out_of_order_is_owned_with_everything_planned_before_it(
    tmp_path: Path,
) -> None:
    changes = [_change(f"{n:04d}", Action.CREATE) for n in range(500)]
    last, first = changes[400:], changes[:100]
    store, unwritten = await _runs(tmp_path, [last, first], changes)
    assert unwritten == [100, 0]
    # The last batch first: its rows and every create before it, in one run; then nothing.
    assert store.runs == [[c.person_id for c in last] + [c.person_id for c in changes[:400]]]
