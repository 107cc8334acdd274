"""The sophon_sight adapter against its simulator, over loopback HTTP (no mocks)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydantic
import pytest

from reconciler.core.changes import Action, DepartmentChange, Reason
from reconciler.core.persons import Department, Desired, Person, PersonType, Photo
from reconciler.core.records import Invalid
from reconciler.errors import PermanentTargetError, TargetError
from reconciler.simulators.base import serve
from reconciler.simulators.sophon_sight import (
    APPKEY_ERROR,
    TIME_ERROR,
    TOKEN_ERROR,
    SophonSightSimulator,
)
from reconciler.targets import sophon_sight
from reconciler.targets.http import Backoff, Response
from reconciler.targets.sophon_sight import SophonSight
from tests.targets.sync import Sync, made_targets
from tests.targets.sync import desired as desired_state

FAST = Backoff(attempts=4, initial=0.01, maximum=0.2, budget=10)
APPKEY, SECRET = "7ea24d0a", "platform-secret-xyz"
DAY = 24 * 3600.0

USER_EDIT = "/openapi/v1/syncuser/addOrEdit"
USER_DELETE = "/openapi/v1/syncuser/delete"
DEPT_EDIT = "/openapi/v1/syncdept/addOrEdit"
DEPT_DELETE = "/openapi/v1/syncdept/delete"
UPLOAD = "/openapi/v1/pic/upload"

DEPARTMENTS = (
    Department(id="D01", name="R&D", parent="HQ"),
    Department(id="HQ", name="Headquarters"),
)

MakeTarget = Callable[..., SophonSight]


@pytest.fixture
def sim() -> SophonSightSimulator:
    return SophonSightSimulator(appkey=APPKEY, secret=SECRET)


@pytest.fixture
async def sim_url(sim: SophonSightSimulator) -> AsyncIterator[str]:
    async with await serve(sim) as served:
        yield served.url


@pytest.fixture
async def make_target(sim_url: str) -> AsyncIterator[MakeTarget]:
    def build(values: dict[str, Any]) -> SophonSight:
        return SophonSight("platform", sophon_sight.Settings(**values), backoff=FAST)

    async with made_targets(
        build, url=sim_url, appkey=APPKEY, secret=SECRET, rate_limit=None
    ) as make:
        yield make


def person(pid: str, **fields: Any) -> Person:
    fields.setdefault("name", f"用户{pid}")
    fields.setdefault("department", "D01")
    return Person(id=pid, **fields)


def desired(*persons: Person, departments: tuple[Department, ...] = DEPARTMENTS) -> Desired:
    return desired_state(*persons, departments=departments)


def routes(sim: SophonSightSimulator) -> list[str]:
    return [entry.route.removeprefix("/openapi/v1/") for entry in sim.log.entries]


# -- reading, creating, converging ----------------------------------------------------------


async def test_observe_returns_none_and_sends_nothing(
    make_target: MakeTarget, sim: SophonSightSimulator
) -> None:
    assert await make_target().observe() is None
    assert sim.log.entries == []


async def test_a_first_sync_creates_departments_parents_first_then_persons(
    make_target: MakeTarget, sim: SophonSightSimulator, photos: dict[str, Photo]
) -> None:
    sync = Sync(make_target())
    wanted = desired(
        person(
            "1",
            job_number="001",
            email="zhangsan@example.com",
            phone="13800138000",
            photo=photos["a.jpg"],
        ),
        person("2", department="HQ", type=PersonType.VIP),
    )
    plan = await sync.plan(wanted)
    assert [(d.action, d.department_id) for d in plan.departments] == [
        (Action.CREATE, "HQ"),
        (Action.CREATE, "D01"),
    ]
    outcomes = await sync.apply(plan)
    assert all(o.ok for o in outcomes)
    assert all(o.ok for o in sync.department_outcomes)

    # Both departments (the simulator refuses a child before its parent), then the persons.
    assert routes(sim)[:2] == ["syncdept/addOrEdit", "syncdept/addOrEdit"]
    assert sorted(routes(sim)[2:]) == ["pic/upload", "syncuser/addOrEdit", "syncuser/addOrEdit"]
    assert sim.departments["D01"]["thirdParentId"] == "HQ"
    assert sim.departments["HQ"]["thirdParentId"] == ""
    stored = sim.users["1"]
    assert {k: stored[k] for k in ("name", "jobNumber", "mail", "phone", "thirdDeptId")} == {
        "name": "用户1",
        "jobNumber": "001",
        "mail": "zhangsan@example.com",
        "phone": "13800138000",
        "thirdDeptId": "D01",
    }
    assert sim.photo_of("1") == Path(photos["a.jpg"].path).read_bytes()
    assert sim.photo_of("2") is None
    assert sim.users["2"]["thirdDeptId"] == "HQ"

    # The platform's user id and the photoId are kept in the ledger.
    assert sync.ledger["1"].remote_id == stored["id"]
    assert sync.ledger["1"].refs["photoId"] == stored["facePicture"]
    assert "photoId" not in sync.ledger["2"].refs

    again = await sync.plan(wanted)
    assert (again.changes, again.departments) == ((), ())


@pytest.mark.parametrize("with_photos", [True, False])
async def test_a_first_sync_makes_the_minimum_of_write_calls(
    make_target: MakeTarget,
    sim: SophonSightSimulator,
    photos: dict[str, Photo],
    with_photos: bool,
) -> None:
    n = 7
    photo = photos["c.png"] if with_photos else None
    target = make_target()
    sync = Sync(target)
    outcomes = await sync.converge(desired(*(person(f"p{i}", photo=photo) for i in range(n))))
    assert len(outcomes) == n
    assert all(o.ok for o in outcomes)
    departments = len(DEPARTMENTS)
    uploads = n if with_photos else 0
    assert sim.log.writes() == departments + uploads + n
    assert sim.log.count("POST", UPLOAD) == uploads
    assert sim.log.count("POST", USER_EDIT) == n
    assert sim.log.count("POST", DEPT_EDIT) == departments
    assert len(sim.log.entries) == sim.log.writes()  # no reads at all
    assert target.client.sent == {"POST": departments + uploads + n}


async def test_more_than_250_persons_then_deletes_go_in_chunks_of_50(
    make_target: MakeTarget, sim: SophonSightSimulator
) -> None:
    sync = Sync(make_target(concurrency=8))
    everyone = [person(f"{n:04d}") for n in range(260)]
    outcomes = await sync.converge(desired(*everyone))
    assert sum(o.ok for o in outcomes) == 260
    assert len(sim.users) == 260
    assert (await sync.plan(desired(*everyone))).changes == ()

    sim.log.clear()
    plan = await sync.plan(desired(*everyone[120:]))
    assert [c.action for c in plan.changes] == [Action.DELETE] * 120
    outcomes = await sync.apply(plan)
    assert all(o.ok for o in outcomes)
    assert sim.log.count("POST", USER_DELETE) == 3  # ceil(120 / 50)
    assert sorted((e.items or 0 for e in sim.log.entries), reverse=True) == [50, 50, 20]
    assert len(sim.users) == 140
    assert set(sync.ledger) == {p.id for p in everyone[120:]}


async def test_delete_batch_is_configurable_and_capped_at_50(
    make_target: MakeTarget, sim: SophonSightSimulator
) -> None:
    sync = Sync(make_target(delete_batch=4))
    await sync.converge(desired(*(person(str(n)) for n in range(10))))
    sim.log.clear()
    await sync.converge(desired())
    assert sim.log.count("POST", USER_DELETE) == 3
    assert sim.users == {}
    with pytest.raises(pydantic.ValidationError):
        make_target(delete_batch=51)


# -- photos ---------------------------------------------------------------------------------


async def test_an_update_of_one_field_resends_the_same_photo_id(
    make_target: MakeTarget, sim: SophonSightSimulator, photos: dict[str, Photo]
) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("1", photo=photos["a.jpg"])))
    photo_id = sim.users["1"]["facePicture"]
    platform_id = sim.users["1"]["id"]

    sim.log.clear()
    plan = await sync.plan(desired(person("1", phone="13900000000", photo=photos["a.jpg"])))
    (change,) = plan.changes
    assert [f.field for f in change.fields] == ["phone"]
    assert change.refs["photoId"] == photo_id
    assert all(o.ok for o in await sync.apply(plan))

    assert routes(sim) == ["syncuser/addOrEdit"]  # no upload
    assert sim.users["1"]["phone"] == "13900000000"
    # A blank facePicture would have deleted it: the platform still has the same photo.
    assert sim.users["1"]["facePicture"] == photo_id
    assert sim.photo_of("1") == Path(photos["a.jpg"].path).read_bytes()
    assert sim.users["1"]["id"] == platform_id
    assert sync.ledger["1"].refs["photoId"] == photo_id


async def test_a_changed_photo_is_uploaded_once_and_replaces_the_old_one(
    make_target: MakeTarget, sim: SophonSightSimulator, photos: dict[str, Photo]
) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("1", photo=photos["a.jpg"])))
    old = sim.users["1"]["facePicture"]

    sim.log.clear()
    plan = await sync.plan(desired(person("1", photo=photos["c.png"])))
    (change,) = plan.changes
    assert [f.field for f in change.fields] == ["facePicture"]
    assert all(o.ok for o in await sync.apply(plan))
    assert routes(sim) == ["pic/upload", "syncuser/addOrEdit"]
    assert sim.photo_of("1") == Path(photos["c.png"].path).read_bytes()
    assert sim.users["1"]["facePicture"] != old
    assert sync.ledger["1"].refs["photoId"] == sim.users["1"]["facePicture"]
    assert (await sync.plan(desired(person("1", photo=photos["c.png"])))).changes == ()


async def test_a_removed_photo_is_cleared_on_the_platform_and_in_the_ledger(
    make_target: MakeTarget, sim: SophonSightSimulator, photos: dict[str, Photo]
) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("1", photo=photos["a.jpg"])))
    assert sim.photo_of("1") is not None

    sim.log.clear()
    outcomes = await sync.converge(desired(person("1")))
    assert [o.ok for o in outcomes] == [True]
    assert routes(sim) == ["syncuser/addOrEdit"]
    assert sim.photo_of("1") is None
    assert "photoId" not in sync.ledger["1"].refs
    assert (await sync.plan(desired(person("1")))).changes == ()

    # Adding a photo back uploads it again.
    await sync.converge(desired(person("1", photo=photos["b.jpg"])))
    assert sim.photo_of("1") == Path(photos["b.jpg"].path).read_bytes()


async def test_a_ledger_without_the_photo_id_uploads_the_photo_again(
    make_target: MakeTarget, sim: SophonSightSimulator, photos: dict[str, Photo]
) -> None:
    sync = Sync(make_target())
    wanted = desired(person("1", photo=photos["a.jpg"]))
    await sync.converge(wanted)
    sync.ledger["1"] = dataclasses.replace(sync.ledger["1"], refs={})

    sim.log.clear()
    plan = await sync.plan(wanted, now=time.time() + DAY + 60)  # the periodic re-push
    assert [c.person_id for c in plan.changes] == ["1"]
    await sync.apply(plan)
    assert routes(sim) == ["syncdept/addOrEdit"] * 2 + ["pic/upload", "syncuser/addOrEdit"]
    assert sim.photo_of("1") == Path(photos["a.jpg"].path).read_bytes()
    assert sync.ledger["1"].refs["photoId"] == sim.users["1"]["facePicture"]


async def test_a_photo_id_the_platform_lost_is_uploaded_again_once(
    make_target: MakeTarget, sim: SophonSightSimulator, photos: dict[str, Photo]
) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("1", photo=photos["a.jpg"])))
    sim.photos.clear()  # the platform's picture store was wiped

    sim.log.clear()
    outcomes = await sync.converge(desired(person("1", name="renamed", photo=photos["a.jpg"])))
    assert [o.ok for o in outcomes] == [True]
    assert routes(sim) == ["syncuser/addOrEdit", "pic/upload", "syncuser/addOrEdit"]
    assert sim.photo_of("1") == Path(photos["a.jpg"].path).read_bytes()
    assert sync.ledger["1"].refs["photoId"] == sim.users["1"]["facePicture"]


async def test_an_unreadable_photo_fails_only_that_person(
    make_target: MakeTarget, sim: SophonSightSimulator, photos: dict[str, Photo], tmp_path: Path
) -> None:
    gone = dataclasses.replace(photos["a.jpg"], path=str(tmp_path / "missing.jpg"))
    outcomes = await Sync(make_target()).converge(desired(person("1", photo=gone), person("2")))
    by_id = {o.change.person_id: o for o in outcomes}
    assert by_id["2"].ok
    assert not by_id["1"].ok
    assert "photo could not be read" in (by_id["1"].error or "")
    assert set(sim.users) == {"2"}


# -- the periodic re-push -------------------------------------------------------------------


async def test_resync_every_re_pushes_everyone_without_uploading_photos_again(
    make_target: MakeTarget, sim: SophonSightSimulator, photos: dict[str, Photo]
) -> None:
    sync = Sync(make_target())
    wanted = desired(person("1", photo=photos["a.jpg"]), person("2"), person("3"))
    await sync.converge(wanted)
    assert sync.target.spec.resync_every == DAY

    assert (await sync.plan(wanted, now=time.time() + DAY - 60)).changes == ()
    plan = await sync.plan(wanted, now=time.time() + DAY + 60)
    assert [(c.action, c.reason, c.resync, c.person_id) for c in plan.changes] == [
        (Action.UPDATE, Reason.DRIFT, True, pid) for pid in ("1", "2", "3")
    ]

    # Someone changed a person and its photo by hand meanwhile: the re-push repairs both.
    sim.users["1"]["name"] = "edited by hand"
    sim.users["1"]["facePicture"] = ""
    sim.log.clear()
    outcomes = await sync.apply(plan)
    assert all(o.ok for o in outcomes)
    assert sim.log.count("POST", UPLOAD) == 0
    assert sim.log.count("POST", USER_EDIT) == 3
    assert sim.users["1"]["name"] == "用户1"
    assert sim.photo_of("1") == Path(photos["a.jpg"].path).read_bytes()
    assert (await sync.plan(wanted)).changes == ()


def test_resync_every_accepts_durations() -> None:
    base = {"url": "http://127.0.0.1:9061", "appkey": APPKEY, "secret": SECRET}
    assert sophon_sight.Settings(**base).resync_every == timedelta(hours=24)
    target = SophonSight("p", sophon_sight.Settings(**base, resync_every="30m"))
    assert target.spec.resync_every == 1800.0
    assert sophon_sight.Settings(**base, resync_every=3600).resync_every == timedelta(hours=1)
    for bad in ("0", "soon", -5):
        with pytest.raises(pydantic.ValidationError):
            sophon_sight.Settings(**base, resync_every=bad)


# -- departments ----------------------------------------------------------------------------


async def test_departments_are_deleted_after_their_persons_children_first(
    make_target: MakeTarget, sim: SophonSightSimulator
) -> None:
    sync = Sync(make_target())
    tree = (
        Department(id="HQ", name="Headquarters"),
        Department(id="D01", name="R&D", parent="HQ"),
        Department(id="D02", name="Lab", parent="D01"),
    )
    await sync.converge(desired(person("1", department="D02"), person("2"), departments=tree))
    assert set(sim.departments) == {"HQ", "D01", "D02"}

    sim.log.clear()
    plan = await sync.plan(desired(person("3", department="HQ"), departments=tree[:1]))
    assert [(d.action, d.department_id) for d in plan.departments] == [
        (Action.DELETE, "D02"),
        (Action.DELETE, "D01"),
    ]
    outcomes = await sync.apply(plan)
    assert all(o.ok for o in outcomes)
    assert all(o.ok for o in sync.department_outcomes)
    assert routes(sim)[-1] == "syncdept/delete"
    assert sim.log.count("POST", DEPT_DELETE) == 1
    assert set(sim.departments) == {"HQ"}
    assert set(sim.users) == {"3"}
    assert set(sync.departments) == {"HQ"}


async def test_a_renamed_department_is_sent_again(
    make_target: MakeTarget, sim: SophonSightSimulator
) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("1")))
    renamed = (Department(id="HQ", name="Head Office"), DEPARTMENTS[0])
    sim.log.clear()
    plan = await sync.plan(desired(person("1"), departments=renamed))
    assert [(d.action, d.department_id) for d in plan.departments] == [(Action.UPDATE, "HQ")]
    await sync.apply(plan)
    assert routes(sim) == ["syncdept/addOrEdit"]
    assert sim.departments["HQ"]["name"] == "Head Office"


async def test_apply_departments_keeps_the_given_order_and_skips_children_of_failures(
    make_target: MakeTarget, sim: SophonSightSimulator
) -> None:
    target = make_target()

    def dept(did: str, parent: str | None = None, name: str = "N") -> DepartmentChange:
        return DepartmentChange(
            action=Action.CREATE, department_id=did, reason=Reason.NEW, name=name, parent=parent
        )

    # Children before their parent: the platform refuses the child, as the docs require.
    outcomes = await target.apply_departments([dept("C", "P"), dept("P")])
    assert [(o.change.department_id, o.ok) for o in outcomes] == [("C", False), ("P", True)]
    assert "not exist" in (outcomes[0].error or "")

    # A parent the platform refuses: its descendants are not even sent.
    sim.log.clear()
    outcomes = await target.apply_departments(
        [dept("Q", name=""), dept("Q1", "Q"), dept("Q2", "Q1"), dept("R")]
    )
    assert [o.ok for o in outcomes] == [False, False, False, True]
    assert "parent department Q " in (outcomes[1].error or "")
    assert sim.log.count("POST", DEPT_EDIT) == 2

    deletes = [
        DepartmentChange(action=Action.DELETE, department_id=f"x{n}", reason=Reason.REMOVED)
        for n in range(120)
    ]
    sim.log.clear()
    outcomes = await target.apply_departments(deletes)
    assert len(outcomes) == 120
    assert all(o.ok for o in outcomes)
    assert sim.log.count("POST", DEPT_DELETE) == 3


async def test_a_department_the_platform_refuses_to_delete_fails_only_that_chunk(
    make_target: MakeTarget, sim: SophonSightSimulator
) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("1")))
    sim.add_person("foreign", "Hand Made")
    sim.users["foreign"]["thirdDeptId"] = "D01"  # someone put a user there by hand

    await sync.converge(desired(person("1", department="HQ"), departments=DEPARTMENTS[1:]))
    (outcome,) = sync.department_outcomes[-1:]
    assert (outcome.change.department_id, outcome.ok) == ("D01", False)
    assert "still has users" in (outcome.error or "")
    assert "D01" in sim.departments
    assert "D01" in sync.departments  # still owned: planned again next pass


# -- rendering ------------------------------------------------------------------------------


async def test_types_and_departments_are_checked_when_rendering(make_target: MakeTarget) -> None:
    target = make_target()
    render = target.spec.render
    visitor = render(person("v", type=PersonType.VISITOR))
    blacklist = render(person("b", type=PersonType.BLACKLIST))
    assert isinstance(visitor, Invalid)
    assert isinstance(blacklist, Invalid)
    assert "visitor/add" in visitor.error
    assert "grant them access" in blacklist.error
    assert not isinstance(render(person("s", type=PersonType.STAFF)), Invalid)
    assert not isinstance(render(person("p", type=PersonType.VIP)), Invalid)

    assert render(person("n", department="")) == Invalid(
        person_id="n", error="has no department and target platform has no default_department"
    )
    assert isinstance(render(person("x" * 101)), Invalid)
    assert isinstance(render(person("d", department="d" * 101)), Invalid)

    defaulted = make_target(default_department="HQ").spec.render(person("n", department=""))
    assert not isinstance(defaulted, Invalid)
    assert defaulted["thirdDeptId"] == "HQ"


async def test_persons_in_undeclared_departments_are_invalid_in_the_plan(
    make_target: MakeTarget,
) -> None:
    sync = Sync(make_target(default_department="HQ"))
    plan = await sync.plan(desired(person("1", department="NOPE"), person("2", department="")))
    assert [c.person_id for c in plan.changes] == ["2"]
    assert [i.person_id for i in plan.invalid] == ["1"]
    assert "NOPE" in plan.invalid[0].error


# -- failures -------------------------------------------------------------------------------


async def test_a_refused_person_fails_alone_and_permanently(
    make_target: MakeTarget, sim: SophonSightSimulator
) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("1"), person("2", department="HQ")))
    del sim.departments["D01"]  # removed by hand on the platform

    outcomes = await sync.converge(
        desired(person("1", name="renamed"), person("2", department="HQ", name="renamed"))
    )
    by_id = {o.change.person_id: o for o in outcomes}
    assert by_id["2"].ok
    assert (by_id["1"].ok, by_id["1"].retryable) == (False, False)
    assert "department not exist: D01" in (by_id["1"].error or "")
    assert sim.users["1"]["name"] == "用户1"
    assert sim.users["2"]["name"] == "renamed"

    # The periodic re-push sends the departments again, which repairs it.
    outcomes = await sync.apply(
        await sync.plan(
            desired(person("1", name="renamed"), person("2", department="HQ", name="renamed")),
            now=time.time() + 2 * DAY,
        )
    )
    assert all(o.ok for o in outcomes)
    assert sim.users["1"]["name"] == "renamed"


#: The platform's wording is undocumented: it may answer in Chinese, straight after the word.
CHINESE = {APPKEY_ERROR: "appkey不存在", TOKEN_ERROR: "token错误", TIME_ERROR: "time过期"}


@pytest.mark.parametrize("messages", [{}, CHINESE], ids=["simulator's", "chinese"])
@pytest.mark.parametrize("auth_http_status", [200, 401])
@pytest.mark.parametrize("wrong", ["secret", "appkey"])
async def test_wrong_credentials_stop_the_target_with_a_clear_error(
    make_target: MakeTarget,
    sim: SophonSightSimulator,
    auth_http_status: int,
    wrong: str,
    messages: dict[int, str],
) -> None:
    sim.auth_http_status = auth_http_status
    sim.messages.update(messages)
    bad_secret = "not-the-secret-42"
    target = make_target(**({"secret": bad_secret} if wrong == "secret" else {"appkey": "nope"}))
    sync = Sync(target)
    with pytest.raises(PermanentTargetError) as caught:
        await sync.converge(desired(*(person(str(n)) for n in range(5))))
    text = str(caught.value)
    assert "target platform" in text
    assert "check appkey" in text
    assert "and secret" in text
    assert bad_secret not in text
    assert SECRET not in text
    assert "token=" not in text
    assert sim.departments == {}
    assert sim.users == {}


@pytest.mark.parametrize(
    ("message", "means"),
    [
        ("appkey不存在", "credentials"),
        ("token error", "credentials"),
        ("time过期", "clock"),
        ("time expired: check the caller's clock", "clock"),
        ("timestamp expired", "clock"),
        ("请求时间已过期", "clock"),
        ("end time must be later than start time", None),
        ("visit time invalid", None),
        ("结束时间必须晚于开始时间", None),
        # A field of one person, not the request: that person's change fails, nothing stops.
        ("start_time must be before end_time", None),
        ("visit_time invalid", None),
        ("user_token_id exists", None),
        ("photo_sign invalid", None),
        ("thirdId 1_time exists", None),
    ],
)
def test_refusals_are_read_by_their_words_not_by_field_names(
    message: str, means: str | None
) -> None:
    """Which refusals stop the whole target (wrong credentials, clock skew); the others fail
    just the person they concern."""
    credentials = sophon_sight._AUTH_MESSAGE.search(message) is not None
    clock = sophon_sight._CLOCK_MESSAGE.search(message) is not None
    assert (credentials, clock) == (means == "credentials", means == "clock")


@pytest.mark.parametrize("messages", [{}, CHINESE], ids=["simulator's", "chinese"])
async def test_a_clock_far_from_the_platform_stops_the_target(
    sim_url: str, sim: SophonSightSimulator, messages: dict[int, str]
) -> None:
    sim.messages.update(messages)
    settings = sophon_sight.Settings(url=sim_url, appkey=APPKEY, secret=SECRET)
    target = SophonSight("skewed", settings, backoff=FAST, clock=lambda: time.time() - 3600)
    try:
        with pytest.raises(PermanentTargetError, match="clock"):
            await Sync(target).converge(desired(person("1")))
    finally:
        await target.aclose()
    sim.time_window = None
    target = SophonSight("skewed", settings, backoff=FAST, clock=lambda: time.time() - 3600)
    try:
        assert all(o.ok for o in await Sync(target).converge(desired(person("1"))))
    finally:
        await target.aclose()


async def test_a_malformed_response_fails_the_changes_without_a_crash(
    make_target: MakeTarget, sim: SophonSightSimulator
) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("1")))
    sim.faults.malformed_rate = 1.0
    outcomes = await sync.converge(desired(person("1", name="new"), person("2")))
    assert len(outcomes) == 2
    for outcome in outcomes:
        assert not outcome.ok
        assert "not JSON" in (outcome.error or "")
        assert not outcome.retryable
    outcomes = await sync.converge(desired(departments=()))
    assert [o.ok for o in outcomes] == [False, False]
    assert [(o.change.action, o.ok) for o in sync.department_outcomes[-2:]] == [
        (Action.DELETE, False),
        (Action.DELETE, False),
    ]
    assert set(sync.departments) == {"HQ", "D01"}


def _response(body: bytes, status: int = 200) -> Response:
    return Response(status=status, body=body, headers={}, method="POST", path=USER_EDIT)


async def test_the_envelope_check(make_target: MakeTarget) -> None:
    target = make_target()
    # Private on purpose: the simulator never answers these shapes, a real platform might.
    with pytest.raises(TargetError, match="not a status/message envelope"):
        target._data(_response(b'{"message": "SUCCESS"}'))
    with pytest.raises(TargetError, match="not a status/message envelope"):
        target._data(_response(b"[0]"))
    with pytest.raises(TargetError, match="HTTP 404"):
        target._data(_response(b"<html>", status=404))
    with pytest.raises(TargetError, match="status 7: no"):
        target._data(_response(b'{"status": 7, "message": "no"}'))
    assert target._data(_response(b'{"status": "SUCCESS", "data": null}')) is None
    assert target._data(_response(b'{"status": 0}')) is None
    assert target._data(_response(b'{"status": "0", "data": {"id": 1}}')) == {"id": 1}


async def test_temporary_failures_are_retried(
    make_target: MakeTarget, sim: SophonSightSimulator
) -> None:
    sim.faults.fail_next = [503, 502, 429]
    sim.faults.retry_after = 0.05
    outcomes = await Sync(make_target()).converge(desired(person("1")))
    assert [o.ok for o in outcomes] == [True]
    assert "1" in sim.users


async def test_a_platform_that_keeps_failing_gives_retryable_failures(
    make_target: MakeTarget, sim: SophonSightSimulator
) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("1")))
    sim.faults.error_rate = 1.0
    outcomes = await sync.converge(desired(person("1", name="new")))
    assert [(o.ok, o.retryable) for o in outcomes] == [(False, True)]
    assert "503" in (outcomes[0].error or "")


async def test_an_unreachable_platform_fails_retryably_without_printing_the_token() -> None:
    settings = sophon_sight.Settings(url="http://127.0.0.1:9", appkey=APPKEY, secret=SECRET)
    target = SophonSight("gone", settings, backoff=dataclasses.replace(FAST, attempts=2))
    try:
        plan = await Sync(target).plan(desired(person("1")))
        departments = await target.apply_departments(plan.departments)
        outcomes = [o async for batch in target.apply(plan.changes) for o in batch]
    finally:
        await target.aclose()
    assert [o.ok for o in departments] == [False, False]
    (outcome,) = outcomes
    assert (outcome.ok, outcome.retryable) == (False, True)
    for error in [outcome.error or "", *(o.error or "" for o in departments)]:
        assert "token" not in error
        assert SECRET not in error


async def test_a_stop_before_apply_sends_nothing(
    make_target: MakeTarget, sim: SophonSightSimulator
) -> None:
    target = make_target()
    plan = await Sync(target).plan(desired(person("1"), person("2")))
    stop = asyncio.Event()
    stop.set()
    assert [batch async for batch in target.apply(plan.changes, stop=stop)] == []
    assert sim.log.entries == []


def test_the_token_is_the_documented_md5() -> None:
    path = "/openapi/v1/cross/node/search"
    body = b'{"appkey":"1234qwe","time":1551196800000}'
    expected = hashlib.md5(path.encode() + body + b"secret").hexdigest().upper()  # noqa: S324
    assert sophon_sight.sign(path, body, "secret") == expected
    assert expected.isupper()
    assert len(expected) == 32
