"""The sophon_fog adapter against its simulator, over loopback HTTP (no mocks)."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pydantic
import pytest
from aiohttp import web

from reconciler.core import planning
from reconciler.core.changes import Action, Reason
from reconciler.core.persons import Person, PersonType, Photo
from reconciler.core.planning import Observed
from reconciler.core.records import Invalid
from reconciler.errors import PermanentTargetError, TemporaryTargetError
from reconciler.simulators.base import serve
from reconciler.simulators.sophon_fog import USERS, SophonFogSimulator
from reconciler.targets import sophon_fog
from reconciler.targets.http import Backoff
from reconciler.targets.sophon_fog import SophonFog
from tests.targets.sync import HASHER, Sync, desired, made_targets

FAST = Backoff(attempts=4, initial=0.01, maximum=0.2, budget=10)

MakeTarget = Callable[..., SophonFog]


@pytest.fixture
def box() -> SophonFogSimulator:
    return SophonFogSimulator()


@pytest.fixture
async def box_url(box: SophonFogSimulator) -> AsyncIterator[str]:
    async with await serve(box) as served:
        yield served.url


@pytest.fixture
async def make_target(box_url: str) -> AsyncIterator[MakeTarget]:
    def build(values: dict[str, Any]) -> SophonFog:
        return SophonFog("fog", sophon_fog.Settings(**values), backoff=FAST)

    async with made_targets(build, url=box_url, rate_limit=None) as make:
        yield make


def person(pid: str, **fields: Any) -> Person:
    fields.setdefault("name", f"用户{pid}")
    return Person(id=pid, **fields)


def data(photo: Photo) -> bytes:
    return Path(photo.path).read_bytes()


async def test_observe_an_empty_box(make_target: MakeTarget, box: SophonFogSimulator) -> None:
    assert await make_target().observe() == Observed(persons={})
    assert box.log.writes() == 0


async def test_create_then_nothing_left_to_do(
    make_target: MakeTarget, box: SophonFogSimulator, photos: dict[str, Photo]
) -> None:
    sync = Sync(make_target(group_map={"hq": "perm-uuid-1"}))
    start = datetime(2026, 11, 1, 9, 0, tzinfo=timezone(timedelta(hours=8)))
    wanted = desired(
        person(
            "1001",
            phone="13800138000",
            email="z@example.com",
            job_number="J1001",
            department="D01",
            id_number="110101199001011234",
            groups=("hq", "lab"),
            photo=photos["a.jpg"],
        ),
        person("1002", type=PersonType.VISITOR, valid_from=start, valid_until=start + timedelta(1)),
        person("1003", type=PersonType.BLACKLIST),
        person("1004", type=PersonType.VIP),
    )
    outcomes = await sync.converge(wanted)
    assert [(o.change.person_id, o.ok) for o in outcomes] == [
        ("1001", True),
        ("1002", True),
        ("1003", True),
        ("1004", True),
    ]
    info = box.identities["1001"]["info"]
    assert (info["name"], info["type"], info["user_id"]) == ("用户1001", 1, "1001")
    assert info["permission_ids"] == ["lab", "perm-uuid-1"]
    assert info["ext_info"] == {
        "mobile": "13800138000",
        "email": "z@example.com",
        "jobNumber": "J1001",
        "department": "D01",
        "idNumber": "110101199001011234",
        "startTime": "",
        "endTime": "",
    }
    assert box.faces_of("1001") == [data(photos["a.jpg"])]
    assert box.photo_of("1002") is None
    assert box.identities["1002"]["info"]["ext_info"]["startTime"] == "2026-11-01 09:00:00"
    assert box.identities["1002"]["info"]["ext_info"]["endTime"] == "2026-11-02 09:00:00"
    assert [box.identities[p]["info"]["type"] for p in ("1002", "1003", "1004")] == [2, 3, 5]
    assert sorted(box.members("default_group")) == ["1001", "1002", "1003", "1004"]

    again = await sync.plan(wanted)
    assert again.changes == ()
    assert again.foreign == ()
    assert box.dangerous_calls == 0


async def test_a_first_sync_of_n_persons_is_n_posts_and_m_deletes_are_batched(
    make_target: MakeTarget, box: SophonFogSimulator
) -> None:
    sync = Sync(make_target(concurrency=8))
    wanted = desired(*(person(f"{n:04d}") for n in range(260)))
    outcomes = await sync.converge(wanted)
    assert all(o.ok for o in outcomes)
    assert box.log.count("POST", USERS) == 260  # one per person: the API has no batch create
    assert box.log.writes() == 260
    assert len(box.identities) == 260

    box.log.clear()
    assert (await sync.plan(wanted)).changes == ()
    assert box.log.count("GET", USERS) == 3  # 260 persons, 100 per page
    assert box.log.writes() == 0

    box.log.clear()
    kept = desired(*(person(f"{n:04d}") for n in range(140)))
    plan = await sync.plan(kept)
    assert plan.planned.get("delete") == 120
    outcomes = await sync.apply(plan)
    assert all(o.ok for o in outcomes)
    assert box.log.count("DELETE", USERS) == 3  # ceil(120 / 50)
    assert sorted(e.items or 0 for e in box.log.entries if e.method == "DELETE") == [20, 50, 50]
    assert sorted(box.identities) == sorted(kept.persons)
    assert set(sync.ledger) == set(kept.persons)


async def test_250_persons_over_several_pages_are_read_whole(
    make_target: MakeTarget, box: SophonFogSimulator
) -> None:
    for n in range(255):
        box.add_person(f"p{n:03d}", f"name {n}")
    observed = await make_target(page_size=40).observe()
    assert sorted(observed.persons) == sorted(box.identities)
    assert box.log.count("GET", USERS) == 7  # ceil(255 / 40)


async def test_updating_one_field_is_one_put_that_keeps_the_permissions(
    make_target: MakeTarget, box: SophonFogSimulator, photos: dict[str, Photo]
) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("1", groups=("hq",), email="a@x", photo=photos["a.jpg"])))
    box.log.clear()

    wanted = desired(person("1", groups=("hq",), email="b@x", photo=photos["a.jpg"]))
    plan = await sync.plan(wanted)
    (change,) = plan.changes
    assert (change.action, [f.field for f in change.fields]) == (Action.UPDATE, ["email"])
    outcomes = await sync.apply(plan)
    assert [o.ok for o in outcomes] == [True]
    assert (box.log.count("PUT", USERS), box.log.writes()) == (1, 1)
    info = box.identities["1"]["info"]
    assert info["ext_info"]["email"] == "b@x"
    # The box resets an omitted permission_ids to ["0"]: the adapter always sends it.
    assert info["permission_ids"] == ["hq"]
    assert box.faces_of("1") == [data(photos["a.jpg"])]  # no photo re-sent, no face added
    assert (await sync.plan(wanted)).changes == ()


async def test_a_type_change_is_an_update(make_target: MakeTarget, box: SophonFogSimulator) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("1")))
    plan = await sync.plan(desired(person("1", type=PersonType.VIP)))
    assert [c.action for c in plan.changes] == [Action.UPDATE]
    await sync.apply(plan)
    assert box.identities["1"]["info"]["type"] == 5


async def test_a_photo_change_re_enrols_and_leaves_exactly_one_face(
    make_target: MakeTarget, box: SophonFogSimulator, photos: dict[str, Photo]
) -> None:
    sync = Sync(make_target(fiqa_level="high"))
    await sync.converge(desired(person("1", groups=("hq",), photo=photos["a.jpg"])))
    box.log.clear()

    plan = await sync.plan(desired(person("1", groups=("hq",), photo=photos["c.png"])))
    (change,) = plan.changes
    assert [f.field for f in change.fields] == ["reg_photo"]
    assert [o.ok for o in await sync.apply(plan)] == [True]
    assert box.log.count("POST", USERS) == 1
    assert box.log.writes() == 1
    assert box.faces_of("1") == [data(photos["c.png"])]
    assert len(box.identities["1"]["info"]["face_ids"]) == 1
    assert box.photo_of("1") == data(photos["c.png"])
    assert box.identities["1"]["info"]["permission_ids"] == ["hq"]
    assert (
        await sync.plan(desired(person("1", groups=("hq",), photo=photos["c.png"])))
    ).changes == ()


async def test_a_removed_photo_leaves_the_person_without_a_face(
    make_target: MakeTarget, box: SophonFogSimulator, photos: dict[str, Photo]
) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("1", email="e@x", photo=photos["a.jpg"])))
    box.log.clear()

    plan = await sync.plan(desired(person("1", email="e@x")))
    (change,) = plan.changes
    assert [f.field for f in change.fields] == ["reg_photo"]
    assert [o.ok for o in await sync.apply(plan)] == [True]
    assert box.faces_of("1") == []
    assert box.photo_of("1") is None
    assert box.identities["1"]["info"]["ext_info"]["email"] == "e@x"
    assert box.members("default_group") == ["1"]
    assert (box.log.count("DELETE", USERS), box.log.count("POST", USERS)) == (1, 1)
    assert (await sync.plan(desired(person("1", email="e@x")))).changes == ()


async def test_drift_on_the_box_is_repaired(
    make_target: MakeTarget, box: SophonFogSimulator
) -> None:
    sync = Sync(make_target())
    wanted = desired(person("1", groups=("hq",)))
    await sync.converge(wanted)
    box.identities["1"]["info"]["name"] = "edited by hand"
    box.identities["1"]["info"]["permission_ids"] = ["0"]

    plan = await sync.plan(wanted)
    (change,) = plan.changes
    assert (change.action, change.reason) == (Action.UPDATE, Reason.DRIFT)
    assert [f.field for f in change.fields] == ["name", "permission_ids"]
    await sync.apply(plan)
    assert box.person_names() == {"1": "用户1"}
    assert box.identities["1"]["info"]["permission_ids"] == ["hq"]


async def test_delete(make_target: MakeTarget, box: SophonFogSimulator) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("1"), person("2")))
    plan = await sync.plan(desired(person("2")))
    assert [(c.action, c.person_id) for c in plan.changes] == [(Action.DELETE, "1")]
    assert [o.ok for o in await sync.apply(plan)] == [True]
    assert set(box.identities) == {"2"}
    assert set(sync.ledger) == {"2"}


@pytest.mark.parametrize("missing_in_batch", ["skip", "fail"])
async def test_a_person_already_gone_does_not_fail_the_rest_of_its_delete_batch(
    make_target: MakeTarget, box: SophonFogSimulator, missing_in_batch: Any
) -> None:
    box.missing_in_batch = missing_in_batch
    sync = Sync(make_target())
    await sync.converge(desired(person("1"), person("2"), person("3")))
    plan = await sync.plan(desired())
    del box.identities["2"]  # removed on the box meanwhile
    box.log.clear()
    outcomes = await sync.apply(plan)
    assert [(o.change.person_id, o.ok) for o in outcomes] == [("1", True), ("2", True), ("3", True)]
    assert box.identities == {}
    # "fail": the batch is refused whole, then each id is deleted on its own.
    assert box.log.count("DELETE", USERS) == (1 if missing_in_batch == "skip" else 4)


async def test_a_batch_delete_the_box_does_not_confirm_is_made_one_person_at_a_time(
    make_target: MakeTarget, box: SophonFogSimulator
) -> None:
    """Firmware before V5R7C01 reads identity_id only: it answers a batch delete with success
    and removes nobody. Taking that at its word would drop the persons from the ledger while
    they keep door access; each is deleted and confirmed on its own instead."""
    box.batch_delete = False
    sync = Sync(make_target())
    await sync.converge(desired(person("1"), person("2"), person("3")))
    box.log.clear()
    outcomes = await sync.apply(await sync.plan(desired(person("2"))))
    assert [(o.change.person_id, o.ok) for o in outcomes] == [("1", True), ("3", True)]
    assert set(box.identities) == {"2"}
    assert box.log.count("DELETE", USERS) == 1 + 2


async def test_a_foreign_person_is_reported_and_never_touched(
    make_target: MakeTarget, box: SophonFogSimulator
) -> None:
    box.add_person("x", "Enrolled by hand")
    sync = Sync(make_target())
    plan = await sync.plan(desired(person("1")))
    assert plan.foreign == ("x",)
    await sync.apply(plan)
    assert box.person_names() == {"x": "Enrolled by hand", "1": "用户1"}
    emptied = await sync.plan(desired())
    assert [(c.action, c.person_id) for c in emptied.changes] == [(Action.DELETE, "1")]
    await sync.apply(emptied)
    assert box.person_names() == {"x": "Enrolled by hand"}


# -- per-person refusals -------------------------------------------------------------------------


async def test_a_photo_without_a_face_fails_only_that_person(
    box_url: str, box: SophonFogSimulator, make_target: MakeTarget, photos: dict[str, Photo]
) -> None:
    box.faceless.add(data(photos["b.jpg"]))
    sync = Sync(make_target())
    wanted = desired(
        person("1", photo=photos["a.jpg"]),
        person("2", photo=photos["b.jpg"]),
        person("3"),
    )
    outcomes = await sync.converge(wanted)
    assert [(o.change.person_id, o.ok, o.retryable) for o in outcomes] == [
        ("1", True, True),
        ("2", False, False),
        ("3", True, True),
    ]
    error = outcomes[1].error or ""
    assert "no face found" in error
    assert "replace the photo of person 2 (b.jpg)" in error
    assert set(box.identities) == {"1", "3"}
    assert [c.person_id for c in (await sync.plan(wanted)).changes] == ["2"]

    # Replacing the photo is what fixes it.
    fixed = desired(
        person("1", photo=photos["a.jpg"]),
        person("2", photo=photos["c.png"]),
        person("3"),
    )
    assert all(o.ok for o in await sync.converge(fixed))
    assert box.faces_of("2") == [data(photos["c.png"])]


async def test_a_faceless_replacement_photo_keeps_the_old_face(
    make_target: MakeTarget, box: SophonFogSimulator, photos: dict[str, Photo]
) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("1", photo=photos["a.jpg"])))
    box.faceless.add(data(photos["b.jpg"]))
    (outcome,) = await sync.converge(desired(person("1", photo=photos["b.jpg"])))
    assert (outcome.ok, outcome.retryable) == (False, False)
    assert box.faces_of("1") == [data(photos["a.jpg"])]


async def test_low_quality_is_refused_unless_the_quality_check_is_off(
    make_target: MakeTarget, box: SophonFogSimulator, photos: dict[str, Photo]
) -> None:
    box.low_quality.add(data(photos["a.jpg"]))
    (outcome,) = await Sync(make_target()).converge(desired(person("1", photo=photos["a.jpg"])))
    assert not outcome.ok
    assert "too low quality" in (outcome.error or "")
    assert "replace the photo" in (outcome.error or "")
    (outcome,) = await Sync(make_target(fiqa_level="no")).converge(
        desired(person("1", photo=photos["a.jpg"]))
    )
    assert outcome.ok


async def test_a_full_group_fails_the_new_persons_permanently(
    make_target: MakeTarget, box: SophonFogSimulator
) -> None:
    box.capacity = 2
    outcomes = await Sync(make_target(concurrency=1)).converge(
        desired(person("1"), person("2"), person("3"))
    )
    failed = [(o.change.person_id, o.retryable) for o in outcomes if not o.ok]
    assert failed == [("3", False)]
    assert "is full" in (outcomes[2].error or "")


async def test_exists_despite_ignore_exist_is_adopted_with_a_put(
    make_target: MakeTarget, box: SophonFogSimulator, photos: dict[str, Photo]
) -> None:
    box.honour_ignore_exist = False
    sync = Sync(make_target())
    wanted = desired(person("1", groups=("hq",), photo=photos["a.jpg"]))
    plan = await sync.plan(wanted)
    box.add_person("1", "Enrolled by hand meanwhile")  # between plan and apply
    box.log.clear()
    (outcome,) = await sync.apply(plan)
    assert outcome.ok
    assert [(e.method, e.status) for e in box.log.entries] == [("POST", 400), ("PUT", 200)]
    assert box.person_names() == {"1": "用户1"}
    assert box.identities["1"]["info"]["permission_ids"] == ["hq"]
    assert box.photo_of("1") == data(photos["a.jpg"])
    assert (await sync.plan(wanted)).changes == ()


async def test_exists_outside_our_group_is_a_clear_failure(
    make_target: MakeTarget, box: SophonFogSimulator
) -> None:
    box.honour_ignore_exist = False
    box.add_person("1", "Elsewhere", group="visitors")
    (outcome,) = await Sync(make_target()).converge(desired(person("1")))
    assert (outcome.ok, outcome.retryable) == (False, False)
    assert "outside group default_group" in (outcome.error or "")


async def test_ignore_exist_adds_a_person_of_another_group_to_ours(
    make_target: MakeTarget, box: SophonFogSimulator
) -> None:
    box.add_person("1", "Elsewhere", group="visitors")
    sync = Sync(make_target())
    assert [o.ok for o in await sync.converge(desired(person("1")))] == [True]
    assert box.identities["1"]["group_name"] == ["visitors", "default_group"]
    assert (await sync.plan(desired(person("1")))).changes == ()


async def test_an_unknown_group_is_a_clear_permanent_error(
    make_target: MakeTarget, box: SophonFogSimulator
) -> None:
    target = make_target(group="lobby")
    with pytest.raises(PermanentTargetError, match=r"group lobby is not on the box \(box code"):
        await target.observe()
    plan = planning.compute(desired(person("1")), target.spec, Observed(persons={}), {}, HASHER)
    outcomes = [o async for batch in target.apply(plan.changes) for o in batch]
    assert [(o.ok, o.retryable) for o in outcomes] == [(False, False)]
    assert "set `group`" in (outcomes[0].error or "")


# -- paging ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("pagination", [True, False])
async def test_page_index_paging_reads_everyone(
    make_target: MakeTarget, box: SophonFogSimulator, pagination: bool
) -> None:
    box.paging, box.pagination = "page", pagination
    for n in range(250):
        box.add_person(f"p{n:03d}", f"name {n}")
    observed = await make_target(paging="page").observe()
    assert sorted(observed.persons) == sorted(box.identities)


async def test_offsets_without_pagination_stop_at_a_short_page(
    make_target: MakeTarget, box: SophonFogSimulator
) -> None:
    box.pagination = False
    for n in range(250):
        box.add_person(f"p{n:03d}", f"name {n}")
    observed = await make_target().observe()
    assert sorted(observed.persons) == sorted(box.identities)
    # Three pages, plus the one probe at skip_num=1 that confirms skip_num is an offset.
    assert box.log.count("GET", USERS) == 4


@pytest.mark.parametrize(
    ("box_paging", "pagination", "advice"),
    [
        ("page", True, "set `paging: page`"),
        ("offset", True, "set `paging: offset`"),
        ("page", False, "set `paging: page`"),
        ("offset", False, "set `paging: offset`"),
    ],
)
async def test_a_wrong_paging_setting_is_detected(
    make_target: MakeTarget,
    box: SophonFogSimulator,
    box_paging: Any,
    pagination: bool,
    advice: str,
) -> None:
    box.paging, box.pagination = box_paging, pagination
    for n in range(250):
        box.add_person(f"p{n:03d}", f"name {n}")
    target = make_target(paging="offset" if box_paging == "page" else "page")
    with pytest.raises(PermanentTargetError, match=advice):
        await target.observe()


class ShiftingBox(SophonFogSimulator):
    """A box where someone deletes a person right after the first page was read."""

    async def _get(self, request: web.Request) -> web.Response:
        response = await super()._get(request)
        if request.query.get("skip_num") == "0" and "p000" in self.identities:
            del self.identities["p000"]
        return response


async def test_a_listing_shifted_while_paging_is_read_again_not_an_error() -> None:
    box = ShiftingBox()
    for n in range(150):
        box.add_person(f"p{n:03d}", f"name {n}")
    async with await serve(box) as served:
        target = SophonFog("fog", sophon_fog.Settings(url=served.url), backoff=FAST)
        try:
            observed = await target.observe()
        finally:
            await target.aclose()
    # Page 2 missed p100 (it moved to page 1): 149 < 150, so the group was read once more.
    assert sorted(observed.persons) == sorted(box.identities)
    assert len(observed.persons) == 149
    assert box.log.count("GET", USERS) == 4


# -- failures of the box --------------------------------------------------------------------------


async def test_a_malformed_listing_is_a_target_error(
    make_target: MakeTarget, box: SophonFogSimulator
) -> None:
    box.faults.malformed_rate = 1.0
    with pytest.raises(PermanentTargetError, match=r"malformed|not JSON"):
        await make_target().observe()


@pytest.mark.parametrize(
    "info",
    [
        {"name": "x", "type": "staff"},
        {"name": "x", "ext_info": ["mobile"]},
        {"name": "x", "permission_ids": "hq"},
    ],
)
async def test_a_malformed_identity_is_a_target_error(
    make_target: MakeTarget, box: SophonFogSimulator, info: Any
) -> None:
    box.add_person("1", "ok")
    box.identities["1"]["info"] = info
    with pytest.raises(PermanentTargetError, match="malformed info of identity 1"):
        await make_target().observe()


async def test_malformed_answers_to_writes_fail_the_changes_without_raising(
    make_target: MakeTarget, box: SophonFogSimulator
) -> None:
    target = make_target()
    plan = planning.compute(
        desired(person("1"), person("2")), target.spec, await target.observe(), {}, HASHER
    )
    box.faults.malformed_rate = 1.0
    outcomes = [o async for batch in target.apply(plan.changes) for o in batch]
    assert [o.ok for o in outcomes] == [False, False]
    assert all("malformed" in (o.error or "") or "not JSON" in (o.error or "") for o in outcomes)


async def test_temporary_failures_are_retried(
    make_target: MakeTarget, box: SophonFogSimulator
) -> None:
    box.faults.fail_next = [503, 502, 429]
    box.faults.retry_after = 0.05
    assert (await make_target().observe()).persons == {}


async def test_retries_give_up_with_a_temporary_error(
    make_target: MakeTarget, box: SophonFogSimulator
) -> None:
    box.faults.error_rate = 1.0
    with pytest.raises(TemporaryTargetError, match="503"):
        await make_target().observe()


async def test_a_failing_box_during_apply_gives_retryable_outcomes(
    make_target: MakeTarget, box: SophonFogSimulator
) -> None:
    target = make_target()
    plan = planning.compute(desired(person("1")), target.spec, Observed(persons={}), {}, HASHER)
    box.faults.error_rate = 1.0
    outcomes = [o async for batch in target.apply(plan.changes) for o in batch]
    assert [(o.ok, o.retryable) for o in outcomes] == [(False, True)]


async def test_an_unreachable_box_is_a_temporary_error() -> None:
    settings = sophon_fog.Settings(url="http://127.0.0.1:9")
    target = SophonFog("gone", settings, backoff=dataclasses.replace(FAST, attempts=2))
    try:
        with pytest.raises(TemporaryTargetError, match="target gone"):
            await target.observe()
    finally:
        await target.aclose()


async def test_a_url_that_is_not_this_api_says_what_to_check() -> None:
    runner = web.AppRunner(web.Application())  # answers every path with a plain-text 404
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    target = SophonFog("odd", sophon_fog.Settings(url=f"http://127.0.0.1:{port}"), backoff=FAST)
    try:
        with pytest.raises(PermanentTargetError, match="check that url is a SophonFogSys box"):
            await target.observe()
    finally:
        await target.aclose()
        await runner.cleanup()


async def test_a_missing_route_on_the_box_says_what_to_check(make_target: MakeTarget) -> None:
    target = make_target(url=make_target().settings.url + "/wrong/prefix")
    with pytest.raises(PermanentTargetError, match="check that url is a SophonFogSys box"):
        await target.observe()


# -- render and settings ---------------------------------------------------------------------------


def test_render_maps_types_groups_and_times() -> None:
    settings = sophon_fog.Settings(
        url="http://box:5555", group_map={"hq": "G1"}, timezone="Asia/Shanghai"
    )
    moment = datetime(2026, 11, 1, 1, 0, tzinfo=UTC)
    record = sophon_fog.render(
        person("1", type=PersonType.VIP, groups=("hq", "lab", "hq"), valid_from=moment), settings
    )
    assert not isinstance(record, Invalid)
    assert (record["type"], record["permission_ids"]) == (5, ["G1", "lab"])
    assert (record["startTime"], record["endTime"]) == ("2026-11-01 09:00:00", "")
    assert record["reg_photo"] == ""


def test_render_refuses_what_the_box_cannot_take_without_echoing_sensitive_values() -> None:
    settings = sophon_fog.Settings(url="http://box:5555")
    long_id_number = "9" * 200
    refused = sophon_fog.render(person("1", id_number=long_id_number), settings)
    assert isinstance(refused, Invalid)
    assert "sensitive" in refused.error
    assert "sophon_fog" in refused.error
    assert long_id_number not in refused.error
    assert isinstance(sophon_fog.render(person("x" * 65), settings), Invalid)
    assert isinstance(sophon_fog.render(person("1", name="n" * 65), settings), Invalid)


@pytest.mark.parametrize(
    "bad",
    [
        {"page_size": 101},
        {"delete_batch": 51},
        {"group": "a,b"},
        {"group": ""},
        {"paging": "cursor"},
        {"fiqa_level": "extreme"},
        {"timezone": "Mars/Olympus"},
        {"password": "there is none"},
    ],
)
def test_settings_refuse_out_of_range_values(bad: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        sophon_fog.Settings(url="http://box:5555", **bad)


def test_settings_defaults() -> None:
    settings = sophon_fog.Settings(url="http://box:5555")
    assert (settings.group, settings.page_size, settings.delete_batch, settings.paging) == (
        "default_group",
        100,
        50,
        "offset",
    )
    assert settings.fiqa_level is None


# -- permission groups: names resolved to the box's ids -------------------------------------

HQ, LAB = "5f1c2a9e-3b7d-4e8a-9c61-2d4f8b0e7a13", "0b7e4c21-8d3f-4a6e-b1c9-7e2f5a9d3c08"


async def test_groups_become_the_permission_ids_their_names_have_on_the_box(
    make_target: MakeTarget, box: SophonFogSimulator
) -> None:
    box.permissions = {"HQ doors": HQ, "Lab": LAB}
    # A group mapped to a name, one mapped to an id, one named as on the box.
    sync = Sync(make_target(group_map={"hq": "HQ doors", "lab": LAB}))
    wanted = desired(person("1", groups=("hq", "Lab")), person("2", groups=("lab",)))
    assert all(o.ok for o in await sync.converge(wanted))
    assert box.identities["1"]["info"]["permission_ids"] == sorted([HQ, LAB])
    assert box.identities["2"]["info"]["permission_ids"] == [LAB]
    box.log.clear()
    assert (await sync.plan(wanted)).changes == ()
    # Each name's id was looked up once, by the first observe.
    assert box.log.count("GET", "/SophonFace/api/permissions") == 0


async def test_a_group_the_box_does_not_have_is_invalid_until_it_is_created(
    make_target: MakeTarget, box: SophonFogSimulator
) -> None:
    box.permissions = {"HQ doors": HQ}
    sync = Sync(make_target())
    wanted = desired(person("1", groups=("HQ doors", "Garage")), person("2"))
    plan = await sync.plan(wanted)
    assert [c.person_id for c in plan.changes] == ["2"]
    (invalid,) = plan.invalid
    assert invalid.person_id == "1"
    assert "group 'Garage' is no permission group on the box" in invalid.error
    assert "group_map" in invalid.error
    # Created on the box: the next observe finds it, and its context says the plan is new.
    box.permissions["Garage"] = LAB
    again = await sync.plan(wanted)
    assert [c.person_id for c in again.changes] == ["1", "2"]
    assert again.observed_digest != plan.observed_digest
    assert all(o.ok for o in await sync.apply(again))
    assert box.identities["1"]["info"]["permission_ids"] == sorted([HQ, LAB])


async def test_the_box_refuses_permission_ids_it_does_not_know(
    box_url: str, box: SophonFogSimulator
) -> None:
    box.permissions = {"HQ doors": HQ}
    body = {
        "identity_id": "9",
        "group_name": "default_group",
        "need_bring_pic": False,
        "info": {"name": "nine", "type": 1, "permission_ids": ["nope"]},
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(box_url + USERS, json=body) as refused:
            assert (await refused.json())["error"]["code"] == 40091
        async with http.post(
            box_url + USERS, json={**body, "create_no_exit_permission": True}
        ) as created:
            assert created.status == 200
    assert box.permissions == {"HQ doors": HQ, "nope": "nope"}


class _LookupFails(dict[str, str]):
    """Permission groups the box lists, but fails (HTTP 500) to look up by name."""

    def items(self) -> Any:
        raise RuntimeError("the box failed")


async def test_a_failed_refresh_of_the_permission_ids_is_tried_again_at_once(
    make_target: MakeTarget, box: SophonFogSimulator
) -> None:
    """A permission group made anew has a new id: the hourly refresh finds it, and one that
    failed half-way is not taken as done."""
    box.permissions = {"HQ doors": HQ}
    target = make_target()
    sync = Sync(target)
    wanted = desired(person("1", groups=("HQ doors",)))
    assert all(o.ok for o in await sync.converge(wanted))
    target._permissions_read_at = -math.inf  # the hour is up
    box.permissions = _LookupFails({"HQ doors": LAB})  # deleted and made anew; then a failure
    with pytest.raises(TemporaryTargetError):
        await target.observe()
    box.permissions = {"HQ doors": LAB}
    plan = await sync.plan(wanted)
    (change,) = plan.changes
    assert [(f.field, f.old, f.new) for f in change.fields] == [("permission_ids", [HQ], [LAB])]


class _NoLookups(SophonFogSimulator):
    """Firmware that lists permission groups but cannot look one up by name, and a lookup
    answer with an entry of the wrong shape."""

    async def _permission_ids(self, request: web.Request) -> web.Response:
        if request.query.get("info.name") == "Lab":
            return web.json_response({"data": [{"_id": "x", "info": "Lab"}]})
        return web.json_response(
            {"error": {"code": 50100, "message": "not implemented", "status": "NOT_IMPLEMENTED"}},
            status=501,
        )


@pytest.mark.parametrize("names", [["Lab"], ["Lab", "HQ doors"]])
async def test_firmware_that_cannot_look_permissions_up_gets_the_groups_as_mapped(
    names: list[str],
) -> None:
    box = _NoLookups(permissions={name: f"id-{name}" for name in names})
    async with await serve(box) as served:
        target = SophonFog(
            "fog", sophon_fog.Settings(url=served.url, rate_limit=None), backoff=FAST
        )
        try:
            sync = Sync(target)
            plan = await sync.plan(desired(person("1", groups=("Lab",))))
        finally:
            await target.aclose()
    if names == ["Lab"]:
        # Its one lookup answered nothing usable (no crash): Lab is no group known there.
        (invalid,) = plan.invalid
        assert "group 'Lab' is no permission group on the box" in invalid.error
    else:  # a lookup the firmware lacks: the groups go out as mapped, unchecked
        (change,) = plan.changes
        assert change.record is not None
        assert change.record["permission_ids"] == ["Lab"]


class _ScriptedLookups(SophonFogSimulator):
    """Lookups answered from a script per name first (an error code, or a list), then as the
    box's permission groups say."""

    def __init__(self, script: dict[str, list[Any]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.script = script

    async def _permission_ids(self, request: web.Request) -> web.Response:
        answers = self.script.get(request.query.get("info.name", ""))
        if not answers:
            return await super()._permission_ids(request)
        answer = answers.pop(0)
        if isinstance(answer, int):
            error = {"code": answer, "message": "not found", "status": "ID_NOT_FOUND"}
            return web.json_response({"error": error}, status=404)
        return web.json_response({"data": answer})


async def test_a_name_the_box_cannot_find_is_no_group_and_is_looked_up_again() -> None:
    """A lookup answering "not found" (40401) or nothing for one name leaves the others
    resolved and checking on; the next observe asks again, and finds a group made since."""
    box = _ScriptedLookups({"Garage": [40401, []]}, permissions={"HQ doors": HQ, "Garage": LAB})
    async with await serve(box) as served:
        target = SophonFog("fog", sophon_fog.Settings(url=served.url, rate_limit=None))
        try:
            sync = Sync(target)
            wanted = desired(person("1", groups=("HQ doors",)), person("2", groups=("Garage",)))
            for _ in range(2):  # 40401, then an empty answer
                plan = await sync.plan(wanted)
                assert [c.person_id for c in plan.changes] == ["1"]
                assert [i.person_id for i in plan.invalid] == ["2"]
            plan = await sync.plan(wanted)
            assert plan.invalid == ()
            assert all(o.ok for o in await sync.apply(plan))
        finally:
            await target.aclose()
    assert box.identities["1"]["info"]["permission_ids"] == [HQ]
    assert box.identities["2"]["info"]["permission_ids"] == [LAB]


async def test_a_permission_group_made_anew_under_its_name_is_found_by_its_new_id(
    make_target: MakeTarget, box: SophonFogSimulator
) -> None:
    box.permissions = {"HQ doors": HQ}
    sync = Sync(make_target())
    wanted = desired(person("1", groups=("HQ doors",)))
    assert all(o.ok for o in await sync.converge(wanted))
    box.permissions = {}  # deleted on the box ...
    assert [i.person_id for i in (await sync.plan(wanted)).invalid] == ["1"]
    box.permissions = {"HQ doors": LAB}  # ... and made anew, within the hour
    (change,) = (await sync.plan(wanted)).changes
    assert [(f.field, f.old, f.new) for f in change.fields] == [("permission_ids", [HQ], [LAB])]


async def test_a_rate_limit_below_one_request_a_second_spaces_requests_out(
    make_target: MakeTarget, box: SophonFogSimulator
) -> None:
    """rate_limit: 0.9 is one request every 1.1 s (the limiter takes no capacity below one)."""
    observed = await asyncio.wait_for(make_target(rate_limit=0.9).observe(), timeout=20)
    assert observed.persons == {}
    assert box.log.count("GET", USERS) == 1
