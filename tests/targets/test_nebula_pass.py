"""The nebula_pass adapter against its simulator, over loopback HTTP (no mocks)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from reconciler.core.changes import Action, Reason
from reconciler.core.persons import Person, PersonType, Photo
from reconciler.core.planning import Observed
from reconciler.core.records import Invalid
from reconciler.errors import PermanentTargetError, TemporaryTargetError
from reconciler.simulators.base import serve
from reconciler.simulators.nebula_pass import NebulaPassSimulator
from reconciler.targets import nebula_pass
from reconciler.targets.http import Backoff
from reconciler.targets.nebula_pass import NebulaPass
from tests.targets.sync import Sync, desired, made_targets

FAST = Backoff(attempts=4, initial=0.01, maximum=0.2, budget=10)

MakeTarget = Callable[..., NebulaPass]


@pytest.fixture
async def make_target(nebula_url: str) -> AsyncIterator[MakeTarget]:
    def build(values: dict[str, Any]) -> NebulaPass:
        return NebulaPass("lobby", nebula_pass.Settings(**values), backoff=FAST)

    async with made_targets(
        build, url=nebula_url, username="admin", password="s3cret-lobby-pw", rate_limit=None
    ) as make:
        yield make


def person(pid: str, **fields: Any) -> Person:
    fields.setdefault("name", f"用户{pid}")
    return Person(id=pid, **fields)


async def test_observe_an_empty_device(make_target: MakeTarget) -> None:
    observed = await make_target().observe()
    assert observed == Observed(persons={})


async def test_create_then_nothing_left_to_do(
    make_target: MakeTarget, nebula: NebulaPassSimulator, photos: dict[str, Photo]
) -> None:
    sync = Sync(make_target())
    wanted = desired(
        person("1", card="0001", pin="0000", groups=("hq",), photo=photos["a.jpg"], admin=True),
        person("2", type=PersonType.BLACKLIST, remark="banned"),
    )
    outcomes = await sync.converge(wanted)
    assert all(o.ok for o in outcomes)
    stored = nebula.users["1"]
    assert (stored["name"], stored["type"], stored["ic_number"], stored["pin"]) == (
        "用户1",
        1,
        "0001",
        "0000",
    )
    assert base64.b64decode(stored["avatar"]) == Path(photos["a.jpg"].path).read_bytes()
    assert nebula.users["2"]["type"] == 5

    again = await sync.plan(wanted)
    assert again.changes == ()


async def test_more_than_one_page_is_read_and_writes_are_batched(
    make_target: MakeTarget, nebula: NebulaPassSimulator
) -> None:
    sync = Sync(make_target(batch_size=100))
    wanted = desired(*(person(f"{n:04d}") for n in range(250)))
    await sync.converge(wanted)
    assert nebula.log.count("POST", "/v2/user") == 3  # ceil(250 / 100): the minimum

    nebula.log.clear()
    again = await sync.plan(wanted)
    assert again.changes == ()
    assert nebula.log.count("GET", "/v1/user/offset/{offset}/limit/{limit}") == 3
    assert nebula.log.writes() == 0


async def test_a_smaller_listing_page_reads_more_pages_and_finds_everyone(
    make_target: MakeTarget, nebula: NebulaPassSimulator
) -> None:
    wanted = desired(*(person(f"{n:04d}") for n in range(25)))
    await Sync(make_target()).converge(wanted)
    nebula.log.clear()
    sync = Sync(make_target(page_size=10))
    assert (await sync.plan(wanted)).changes == ()
    listing = [e.path for e in nebula.log.entries if e.route.startswith("/v1/user/offset")]
    assert listing == [f"/v1/user/offset/{o}/limit/10" for o in (0, 10, 20)]


@pytest.mark.parametrize("photo_on_update", ["changed", "always"])
async def test_an_update_sends_the_face_only_when_changed_unless_always(
    make_target: MakeTarget,
    nebula: NebulaPassSimulator,
    photos: dict[str, Photo],
    photo_on_update: str,
) -> None:
    """A firmware whose upsert replaces the whole user would erase the face of every renamed
    person: photo_on_update: always sends it with every update."""
    sync = Sync(make_target(photo_on_update=photo_on_update))
    await sync.converge(desired(person("1", photo=photos["a.jpg"]), person("2")))
    nebula.users["1"]["avatar"] = ""  # as such a firmware would leave it after an upsert
    assert all(
        o.ok
        for o in await sync.converge(
            desired(person("1", name="renamed", photo=photos["a.jpg"]), person("2", name="renamed"))
        )
    )
    assert nebula.users["1"]["name"] == "renamed"
    assert bool(nebula.users["1"]["avatar"]) == (photo_on_update == "always")
    assert nebula.users["2"]["avatar"] == ""  # no photo declared: nothing to send
    # A removed photo is cleared either way.
    nebula.users["1"]["avatar"] = "AAAA"
    assert all(o.ok for o in await sync.converge(desired(person("1", name="renamed"))))
    assert nebula.users["1"]["avatar"] == ""


async def test_a_group_map_translates_group_names(
    make_target: MakeTarget, nebula: NebulaPassSimulator
) -> None:
    sync = Sync(make_target(group_map={"hq": "G1"}))
    await sync.converge(desired(person("1", groups=("hq", "lab"))))
    assert nebula.users["1"]["groups"] == ["G1", "lab"]
    assert (await sync.plan(desired(person("1", groups=("hq", "lab"))))).changes == ()


async def test_an_expired_token_is_renewed_by_logging_in_again(
    make_target: MakeTarget, nebula: NebulaPassSimulator
) -> None:
    import asyncio

    nebula.token_ttl = 0.2
    target = make_target()
    await target.observe()
    await asyncio.sleep(0.3)
    await target.observe()
    assert nebula.log.count("POST", "/v1/auth/login") == 2


async def test_per_item_errors_fail_only_those_persons(
    make_target: MakeTarget, nebula: NebulaPassSimulator
) -> None:
    nebula.max_users = 2
    sync = Sync(make_target())
    outcomes = await sync.converge(desired(person("1"), person("2"), person("3")))
    failed = [(o.change.person_id, o.ok, o.retryable) for o in outcomes if not o.ok]
    assert failed == [("3", False, False)]
    assert "capacity" in (next(o for o in outcomes if not o.ok).error or "")
    assert set(nebula.users) == {"1", "2"}
    assert set(sync.ledger) == {"1", "2", "3"}  # 3 stays pending: planned again next pass
    assert [
        c.person_id
        for c in (await sync.plan(desired(person("1"), person("2"), person("3")))).changes
    ] == ["3"]


async def test_a_type_change_is_a_replace_that_keeps_the_photo(
    make_target: MakeTarget, nebula: NebulaPassSimulator, photos: dict[str, Photo]
) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("1", photo=photos["a.jpg"])))
    plan = await sync.plan(desired(person("1", type=PersonType.VISITOR, photo=photos["a.jpg"])))
    assert [(c.action, c.person_id) for c in plan.changes] == [(Action.REPLACE, "1")]
    outcomes = await sync.apply(plan)
    assert all(o.ok for o in outcomes)
    assert nebula.users["1"]["type"] == 2
    assert nebula.users["1"]["avatar"]
    assert nebula.log.count("DELETE", "/v2/user") == 1


async def test_a_photo_change_is_sent_and_a_removed_photo_is_cleared(
    make_target: MakeTarget, nebula: NebulaPassSimulator, photos: dict[str, Photo]
) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("1", photo=photos["a.jpg"])))
    plan = await sync.plan(desired(person("1", photo=photos["c.png"])))
    (change,) = plan.changes
    assert [f.field for f in change.fields] == ["avatar"]
    await sync.apply(plan)
    assert base64.b64decode(nebula.users["1"]["avatar"]).startswith(b"\x89PNG")
    await sync.converge(desired(person("1")))
    assert nebula.users["1"]["avatar"] == ""
    assert (await sync.plan(desired(person("1")))).changes == ()


async def test_an_update_without_a_photo_change_does_not_resend_the_photo(
    make_target: MakeTarget, nebula: NebulaPassSimulator, photos: dict[str, Photo]
) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("1", photo=photos["a.jpg"])))
    avatar = nebula.users["1"]["avatar"]
    await sync.converge(desired(person("1", name="renamed", photo=photos["a.jpg"])))
    assert nebula.users["1"]["name"] == "renamed"
    assert nebula.users["1"]["avatar"] == avatar


async def test_delete(make_target: MakeTarget, nebula: NebulaPassSimulator) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("1"), person("2")))
    plan = await sync.plan(desired(person("2")))
    assert [(c.action, c.person_id) for c in plan.changes] == [(Action.DELETE, "1")]
    await sync.apply(plan)
    assert set(nebula.users) == {"2"}
    assert set(sync.ledger) == {"2"}


async def test_a_delete_of_a_person_already_gone_counts_as_done(
    make_target: MakeTarget, nebula: NebulaPassSimulator
) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("1")))
    plan = await sync.plan(desired())
    del nebula.users["1"]  # someone removed it on the device meanwhile
    outcomes = await sync.apply(plan)
    assert [o.ok for o in outcomes] == [True]


async def test_a_vip_is_invalid_for_this_kind(make_target: MakeTarget) -> None:
    target = make_target()
    assert target.spec.render(person("1", type=PersonType.VIP)) == Invalid(
        person_id="1", error="type vip is not supported by nebula_pass (staff, visitor, blacklist)"
    )


async def test_wrong_credentials_are_a_clear_permanent_error_without_the_password(
    make_target: MakeTarget,
) -> None:
    target = make_target(password="wrong-password-xyz")
    with pytest.raises(PermanentTargetError) as caught:
        await target.observe()
    assert "password is wrong" in str(caught.value)
    assert "wrong-password-xyz" not in str(caught.value)


async def test_a_malformed_response_is_a_target_error(
    make_target: MakeTarget, nebula: NebulaPassSimulator
) -> None:
    target = make_target()
    await target.observe()  # logged in; now the listing answers garbage
    nebula.faults.malformed_rate = 1.0
    with pytest.raises(PermanentTargetError, match=r"malformed|not JSON"):
        await target.observe()


async def test_temporary_failures_are_retried(
    make_target: MakeTarget, nebula: NebulaPassSimulator
) -> None:
    nebula.faults.fail_next = [503, 502, 429]
    nebula.faults.retry_after = 0.05
    observed = await make_target().observe()
    assert observed.persons == {}


@pytest.mark.parametrize(
    ("http_status", "attempts"),
    # An HTTP 500 is retried at once (FAST: 4 attempts); a body's code 500, by the next pass.
    [(None, FAST.attempts), (200, 1)],
    ids=["in HTTP too", "only in the body"],
)
async def test_a_device_failing_internally_fails_the_batch_for_another_try(
    make_target: MakeTarget, nebula: NebulaPassSimulator, http_status: int | None, attempts: int
) -> None:
    """Code 500 (Internal Server Error) is the device's failure, not the request's, even when
    the HTTP status stays 200 (the docs say it may): the batch is tried again, and a later
    pass takes it."""
    nebula.error_http_status = http_status
    sync = Sync(make_target())
    wanted = desired(person("1"), person("2"))
    plan = await sync.plan(wanted)
    nebula.faults.fail_next = [500] * attempts
    outcomes = await sync.apply(plan)
    assert [(o.ok, o.retryable) for o in outcomes] == [(False, True), (False, True)]
    assert "500" in (outcomes[0].error or "")
    assert nebula.faults.fail_next == []
    assert nebula.users == {}
    assert all(o.ok for o in await sync.converge(wanted))
    assert set(nebula.users) == {"1", "2"}


async def test_an_hour_long_retry_after_does_not_hold_a_request_for_an_hour(
    make_target: MakeTarget, nebula: NebulaPassSimulator
) -> None:
    """A throttling device's Retry-After: 3600 must not hold the pass for an hour (nor stop the
    daemon's stall clock): the wait is capped at the back-off's maximum (0.2 s here)."""
    nebula.faults.fail_next = [429]
    nebula.faults.retry_after = 3600
    observed = await asyncio.wait_for(make_target().observe(), timeout=10)
    assert observed.persons == {}


async def test_a_login_the_device_fails_internally_is_temporary(
    make_target: MakeTarget, nebula: NebulaPassSimulator
) -> None:
    nebula.error_http_status = 200  # the code only in the body, as the docs allow
    nebula.faults.fail_next = [500]
    with pytest.raises(TemporaryTargetError, match="login failed: HTTP 200, code 500"):
        await make_target().observe()


async def test_retries_give_up_with_a_temporary_error(
    make_target: MakeTarget, nebula: NebulaPassSimulator
) -> None:
    nebula.faults.error_rate = 1.0
    with pytest.raises(TemporaryTargetError, match="503"):
        await make_target().observe()


async def test_an_unreachable_device_is_a_temporary_error() -> None:
    settings = nebula_pass.Settings(url="http://127.0.0.1:9", username="a", password="b")
    target = NebulaPass("gone", settings, backoff=dataclasses.replace(FAST, attempts=2))
    try:
        with pytest.raises(TemporaryTargetError, match="target gone"):
            await target.observe()
    finally:
        await target.aclose()


async def test_https_with_ca_file_and_without_verification(
    nebula: NebulaPassSimulator, tmp_path: Path
) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    served = await serve(nebula, ssl_context=server_context)
    base = {"url": served.url, "username": "admin", "password": "s3cret-lobby-pw"}
    targets = [
        NebulaPass("ca", nebula_pass.Settings(**base, ca_file=ca_file), backoff=FAST),
        NebulaPass("noverify", nebula_pass.Settings(**base, tls_verify=False), backoff=FAST),
        NebulaPass("system", nebula_pass.Settings(**base), backoff=FAST),
    ]
    try:
        assert served.url.startswith("https://")
        assert (await targets[0].observe()).persons == {}
        assert (await targets[1].observe()).persons == {}
        with pytest.raises(PermanentTargetError, match="ca_file"):
            await targets[2].observe()
    finally:
        for target in targets:
            await target.aclose()
        await served.close()


# -- the datasync feed: persons whose update_at did not move are not read again -----------------

PAGES = "/v1/user/offset/{offset}/limit/{limit}"
ONE = "/v1/user/id/{id}"


async def test_a_second_read_with_nothing_changed_reads_no_page(
    make_target: MakeTarget, nebula: NebulaPassSimulator
) -> None:
    target = make_target()
    sync = Sync(target)
    wanted = desired(*(person(f"{n:04d}") for n in range(250)))
    await sync.converge(wanted)
    first = await target.observe()  # our own writes moved every update_at: all read again
    nebula.log.clear()

    again = await target.observe()
    assert again == first
    assert nebula.log.count("GET", PAGES) == nebula.log.count("GET", ONE) == 0
    assert nebula.log.count("GET", "/v2/datasync/info") == 1
    assert (await sync.plan(wanted)).changes == ()


async def test_a_person_edited_on_the_device_is_read_alone_and_planned_as_drift(
    make_target: MakeTarget, nebula: NebulaPassSimulator
) -> None:
    target = make_target()
    sync = Sync(target)
    wanted = desired(*(person(f"{n:04d}", remark="kept") for n in range(250)))
    await sync.converge(wanted)
    await target.observe()
    nebula.edit_user("0007", remark="edited at the device")
    del nebula.users["0009"]  # and one removed there
    nebula.log.clear()

    plan = await sync.plan(wanted)
    assert nebula.log.count("GET", PAGES) == 0
    assert [e.path for e in nebula.log.entries if e.route == ONE] == ["/v1/user/id/0007"]
    assert [(c.action, c.person_id, c.reason) for c in plan.changes] == [
        (Action.UPDATE, "0007", Reason.DRIFT),
        (Action.CREATE, "0009", Reason.DRIFT),
    ]
    assert [(f.field, f.old, f.new) for f in plan.changes[0].fields] == [
        ("remark", "edited at the device", "kept")
    ]


async def test_a_new_instance_reads_everything_once(
    make_target: MakeTarget, nebula: NebulaPassSimulator
) -> None:
    await Sync(make_target()).converge(desired(*(person(f"{n:04d}") for n in range(250))))
    restarted = make_target()
    nebula.log.clear()
    await restarted.observe()
    assert nebula.log.count("GET", PAGES) == 3
    await restarted.observe()
    assert nebula.log.count("GET", PAGES) == 3


async def test_many_changed_persons_are_read_by_pages_not_one_by_one(
    make_target: MakeTarget, nebula: NebulaPassSimulator
) -> None:
    target = make_target()
    await Sync(target).converge(desired(*(person(f"{n:04d}") for n in range(250))))
    await target.observe()
    for n in range(4):  # more than the 3 pages a whole listing takes
        nebula.edit_user(f"{n:04d}", remark="edited")
    nebula.log.clear()
    observed = await target.observe()
    assert nebula.log.count("GET", PAGES) == 3
    assert nebula.log.count("GET", ONE) == 0
    assert observed.persons["0003"].record["remark"] == "edited"


@pytest.mark.parametrize("breakage", ["no_update_at", "repeated_ids", "update_at not a number"])
async def test_a_feed_that_does_not_add_up_means_a_full_read(
    make_target: MakeTarget, nebula: NebulaPassSimulator, breakage: str
) -> None:
    target = make_target()
    await Sync(target).converge(desired(*(person(f"{n:04d}") for n in range(250))))
    await target.observe()
    nebula.users["0001"]["name"] = "edited without moving update_at"
    if breakage == "update_at not a number":
        nebula.users["0002"]["update_at"] = "yesterday"
    else:
        nebula.feed = breakage  # type: ignore[assignment]
    nebula.log.clear()
    observed = await target.observe()
    assert nebula.log.count("GET", PAGES) == 3
    assert observed.persons["0001"].record["name"] == "edited without moving update_at"
    nebula.log.clear()
    await target.observe()  # and again, for as long as the feed cannot be trusted
    assert nebula.log.count("GET", PAGES) == 3


async def test_the_feed_is_not_trusted_alone_for_longer_than_full_read_every(
    make_target: MakeTarget, nebula: NebulaPassSimulator
) -> None:
    target = make_target()
    await Sync(target).converge(desired(person("1")))
    await target.observe()
    nebula.users["1"]["name"] = "edited without moving update_at"
    target.FULL_READ_EVERY = 0.0
    nebula.log.clear()
    observed = await target.observe()
    assert nebula.log.count("GET", PAGES) == 1
    assert observed.persons["1"].record["name"] == "edited without moving update_at"


async def test_the_feed_digest_moves_with_any_person_and_serves_the_next_observe(
    make_target: MakeTarget, nebula: NebulaPassSimulator
) -> None:
    target = make_target()
    await Sync(target).converge(desired(*(person(f"{n:04d}") for n in range(3))))
    nebula.log.clear()
    first = await target.feed()
    assert first is not None
    await target.observe()  # the feed just read: not asked again
    assert nebula.log.count("GET", "/v2/datasync/info") == 1
    assert nebula.log.count("GET", PAGES) == 1
    again = await target.feed()
    assert again is not None
    assert again.digest == first.digest

    nebula.edit_user("0001", remark="edited at the device")
    edited = await target.feed()
    assert edited is not None
    assert edited.digest != first.digest
    del nebula.users["0002"]
    removed = await target.feed()
    assert removed is not None
    assert removed.digest not in (first.digest, edited.digest)


async def test_the_feed_is_trusted_until_the_next_full_read_is_due(
    make_target: MakeTarget, nebula: NebulaPassSimulator
) -> None:
    await Sync(make_target()).converge(desired(person("1")))
    target = make_target()  # a new process: nothing read yet
    before = time.time()
    fresh = await target.feed()  # so the observe() that follows reads it all
    assert fresh is not None
    assert before + target.FULL_READ_EVERY <= fresh.trusted_until
    assert fresh.trusted_until <= time.time() + target.FULL_READ_EVERY
    await target.observe()
    await asyncio.sleep(0.3)
    later = await target.feed()  # the snapshot stands on that full read, not on this feed
    assert later is not None
    assert later.trusted_until < fresh.trusted_until + 0.25


async def test_a_feed_that_does_not_add_up_gives_no_word(
    make_target: MakeTarget, nebula: NebulaPassSimulator
) -> None:
    target = make_target()
    await Sync(target).converge(desired(person("1"), person("2")))
    nebula.feed = "repeated_ids"
    assert await target.feed() is None
    assert len((await target.observe()).persons) == 2


async def test_an_answer_byte_for_byte_the_last_one_is_not_decoded_again(
    make_target: MakeTarget, nebula: NebulaPassSimulator
) -> None:
    target = make_target()
    await Sync(target).converge(desired(person("1"), person("2")))
    stamps = await target._stamps()
    assert stamps is not None
    assert await target._stamps() is stamps  # the same answer: the same stamps, not rebuilt
    nebula.edit_user("2", remark="edited at the device")
    moved = await target._stamps()
    assert moved is not None
    assert moved is not stamps
    assert moved["2"] != stamps["2"]
    assert moved["1"] == stamps["1"]
