"""One contract, every kind: each adapter against its simulator over loopback, through the real
planner, executor and store. What differs per kind lives in harnesses.py."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from reconciler import executor
from reconciler.core import attempts, planning
from reconciler.core.changes import Action, TargetPlan
from reconciler.core.persons import Department, Desired, Person, Photo
from reconciler.core.records import Hasher
from reconciler.daemon.server import Listening
from reconciler.errors import PermanentTargetError, TargetError
from reconciler.executor import TargetReport
from reconciler.simulators.base import Simulator, serve
from reconciler.simulators.sophon_fog import SophonFogSimulator
from reconciler.store.sqlite import SqliteStore
from reconciler.targets import KINDS
from reconciler.targets.base import Target
from reconciler.targets.http import Backoff
from tests.targets.harnesses import HARNESSES, Harness
from tests.targets.sync import desired as desired_state

HASHER = Hasher(b"c" * 32)
FAST = Backoff(attempts=3, initial=0.01, maximum=0.1, budget=5)
DEPARTMENTS = (
    Department(id="HQ", name="Headquarters"),
    Department(id="D01", name="R&D", parent="HQ"),
)


@dataclass
class Rig:
    """One kind's simulator on loopback, an adapter pointed at it, and a real store."""

    harness: Harness
    simulator: Simulator
    served: Listening
    store: SqliteStore
    targets: list[Target]

    def target(self, **overrides: Any) -> Target:
        entry = KINDS[self.harness.kind]
        values = {"url": self.served.url, "rate_limit": None, **self.harness.settings, **overrides}
        target = entry.build("door", entry.settings(**values), FAST)
        self.targets.append(target)
        return target

    async def plan(self, target: Target, wanted: Desired) -> TargetPlan:
        spec = target.spec
        observed = await target.observe() if spec.kind.can_list else None
        return planning.compute(
            wanted,
            spec,
            observed,
            await self.store.ledger(spec.name),
            HASHER,
            departments=await self.store.departments(spec.name) if spec.kind.departments else None,
            now=time.time(),
        )

    async def sync(self, target: Target, wanted: Desired) -> TargetReport:
        report = await executor.apply(await self.plan(target, wanted), target, self.store)
        assert report.failures == [], report.failures
        return report


@pytest.fixture(params=sorted(HARNESSES))
async def rig(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Rig]:
    harness = HARNESSES[request.param]
    simulator = harness.simulator()
    served = await serve(simulator)
    store = await SqliteStore.open(tmp_path / "store.sqlite3")
    made = Rig(harness=harness, simulator=simulator, served=served, store=store, targets=[])
    try:
        yield made
    finally:
        for target in made.targets:
            await target.aclose()
        await store.aclose()
        await served.close()


def person(pid: str, **fields: Any) -> Person:
    fields.setdefault("name", f"Person {pid}")
    fields.setdefault("department", "D01")
    fields.setdefault("email", f"p{pid}@example.com")
    return Person(id=pid, **fields)


def desired(*persons: Person) -> Desired:
    return desired_state(*persons, departments=DEPARTMENTS)


def changes(plan: TargetPlan) -> list[tuple[Action, str]]:
    return [(c.action, c.person_id) for c in plan.changes]


async def test_an_empty_target_observes_empty_and_plans_nothing(rig: Rig) -> None:
    target = rig.target()
    observed = await target.observe()
    if target.spec.kind.can_list:
        assert observed is not None
        assert dict(observed.persons) == {}
    else:
        assert observed is None
    plan = await rig.plan(target, desired())
    assert plan.changes == ()
    assert rig.simulator.log.writes() == 0


async def test_create_then_a_second_plan_is_empty(rig: Rig, photos: dict[str, Photo]) -> None:
    target = rig.target()
    wanted = desired(person("1001", photo=photos["a.jpg"]), person("1002"), person("1003"))
    plan = await rig.plan(target, wanted)
    assert changes(plan) == [(Action.CREATE, pid) for pid in ("1001", "1002", "1003")]
    await rig.sync(target, wanted)

    assert rig.simulator.person_names() == {p.id: p.name for p in wanted.persons.values()}
    assert rig.simulator.photo_of("1001") == Path(photos["a.jpg"].path).read_bytes()
    assert rig.simulator.photo_of("1002") is None
    again = await rig.plan(target, wanted)
    assert again.changes == ()
    assert again.departments == ()


