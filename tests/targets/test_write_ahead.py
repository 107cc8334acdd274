"""The write-ahead, through the real executor and store: no create reaches a device before its
pending row is in the ledger, although the rows are now written batch by batch, while earlier
calls are in flight, rather than all before the first call."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

import orjson
from aiohttp import web

from reconciler import executor
from reconciler.core import planning
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
