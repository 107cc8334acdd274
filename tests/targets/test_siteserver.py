"""The siteserver adapter against its simulator (6.x and 7.x), over loopback HTTP (no mocks)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import string
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

import aiohttp
import pytest

from reconciler.core.changes import Action
from reconciler.core.persons import Person, Photo
from reconciler.core.planning import Observed
from reconciler.core.records import Invalid
from reconciler.errors import PermanentTargetError, TemporaryTargetError
from reconciler.simulators.base import serve
from reconciler.simulators.siteserver import SiteServerSimulator
from reconciler.targets import siteserver
from reconciler.targets.base import Outcome
from reconciler.targets.http import Backoff
from reconciler.targets.siteserver import SiteServer
from tests.targets.sync import Sync, desired, made_targets

FAST = Backoff(attempts=4, initial=0.01, maximum=0.2, budget=10)
API_KEY = "cms-key-7d1e0c"
PASSWORD = "Sup3r-Secret-Pw"
USERS = "/api/v1/users"
USER = "/api/v1/users/{id}"

MakeTarget = Callable[..., SiteServer]

both = pytest.mark.parametrize("sim", [6, 7], indirect=True, ids=["v6", "v7"])


@pytest.fixture
def sim(request: pytest.FixtureRequest) -> SiteServerSimulator:
    version: Literal[6, 7] = getattr(request, "param", 6)
    return SiteServerSimulator(api_version=version, api_key=API_KEY)


@pytest.fixture
async def sim_url(sim: SiteServerSimulator) -> AsyncIterator[str]:
    async with await serve(sim) as served:
        yield served.url


@pytest.fixture
async def make_target(sim: SiteServerSimulator, sim_url: str) -> AsyncIterator[MakeTarget]:
    def build(values: dict[str, Any]) -> SiteServer:
        return SiteServer("cms", siteserver.Settings(**values), backoff=FAST)

    async with made_targets(
        build,
        url=sim_url,
        api_key=API_KEY,
        api_version=sim.api_version,
        initial_password=PASSWORD,
        rate_limit=None,
    ) as make:
        yield make


def person(pid: str, **fields: Any) -> Person:
    fields.setdefault("name", f"用户{pid}")
    return Person(id=pid, **fields)


def user_id(sim: SiteServerSimulator, name: str) -> int:
    user = sim.user_named(name)
    assert user is not None, name
    return int(user["id"])


# -- the basics, on both versions -----------------------------------------------------------


@both
async def test_observe_an_empty_cms(make_target: MakeTarget) -> None:
    assert await make_target().observe() == Observed(persons={})


@both
async def test_create_then_nothing_left_to_do(
    make_target: MakeTarget, sim: SiteServerSimulator, photos: dict[str, Photo]
) -> None:
    sync = Sync(make_target())
    wanted = desired(
        person("zhang", email="zhang@example.com", phone="13800138000", photo=photos["a.jpg"]),
        person("li", name="李四"),
    )
    outcomes = await sync.converge(wanted)
    assert all(o.ok for o in outcomes), outcomes
    stored = sim.user_named("zhang")
    assert stored is not None
    assert (stored["displayName"], stored["email"], stored["mobile"]) == (
        "用户zhang",
        "zhang@example.com",
        "13800138000",
    )
    assert sim.photo_of("zhang") == Path(photos["a.jpg"].path).read_bytes()
    assert sim.photo_of("li") is None
    assert sim.person_names() == {"zhang": "用户zhang", "li": "李四"}
    # The CMS's ids are what the ledger keeps.
    assert {pid: e.remote_id for pid, e in sync.ledger.items()} == {
        "zhang": str(user_id(sim, "zhang")),
        "li": str(user_id(sim, "li")),
    }
    assert (await sync.plan(wanted)).changes == ()


@both
async def test_observe_reports_the_cms_ids(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    sim.add_person("a", "A")
    sim.add_person("b", "B")
    observed = await make_target().observe()
    assert {pid: p.remote_id for pid, p in observed.persons.items()} == {"a": "1", "b": "2"}
    assert observed.persons["a"].record == {
        "userName": "a",
        "displayName": "A",
        "email": "",
        "mobile": "",
        "checked": False,  # put there by hand, never approved
    }


def approved(sim: SiteServerSimulator, name: str) -> bool:
    user = sim.user_named(name)
    assert user is not None
    return bool(user["isChecked" if sim.api_version == 6 else "checked"])


@both
async def test_users_are_approved_where_the_cms_reviews_registrations(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    """A CMS that reviews registrations creates users who cannot log in: each is approved
    right after its create, and one a reviewer turns back is approved again by the next pass."""
    sim.registration_checked = False
    sync = Sync(make_target())
    wanted = desired(person("a"), person("b"))
    assert all(o.ok for o in await sync.converge(wanted))
    assert approved(sim, "a")
    assert approved(sim, "b")
    assert sim.log.writes() == 2 * 2  # a create and an approval each
    assert (await sync.plan(wanted)).changes == ()

    user = sim.user_named("b")
    assert user is not None
    user["isChecked" if sim.api_version == 6 else "checked"] = False
    plan = await sync.plan(wanted)
    assert [(c.action, c.person_id, [f.field for f in c.fields]) for c in plan.changes] == [
        (Action.UPDATE, "b", ["checked"])
    ]
    sim.log.clear()
    assert all(o.ok for o in await sync.apply(plan))
    assert approved(sim, "b")
    assert sim.log.writes() == 1


@both
async def test_a_first_sync_of_n_persons_makes_n_writes_plus_one_per_photo(
    make_target: MakeTarget, sim: SiteServerSimulator, photos: dict[str, Photo]
) -> None:
    sync = Sync(make_target())
    wanted = desired(
        *(person(f"p{n}") for n in range(5)),
        person("q1", photo=photos["a.jpg"]),
        person("q2", photo=photos["c.png"]),
    )
    outcomes = await sync.converge(wanted)
    assert all(o.ok for o in outcomes)
    assert sim.log.writes() == 7 + 2
    assert sim.log.count("POST", USERS) == 7
    assert sim.log.count("POST", USER + "/avatar") == 2
    assert sim.photo_of("q2") == Path(photos["c.png"].path).read_bytes()


@both
async def test_more_than_one_page_is_read(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    sync = Sync(make_target(page_size=100, concurrency=8))
    wanted = desired(*(person(f"u{n:04d}") for n in range(260)))
    outcomes = await sync.converge(wanted)
    assert all(o.ok for o in outcomes)
    assert sim.log.count("POST", USERS) == 260

    sim.log.clear()
    again = await sync.plan(wanted)
    assert again.changes == ()
    assert sim.log.count("GET", USERS) == 3  # ceil(260 / 100)
    assert sim.log.writes() == 0


@both
async def test_delete(make_target: MakeTarget, sim: SiteServerSimulator) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("a"), person("b")))
    plan = await sync.plan(desired(person("b")))
    assert [(c.action, c.person_id) for c in plan.changes] == [(Action.DELETE, "a")]
    outcomes = await sync.apply(plan)
    assert [o.ok for o in outcomes] == [True]
    assert sim.person_names() == {"b": "用户b"}
    assert set(sync.ledger) == {"b"}
    delete = "DELETE" if sim.api_version == 6 else "POST"
    route = USER if sim.api_version == 6 else USER + "/actions/delete"
    assert sim.log.count(delete, route) == 1


@both
async def test_a_foreign_user_is_reported_and_left_alone(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    sim.add_person("hand", "By Hand")
    plan = await Sync(make_target()).plan(desired(person("hand")))
    assert plan.changes == ()
    assert plan.foreign == ("hand",)


# -- updates --------------------------------------------------------------------------------


async def test_a_v6_update_sends_only_the_changed_keys_and_never_the_id(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("a", email="a@example.com"), person("b")))
    sim.bodies.clear()
    plan = await sync.plan(desired(person("a", name="Renamed", email="a@example.com"), person("b")))
    assert [(c.action, [f.field for f in c.fields]) for c in plan.changes] == [
        (Action.UPDATE, ["displayName"])
    ]
    outcomes = await sync.apply(plan)
    assert [o.ok for o in outcomes] == [True]
    assert sim.bodies == [("PUT", f"/api/v1/users/{user_id(sim, 'a')}", {"displayName": "Renamed"})]
    # The other user is untouched (an `id` in the body would have overwritten some row).
    assert sim.person_names() == {"a": "Renamed", "b": "用户b"}
    assert sim.user_named("a") == sim.users[user_id(sim, "a")]


async def test_the_v6_simulator_would_overwrite_another_row_if_an_id_were_sent(
    sim: SiteServerSimulator, sim_url: str
) -> None:
    """Why the rule above matters: the proof that the simulator reproduces the hazard."""
    first, second = sim.add_user("first"), sim.add_user("second")
    async with (
        aiohttp.ClientSession() as http,
        http.put(
            f"{sim_url}/api/v1/users/{first}",
            json={"id": second, "displayName": "oops"},
            headers={"X-SS-API-KEY": API_KEY},
        ) as response,
    ):
        assert response.status == 200
    assert sim.users[second]["userName"] == "first"
    assert sim.users[first]["displayName"] == ""


@pytest.mark.parametrize("sim", [7], indirect=True, ids=["v7"])
async def test_a_v7_update_posts_the_full_object_and_keeps_other_fields(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("a", email="a@example.com", phone="13900000001")))
    stored = sim.user_named("a")
    assert stored is not None
    stored.update(locked=True, openId="wx-1", departmentId=4, nickname="extension value")
    sim.bodies.clear()
    sim.log.clear()

    outcomes = await sync.converge(
        desired(person("a", name="Renamed", email="a@example.com", phone="13900000001"))
    )
    assert [o.ok for o in outcomes] == [True]
    after = sim.user_named("a")
    assert after is not None
    assert after["displayName"] == "Renamed"
    assert (after["email"], after["mobile"], after["checked"], after["locked"]) == (
        "a@example.com",
        "13900000001",
        True,
        True,
    )
    assert (after["openId"], after["departmentId"], after["nickname"]) == (
        "wx-1",
        4,
        "extension value",
    )
    ((method, path, body),) = sim.bodies
    assert (method, path, body["id"]) == ("POST", f"/api/v1/users/{after['id']}/actions/update", 1)
    # The object came from the listing: no per-person GET.
    assert sim.log.count("GET", "/api/v1/users/{account}") == 0


@pytest.mark.parametrize("sim", [7], indirect=True, ids=["v7"])
async def test_a_v7_update_without_a_listing_reads_the_user_first(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("a")))
    sim.users[user_id(sim, "a")]["locked"] = True
    plan = await sync.plan(desired(person("a", name="Renamed")))
    fresh = make_target()  # has never listed: must read the object before replacing it
    outcomes = await sync.apply(plan, fresh)
    assert [o.ok for o in outcomes] == [True]
    assert sim.log.count("GET", "/api/v1/users/{account}") == 1
    after = sim.user_named("a")
    assert after is not None
    assert (after["displayName"], after["locked"], after["checked"]) == ("Renamed", True, True)


@both
async def test_a_photo_change_is_an_avatar_upload_only_and_a_removed_photo_is_cleared(
    make_target: MakeTarget, sim: SiteServerSimulator, photos: dict[str, Photo]
) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("a", photo=photos["a.jpg"])))
    sim.log.clear()
    plan = await sync.plan(desired(person("a", photo=photos["c.png"])))
    (change,) = plan.changes
    assert [f.field for f in change.fields] == ["avatar"]
    outcomes = await sync.apply(plan)
    assert [o.ok for o in outcomes] == [True]
    assert sim.log.writes() == 1
    assert sim.log.count("POST", USER + "/avatar") == 1
    assert sim.photo_of("a") == Path(photos["c.png"].path).read_bytes()

    await sync.converge(desired(person("a")))
    assert sim.photo_of("a") is None
    stored = sim.user_named("a")
    assert stored is not None
    assert stored["avatarUrl"] == ""
    assert (await sync.plan(desired(person("a")))).changes == ()


@both
async def test_an_update_without_a_photo_change_does_not_upload_again(
    make_target: MakeTarget, sim: SiteServerSimulator, photos: dict[str, Photo]
) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("a", photo=photos["a.jpg"])))
    sim.log.clear()
    await sync.converge(desired(person("a", name="New", photo=photos["a.jpg"])))
    assert sim.log.writes() == 1
    assert sim.log.count("POST", USER + "/avatar") == 0
    assert sim.photo_of("a") == Path(photos["a.jpg"].path).read_bytes()


@both
async def test_a_mobile_like_id_without_a_phone_does_not_churn(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    sync = Sync(make_target())
    wanted = desired(person("13812345678"))
    await sync.converge(wanted)
    stored = sim.user_named("13812345678")
    assert stored is not None
    assert stored["mobile"] == "13812345678"  # the CMS's own rule
    assert (await sync.plan(wanted)).changes == ()


# -- ids: kept in the ledger, rebuilt from the listing ----------------------------------------


@both
async def test_a_ledger_without_remote_ids_is_rebuilt_from_the_listing(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("a"), person("b"), person("c")))
    sim.add_person("decoy", "Not Ours")  # takes the next id
    plan = await sync.plan(desired(person("b", name="B2"), person("c")))
    # A ledger from before ids were kept, and a plan that carries none.
    sync.ledger = {pid: dataclasses.replace(e, remote_id=None) for pid, e in sync.ledger.items()}
    stripped = dataclasses.replace(
        plan, changes=tuple(dataclasses.replace(c, remote_id=None) for c in plan.changes)
    )
    fresh = make_target()
    sim.log.clear()
    outcomes = await sync.apply(stripped, fresh)
    assert sorted((o.change.person_id, o.ok) for o in outcomes) == [("a", True), ("b", True)]
    assert sim.log.count("GET", USERS) == 1  # one listing for all of them
    assert sim.person_names() == {"b": "B2", "c": "用户c", "decoy": "Not Ours"}
    assert sync.ledger["b"].remote_id == str(user_id(sim, "b"))


@both
async def test_a_delete_of_a_person_without_any_id_has_nothing_to_delete(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("a"), person("b")))
    plan = await sync.plan(desired(person("b")))
    del sim.users[user_id(sim, "a")]
    stripped = dataclasses.replace(
        plan, changes=tuple(dataclasses.replace(c, remote_id=None) for c in plan.changes)
    )
    sim.log.clear()
    outcomes = await sync.apply(stripped, make_target())
    assert [(o.change.person_id, o.ok) for o in outcomes] == [("a", True)]
    assert sim.log.writes() == 0


# -- persons deleted on the CMS ---------------------------------------------------------------


@both
async def test_an_update_of_a_user_deleted_on_the_cms_fails_retryably_then_is_re_created(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("a")))
    plan = await sync.plan(desired(person("a", name="New")))
    del sim.users[user_id(sim, "a")]
    (outcome,) = await sync.apply(plan)
    assert (outcome.ok, outcome.retryable) == (False, True)
    if sim.api_version == 6:
        assert "was deleted on the CMS; the next pass re-creates it" in (outcome.error or "")
    else:
        assert "500" in (outcome.error or "")
        assert "no longer exists" in (outcome.error or "")
    again = await sync.plan(desired(person("a", name="New")))
    assert [(c.action, c.person_id) for c in again.changes] == [(Action.CREATE, "a")]
    assert all(o.ok for o in await sync.apply(again))
    assert sim.person_names() == {"a": "New"}


async def test_a_v6_photo_upload_for_a_deleted_user_says_so(
    make_target: MakeTarget, sim: SiteServerSimulator, photos: dict[str, Photo]
) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("a")))
    plan = await sync.plan(desired(person("a", photo=photos["a.jpg"])))
    del sim.users[user_id(sim, "a")]
    (outcome,) = await sync.apply(plan)
    assert (outcome.ok, outcome.retryable) == (False, True)
    assert "was deleted on the CMS" in (outcome.error or "")


@both
async def test_a_delete_of_a_user_already_gone(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("a")))
    plan = await sync.plan(desired())
    del sim.users[user_id(sim, "a")]
    (outcome,) = await sync.apply(plan)
    if sim.api_version == 6:
        assert outcome.ok  # 404: already gone
    else:
        assert (outcome.ok, outcome.retryable) == (False, True)
        assert "no longer exists" in (outcome.error or "")
    # Either way the next pass has nothing left to do: the ledger row is forgotten.
    again = await sync.plan(desired())
    assert again.changes == ()
    assert again.forget == (() if sim.api_version == 6 else ("a",))


# -- refusals -------------------------------------------------------------------------------


@both
async def test_the_registration_rate_limit_is_a_clear_actionable_error(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    sim.registration_min_minutes = 10
    sync = Sync(make_target(concurrency=1))
    outcomes = await sync.converge(desired(person("a"), person("b"), person("c")))
    assert [(o.change.person_id, o.ok) for o in outcomes] == [
        ("a", True),
        ("b", False),
        ("c", False),
    ]
    for outcome in outcomes[1:]:
        error = outcome.error or ""
        assert outcome.retryable is False
        assert "one registration per IP address every 10 minutes" in error
        assert "UserRegistrationMinMinutes" in error
        assert "set it to 0" in error
        assert "用户设置" in error
    # Once the CMS said so, the rest of the pass does not ask again.
    assert sim.log.count("POST", USERS) == 2


@both
async def test_disabled_registration_is_a_clear_error(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    sim.registration_allowed = False
    outcomes = await Sync(make_target()).converge(desired(person("a")))
    (outcome,) = outcomes
    assert outcome.retryable is False
    assert "allow user registration" in (outcome.error or "")


@both
async def test_a_duplicate_email_fails_only_that_person_with_the_cms_message(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    sim.add_user("someone", email="taken@example.com")
    outcomes = await Sync(make_target()).converge(
        desired(person("a", email="taken@example.com"), person("b"))
    )
    by_id = {o.change.person_id: o for o in outcomes}
    assert by_id["b"].ok
    assert (by_id["a"].ok, by_id["a"].retryable) == (False, False)
    assert "电子邮件地址已被注册" in (by_id["a"].error or "")


@both
async def test_a_duplicate_mobile_on_update_fails_only_that_person(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    sync = Sync(make_target())
    await sync.converge(desired(person("a", phone="13900000001"), person("b")))
    outcomes = await sync.converge(
        desired(person("a", phone="13900000001"), person("b", phone="13900000001", name="B"))
    )
    (outcome,) = outcomes
    assert (outcome.ok, outcome.retryable) == (False, False)
    assert "手机号码已被注册" in (outcome.error or "")


@both
async def test_a_password_the_cms_refuses_is_reported_without_the_password(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    sim.password_min_length = 32
    (outcome,) = await Sync(make_target()).converge(desired(person("a")))
    assert (outcome.ok, outcome.retryable) == (False, False)
    assert "密码长度必须大于等于32" in (outcome.error or "")
    assert PASSWORD not in (outcome.error or "")


@both
async def test_an_illegal_user_name_is_invalid_before_anything_is_sent(
    make_target: MakeTarget,
) -> None:
    target = make_target()
    for bad in ("a b", "a:b", "a'b", "a\u3000b", "a/b"):
        rendered = target.spec.render(person(bad))
        assert isinstance(rendered, Invalid), bad
        assert "siteserver userName" in rendered.error
    assert not isinstance(target.spec.render(person("first.last@example")), Invalid)
    too_long = target.spec.render(person("a", phone="1" * 21))
    assert too_long == Invalid(
        person_id="a", error="mobile is longer than siteserver's 20 characters"
    )


# -- credentials, passwords, malformed answers ------------------------------------------------


@both
async def test_a_wrong_api_key_is_a_clear_permanent_error_without_the_key(
    make_target: MakeTarget,
) -> None:
    target = make_target(api_key="wrong-key-0123456789")
    with pytest.raises(PermanentTargetError) as caught:
        await target.observe()
    message = str(caught.value)
    assert "check api_key" in message
    assert "Users scope" in message
    assert "wrong-key-0123456789" not in message
    assert API_KEY not in message


@both
async def test_a_key_without_the_users_scope_is_refused(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    sim.scopes = {"Contents"}
    with pytest.raises(PermanentTargetError, match="Users scope"):
        await make_target().observe()


async def test_v6_creates_need_no_key_so_observe_is_what_catches_a_wrong_one(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    plan = await Sync(make_target()).plan(desired(person("a")))
    wrong = make_target(api_key="wrong-key-0123456789")
    outcomes = [o async for batch in wrong.apply(plan.changes) for o in batch]
    assert [o.ok for o in outcomes] == [True]  # self-registration: the real 6.x does this


@pytest.mark.parametrize("sim", [7], indirect=True, ids=["v7"])
async def test_a_v7_write_with_a_wrong_key_fails_the_whole_apply(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    plan = await Sync(make_target()).plan(desired(person("a"), person("b")))
    wrong = make_target(api_key="wrong-key-0123456789")
    with pytest.raises(PermanentTargetError, match="check api_key") as caught:
        async for _ in wrong.apply(plan.changes):
            pass
    assert "wrong-key-0123456789" not in str(caught.value)
    assert sim.users == {}


@both
async def test_passwords_never_appear_in_errors_or_logs(
    make_target: MakeTarget,
    sim: SiteServerSimulator,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    seeded = sim.add_user("other", email="dup@example.com")
    outcomes: list[Outcome] = []
    for n, initial in enumerate((PASSWORD, None)):
        target = make_target(initial_password=initial)
        sync = Sync(target)
        sim.registration_min_minutes = 0
        # A success and a refusal (duplicate email) ...
        outcomes += await sync.converge(
            desired(person(f"ok{n}"), person(f"dup{n}", email="dup@example.com"))
        )
        # ... server errors until the retries give up ...
        plan = await sync.plan(desired(person(f"ok{n}"), person(f"e{n}")))
        sim.faults.fail_next = [500] * FAST.attempts
        outcomes += await sync.apply(plan)
        # ... answers that are not JSON ...
        plan = await sync.plan(desired(person(f"ok{n}"), person(f"m{n}")))
        sim.faults.malformed_rate = 1.0
        outcomes += await sync.apply(plan)
        sim.faults.malformed_rate = 0.0
        # ... and the registration limit.
        sim.registration_min_minutes = 10
        outcomes += await sync.converge(desired(person(f"ok{n}"), person(f"r{n}")))
        assert target.settings.initial_password is None or PASSWORD not in repr(target.settings)

    errors = [o.error for o in outcomes if not o.ok]
    assert len(errors) == 8, errors
    text = " ".join([*(e or "" for e in errors), *(repr(o) for o in outcomes)])
    captured = capsys.readouterr()
    created = [pw for uid, pw in sim.passwords.items() if uid != seeded]
    assert PASSWORD in created  # the first round's users
    assert any(pw != PASSWORD for pw in created)  # the second round's, generated
    for secret in {PASSWORD, *created}:
        assert secret not in text
        assert secret not in caplog.text
        assert secret not in captured.out + captured.err
    for stored in sim.users.values():
        assert not {"password", "passwordSalt", "passwordFormat"} & stored.keys()


@both
async def test_generated_passwords_are_strong_unique_and_work(
    make_target: MakeTarget, sim: SiteServerSimulator, sim_url: str
) -> None:
    sim.password_min_length = 16
    sim.password_restriction = "LetterAndDigitAndSymbol"
    outcomes = await Sync(make_target(initial_password=None)).converge(
        desired(*(person(f"p{n}") for n in range(20)))
    )
    assert all(o.ok for o in outcomes)
    passwords = list(sim.passwords.values())
    assert len(set(passwords)) == 20
    for password in passwords:
        assert len(password) >= 20
        assert any(c in string.ascii_lowercase for c in password)
        assert any(c in string.ascii_uppercase for c in password)
        assert any(c in string.digits for c in password)
    # The user can log in with it (the login API takes the MD5 of the password).
    digest = hashlib.md5(passwords[0].encode(), usedforsecurity=False).hexdigest()
    first = sim.users[min(sim.users)]["userName"]
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{sim_url}/api/v1/users/actions/login",
            json={"account": first, "password": digest},
        ) as response,
    ):
        assert response.status == 200


@both
async def test_the_initial_password_is_the_one_given(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    await Sync(make_target()).converge(desired(person("a")))
    assert list(sim.passwords.values()) == [PASSWORD]


@both
async def test_a_malformed_listing_is_a_target_error(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    sim.faults.malformed_rate = 1.0
    with pytest.raises(PermanentTargetError, match=r"malformed|not JSON"):
        await make_target().observe()


@both
async def test_a_listing_with_a_broken_user_is_a_target_error(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    sim.add_person("a", "A")
    del sim.users[1]["userName"]
    with pytest.raises(PermanentTargetError, match="malformed user listing"):
        await make_target().observe()


@both
async def test_a_malformed_write_answer_fails_the_person_not_the_daemon(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    sync = Sync(make_target())
    plan = await sync.plan(desired(person("a"), person("b")))
    sim.faults.malformed_rate = 1.0
    outcomes = await sync.apply(plan)
    assert [o.ok for o in outcomes] == [False, False]
    assert all("malformed" in (o.error or "") or "not JSON" in (o.error or "") for o in outcomes)
    assert all(o.retryable for o in outcomes)


@both
async def test_temporary_failures_are_retried(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    sim.faults.fail_next = [503, 502, 429]
    sim.faults.retry_after = 0.05
    assert (await make_target().observe()).persons == {}


@both
async def test_retries_give_up_with_a_temporary_error(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    sim.faults.error_rate = 1.0
    with pytest.raises(TemporaryTargetError, match="503"):
        await make_target().observe()


# -- version specifics ------------------------------------------------------------------------


@pytest.mark.parametrize("sim", [7], indirect=True, ids=["v7"])
async def test_v7_groups_are_sent_as_names_through_the_group_map(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    sim.groups = {"总部", "lab"}
    sync = Sync(make_target(group_map={"hq": "总部"}))
    await sync.converge(desired(person("a", groups=("hq", "lab", "unknown"))))
    assert sim.memberships[user_id(sim, "a")] == ["lab", "总部"]


@pytest.mark.parametrize("sim", [7], indirect=True, ids=["v7"])
async def test_early_v7_releases_that_page_by_top_and_skip_are_read_too(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    sim.v7_paging = "skip"
    for n in range(25):
        sim.add_person(f"u{n:02d}", f"U{n}")
    observed = await make_target(page_size=10).observe()
    assert len(observed.persons) == 25


@pytest.mark.parametrize("sim", [7], indirect=True, ids=["v7"])
async def test_a_listing_that_does_not_add_up_is_refused_not_planned_from(
    make_target: MakeTarget, sim: SiteServerSimulator
) -> None:
    sim.v7_paging = "broken"  # one release read perPage from `page`
    for n in range(25):
        sim.add_person(f"u{n:02d}", f"U{n}")
    with pytest.raises(PermanentTargetError, match="does not add up"):
        await make_target(page_size=10).observe()
    assert sim.log.count("GET", USERS) == 2 * 3  # read twice before giving up


@pytest.mark.parametrize(
    ("sim", "configured", "hint"),
    [(7, 6, "api_version: 7"), (6, 7, "api_version: 6")],
    indirect=["sim"],
)
async def test_a_wrong_api_version_says_which_to_set(
    make_target: MakeTarget, configured: int, hint: str
) -> None:
    with pytest.raises(PermanentTargetError, match=hint):
        await make_target(api_version=configured).observe()


async def test_an_unreachable_cms_is_a_temporary_error() -> None:
    settings = siteserver.Settings(url="http://127.0.0.1:9", api_key="k")
    target = SiteServer("gone", settings, backoff=dataclasses.replace(FAST, attempts=2))
    try:
        with pytest.raises(TemporaryTargetError, match="target gone"):
            await target.observe()
    finally:
        await target.aclose()


def test_settings_take_the_version_from_an_environment_string() -> None:
    settings = siteserver.Settings(
        url="http://cms", api_key="key-zq81", initial_password="pw-zq82", api_version="7"
    )
    assert settings.api_version == 7
    assert "zq8" not in repr(settings)