async def test_one_field_changed_is_one_update(rig: Rig, photos: dict[str, Photo]) -> None:
    target = rig.target()
    before = desired(person("1001", photo=photos["a.jpg"]), person("1002"))
    await rig.sync(target, before)
    writes = rig.simulator.log.writes()

    after = desired(person("1001", name="Renamed", photo=photos["a.jpg"]), person("1002"))
    plan = await rig.plan(target, after)
    assert changes(plan) == [(Action.UPDATE, "1001")]
    assert [f.field for f in plan.changes[0].fields] != []
    await rig.sync(target, after)

    assert rig.simulator.person_names() == {"1001": "Renamed", "1002": "Person 1002"}
    # An edit of another field keeps the photo, on every kind.
    assert rig.simulator.photo_of("1001") == Path(photos["a.jpg"].path).read_bytes()
    assert rig.simulator.log.writes() == writes + 1
    assert (await rig.plan(target, after)).changes == ()


async def test_a_changed_photo_reaches_the_target(rig: Rig, photos: dict[str, Photo]) -> None:
    target = rig.target()
    await rig.sync(target, desired(person("1001", photo=photos["a.jpg"])))
    changed = desired(person("1001", photo=photos["b.jpg"]))
    plan = await rig.plan(target, changed)
    assert changes(plan) == [(Action.UPDATE, "1001")] or changes(plan) == [(Action.REPLACE, "1001")]
    await rig.sync(target, changed)
    assert rig.simulator.photo_of("1001") == Path(photos["b.jpg"].path).read_bytes()
    assert (await rig.plan(target, changed)).changes == ()


async def test_a_person_removed_is_deleted_and_forgotten(rig: Rig) -> None:
    target = rig.target()
    await rig.sync(target, desired(person("1001"), person("1002")))
    remaining = desired(person("1001"))
    plan = await rig.plan(target, remaining)
    assert changes(plan) == [(Action.DELETE, "1002")]
    await rig.sync(target, remaining)
    assert set(rig.simulator.person_names()) == {"1001"}
    assert set(await rig.store.ledger("door")) == {"1001"}
    assert (await rig.plan(target, remaining)).changes == ()


async def test_foreign_persons_are_never_touched(rig: Rig) -> None:
    rig.simulator.add_person("9001", "enrolled by hand")
    target = rig.target()
    plan = await rig.plan(target, desired(person("1001")))
    if target.spec.kind.can_list:
        assert plan.foreign == ("9001",)
    await rig.sync(target, desired(person("1001")))
    await rig.sync(target, desired())
    assert rig.simulator.person_names()["9001"] == "enrolled by hand"


async def test_many_persons_over_several_pages_with_the_fewest_writes(rig: Rig) -> None:
    target = rig.target()
    wanted = desired(*(person(f"{n:05d}") for n in range(260)))
    report = await rig.sync(target, wanted)
    assert report.applied_by_action["create"] == 260
    assert len(rig.simulator.person_names()) == 260
    expected = rig.harness.first_sync_writes(
        260, 0, len(DEPARTMENTS) if target.spec.kind.departments else 0
    )
    assert rig.simulator.log.writes() == expected

    rig.simulator.log.clear()
    again = await rig.plan(target, wanted)
    assert again.changes == ()
    await rig.sync(target, wanted)
    assert rig.simulator.log.writes() == 0

    # Unchecked by the safety guard here (it is cycle's job): the deletes go out as planned.
    fewer = desired(*(person(f"{n:05d}") for n in range(140)))
    await executor.apply(await rig.plan(target, fewer), target, rig.store)
    assert len(rig.simulator.person_names()) == 140
    assert rig.simulator.log.writes() == rig.harness.delete_writes(120)


async def test_wrong_credentials_are_a_clear_permanent_error(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = rig.harness.wrong_credentials
    if wrong is None:
        # A kind without a login must not pretend to have one.
        assert not any("password" in k or "key" in k or "secret" in k for k in rig.harness.settings)
        return
    target = rig.target(**wrong)
    if target.spec.kind.can_list:
        with pytest.raises(PermanentTargetError) as raised:
            await target.observe()
        message = raised.value.message
    else:
        report = await executor.apply(
            await rig.plan(target, desired(person("1"))), target, rig.store
        )
        assert report.failures
        message = report.failures[0].error
    assert "door" in str(raised.value) if target.spec.kind.can_list else True
    for secret in rig.harness.secrets:
        assert secret not in message
        assert secret not in capsys.readouterr().err
    assert rig.simulator.person_names() == {}


async def test_a_malformed_response_is_a_target_error_not_a_crash(rig: Rig) -> None:
    rig.simulator.faults.malformed_rate = 1.0
    target = rig.target()
    if target.spec.kind.can_list:
        with pytest.raises(TargetError):
            await target.observe()
        return
    report = await executor.apply(await rig.plan(target, desired(person("1"))), target, rig.store)
    assert report.failures
    rig.simulator.faults.malformed_rate = 0.0
    # Nothing was confirmed, so the next pass sends it again and converges.
    await rig.sync(target, desired(person("1")))
    assert set(rig.simulator.person_names()) == {"1"}


async def test_a_photo_of_megabytes_is_sent_whole(rig: Rig, tmp_path: Path) -> None:
    data = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 6000  # 1.5 MB: real cameras make these
    path = tmp_path / "large.jpg"
    path.write_bytes(data)
    photo = Photo(
        path=str(path),
        digest="sha256:" + hashlib.sha256(data).hexdigest(),
        media_type="image/jpeg",
        size=len(data),
    )
    target = rig.target()
    await rig.sync(target, desired(person("1001", photo=photo)))
    assert rig.simulator.photo_of("1001") == data


async def test_a_person_the_target_refuses_waits_its_back_off_and_blocks_nobody(
    tmp_path: Path,
) -> None:
    """The change tier, through the real executor and store: one faceless photo on a face box."""
    faceless = b"\xff\xd8\xff\xe0" + b"no face in here"
    path = tmp_path / "faceless.jpg"
    path.write_bytes(faceless)
    bad = Photo(
        path=str(path),
        digest="sha256:" + hashlib.sha256(faceless).hexdigest(),
        media_type="image/jpeg",
        size=len(faceless),
    )
    simulator = SophonFogSimulator(faceless=[faceless])
    async with await serve(simulator) as served:
        store = await SqliteStore.open(tmp_path / "store.sqlite3")
        entry = KINDS["sophon_fog"]
        target = entry.build("box", entry.settings(url=served.url, rate_limit=None), FAST)
        try:
            wanted = desired(person("1", photo=bad), person("2"), person("3"))

            async def plan(now: float) -> TargetPlan:
                observed = await target.observe()
                computed = planning.compute(
                    wanted, target.spec, observed, await store.ledger("box"), HASHER
                )
                return attempts.defer(computed, await store.attempts("box"), now)

            with capture_logs() as lines:
                report = await executor.apply(await plan(time.time()), target, store)
            assert [f.person_id for f in report.failures] == ["1"]
            # The failure's line carries the change's plan document entry, as a success's does.
            (failed,) = [line for line in lines if line["event"] == "change.failed"]
            assert (failed["person"], failed["action"], failed["reason"]) == ("1", "create", "new")
            assert failed["fields"]["reg_photo"]["to"] == bad.digest
            assert "replace the photo" in failed["error"]
            applied = [line for line in lines if line["event"] == "change.applied"]
            assert sorted(line["person"] for line in applied) == ["2", "3"]
            assert all(line["fields"] for line in applied)
            assert set(simulator.person_names()) == {"2", "3"}
            (waiting,) = (await store.attempts("box")).values()
            assert (waiting.person_id, waiting.failures) == ("1", 1)
            assert "replace the photo" in waiting.error

            # The next pass leaves it alone until its time has come...
            calm = await plan(time.time())
            assert calm.changes == ()
            assert [a.person_id for a in calm.deferred] == ["1"]
            # ...then tries it once more, and waits twice as long after another failure.
            later = await plan(waiting.next_try + 1)
            await executor.apply(later, target, store)
            assert (await store.attempts("box"))["1"].failures == 2

            # A changed desired record (the photo dropped) is tried at once; the slate is wiped.
            wanted = desired(person("1"), person("2"), person("3"))
            await executor.apply(await plan(time.time()), target, store)
            assert set(simulator.person_names()) == {"1", "2", "3"}
            assert await store.attempts("box") == {}
        finally:
            await target.aclose()
            await store.aclose()
