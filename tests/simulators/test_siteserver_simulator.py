"""The SiteServer simulator (6.x and 7.x) over real loopback HTTP: auth, users, quirks, faults.

Every test serves the simulator on 127.0.0.1 and talks to it with an aiohttp ClientSession.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from typing import Any, Literal

import aiohttp
import orjson
import pytest

from reconciler.daemon.server import Listening
from reconciler.simulators.base import Faults, serve
from reconciler.simulators.siteserver import SiteServerSimulator

KEY = "sim-key"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(32)
PNG = b"\x89PNG\r\n\x1a\n" + bytes(32)
TIMEOUT = aiohttp.ClientTimeout(total=10)
DATE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")

Reply = tuple[int, Any]

both = pytest.mark.parametrize("sim", [6, 7], indirect=True, ids=["v6", "v7"])
v6 = pytest.mark.parametrize("sim", [6], indirect=True, ids=["v6"])
v7 = pytest.mark.parametrize("sim", [7], indirect=True, ids=["v7"])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sim(request: pytest.FixtureRequest, clock: Clock) -> SiteServerSimulator:
    version: Literal[6, 7] = getattr(request, "param", 6)
    return SiteServerSimulator(api_version=version, api_key=KEY, clock=clock, faults=Faults(seed=3))


@pytest.fixture
async def served(sim: SiteServerSimulator) -> AsyncIterator[Listening]:
    async with await serve(sim) as server:
        yield server


@pytest.fixture
async def client(served: Listening) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        yield Client(http, served.url)


class Client:
    """A thin caller: (HTTP status, decoded JSON or None) with the API key unless told not to."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.key: str | None = KEY

    async def call(
        self, method: str, path: str, payload: object = None, *, data: Any = None
    ) -> Reply:
        headers = {"X-SS-API-KEY": self.key} if self.key else {}
        body = orjson.dumps(payload) if payload is not None else data
        async with self.http.request(
            method, self.url + path, data=body, headers=headers
        ) as response:
            raw = await response.read()
            try:
                return response.status, orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                return response.status, raw.decode()

    async def create(self, sim: SiteServerSimulator, **user: Any) -> Reply:
        user.setdefault("password", "abc12345")
        body = user if sim.api_version == 6 else {"user": user, "groupNames": []}
        return await self.call("POST", "/api/v1/users", body)

    async def update(self, sim: SiteServerSimulator, user_id: int, body: object) -> Reply:
        if sim.api_version == 6:
            return await self.call("PUT", f"/api/v1/users/{user_id}", body)
        return await self.call("POST", f"/api/v1/users/{user_id}/actions/update", body)

    async def delete(self, sim: SiteServerSimulator, user_id: int) -> Reply:
        if sim.api_version == 6:
            return await self.call("DELETE", f"/api/v1/users/{user_id}")
        return await self.call("POST", f"/api/v1/users/{user_id}/actions/delete")

    async def upload(
        self, user_id: int, filename: str, content: bytes, field: str = "file"
    ) -> Reply:
        form = aiohttp.FormData()
        form.add_field(field, content, filename=filename, content_type="image/jpeg")
        return await self.call("POST", f"/api/v1/users/{user_id}/avatar", data=form)


def user_of(sim: SiteServerSimulator, body: Any) -> dict[str, Any]:
    user = body["value"] if sim.api_version == 6 else body
    assert isinstance(user, dict)
    return user


# -- ping, auth ------------------------------------------------------------------------------


@pytest.mark.parametrize(("sim", "path"), [(6, "/api/v1/ping"), (7, "/api/ping")], indirect=["sim"])
async def test_ping_answers_pong_without_auth_or_faults(
    client: Client, sim: SiteServerSimulator, path: str
) -> None:
    sim.faults.fail_next = [503]
    client.key = None
    assert await client.call("GET", path) == (200, "pong")
    assert sim.faults.fail_next == [503]


@v6
async def test_v6_refuses_a_bad_key_with_an_empty_401(client: Client) -> None:
    client.key = "nope"
    assert await client.call("GET", "/api/v1/users") == (401, None)


@v7
async def test_v7_refuses_a_bad_key_with_a_problem(
    client: Client, sim: SiteServerSimulator
) -> None:
    client.key = "nope"
    status, body = await client.call("GET", "/api/v1/users")
    assert (status, body["status"], body["title"]) == (401, 401, "Unauthorized")


@both
async def test_the_key_needs_the_users_scope(client: Client, sim: SiteServerSimulator) -> None:
    sim.scopes = {"Channels"}
    status, _ = await client.call("GET", "/api/v1/users")
    assert status == 401


@v7
async def test_v7_needs_the_admins_permission_except_for_get_by_account(
    client: Client, sim: SiteServerSimulator
) -> None:
    sim.add_user("alice")
    sim.admin_permission = False
    assert (await client.call("GET", "/api/v1/users"))[0] == 401
    assert (await client.call("GET", "/api/v1/users/alice"))[0] == 200


@both
async def test_the_key_may_come_in_the_query(served: Listening, sim: SiteServerSimulator) -> None:
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as http,
        http.get(f"{served.url}/api/v1/users?apiKey={KEY}") as response,
    ):
        assert response.status == 200


@v6
async def test_v6_create_needs_no_key_but_v6_reads_do(
    client: Client, sim: SiteServerSimulator
) -> None:
    client.key = None
    status, body = await client.create(sim, userName="self")
    assert status == 200
    assert (await client.call("GET", f"/api/v1/users/{body['value']['id']}"))[0] == 401


@v7
async def test_v7_create_needs_the_key(client: Client, sim: SiteServerSimulator) -> None:
    client.key = None
    assert (await client.create(sim, userName="self"))[0] == 401
    assert sim.users == {}


# -- listing ---------------------------------------------------------------------------------


@v6
async def test_v6_listing_pages_by_top_and_skip_with_the_vendors_links(
    client: Client, sim: SiteServerSimulator
) -> None:
    for n in range(250):
        sim.add_user(f"u{n:03d}")
    status, body = await client.call("GET", "/api/v1/users?top=100&skip=0")
    assert status == 200
    assert body["count"] == 250
    assert [u["id"] for u in body["value"]] == list(range(1, 101))
    assert "first" not in body
    assert "prev" not in body
    assert body["next"].endswith("?top=100&skip=100")
    # The vendor's integer division: `last` points one page short of the real last page.
    assert body["last"].endswith("?top=100&skip=100")
    status, body = await client.call("GET", "/api/v1/users?top=100&skip=200")
    assert [u["id"] for u in body["value"]] == list(range(201, 251))
    assert "next" not in body
    assert "last" not in body
    assert body["prev"].endswith("?top=100&skip=100")
    # A skip that is not a multiple of top gets wrong links.
    _, body = await client.call("GET", "/api/v1/users?top=100&skip=50")
    assert body["next"].endswith("?top=100&skip=100")


@v6
async def test_v6_listing_defaults_and_breakage(client: Client, sim: SiteServerSimulator) -> None:
    for n in range(30):
        sim.add_user(f"u{n:02d}")
    _, body = await client.call("GET", "/api/v1/users?top=abc")
    assert len(body["value"]) == 20  # GetQueryInt falls back to the default
    assert await client.call("GET", "/api/v1/users?top=0") == (
        500,
        {"message": "An error has occurred."},
    )


@v7
@pytest.mark.parametrize(
    ("paging", "query", "ids"),
    [
        ("page", "page=2&perPage=10", list(range(11, 21))),
        ("page", "", list(range(1, 21))),
        ("skip", "top=10&skip=5", list(range(6, 16))),
        ("broken", "page=3&perPage=10", [7, 8, 9]),
    ],
)
async def test_v7_listing(
    client: Client, sim: SiteServerSimulator, paging: Any, query: str, ids: list[int]
) -> None:
    sim.v7_paging = paging
    for n in range(30):
        sim.add_user(f"u{n:02d}")
    status, body = await client.call("GET", f"/api/v1/users?{query}")
    assert status == 200
    assert set(body) == {"count", "users"}
    assert body["count"] == 30
    assert [u["id"] for u in body["users"]] == ids


@v7
async def test_v7_get_by_account_detects_mobile_email_id_and_user_name(
    client: Client, sim: SiteServerSimulator
) -> None:
    first = sim.add_user("alice", email="a@example.com", mobile="13800000000")
    sim.add_user("bob")
    for account in ("alice", "a@example.com", "13800000000", str(first)):
        status, body = await client.call("GET", f"/api/v1/users/{account}")
        assert (status, body["userName"]) == (200, "alice"), account
    assert await client.call("GET", "/api/v1/users/nobody") == (204, None)
    assert await client.call("GET", "/api/v1/users/99") == (204, None)


@v6
async def test_v6_get_by_id_and_404(client: Client, sim: SiteServerSimulator) -> None:
    user_id = sim.add_user("alice")
    status, body = await client.call("GET", f"/api/v1/users/{user_id}")
    assert (status, body["value"]["userName"]) == (200, "alice")
    assert await client.call("GET", "/api/v1/users/99") == (404, None)
    assert await client.call("GET", "/api/v1/users/alice") == (404, None)  # {id:int}


# -- create ----------------------------------------------------------------------------------


@both
async def test_create_answers_the_user_in_camel_case_without_any_password(
    client: Client, sim: SiteServerSimulator
) -> None:
    status, body = await client.create(sim, userName="alice", displayName="Alice", email="a@x.cn")
    assert status == 200
    user = user_of(sim, body)
    assert (user["id"], user["userName"], user["displayName"], user["email"]) == (
        1,
        "alice",
        "Alice",
        "a@x.cn",
    )
    assert not {"password", "passwordSalt", "passwordFormat"} & user.keys()
    date_key = "createDate" if sim.api_version == 6 else "createdDate"
    assert DATE.match(user[date_key])
    assert user["isChecked" if sim.api_version == 6 else "checked"] is True
    assert sim.passwords[1] == "abc12345"
    # The recorded bodies never keep a password either.
    assert "abc12345" not in str(sim.bodies)


@both
async def test_ids_ascend_and_are_never_reused(client: Client, sim: SiteServerSimulator) -> None:
    ids = [user_of(sim, (await client.create(sim, userName=f"u{n}"))[1])["id"] for n in range(3)]
    assert ids == [1, 2, 3]
    await client.delete(sim, 3)
    assert user_of(sim, (await client.create(sim, userName="u9"))[1])["id"] == 4


@both
@pytest.mark.parametrize(
    ("user", "message"),
    [
        ({"userName": "a b"}, "用户名包含不规则字符，请更换用户名"),
        ({"userName": "a\u3000b"}, "用户名包含不规则字符，请更换用户名"),
        ({"userName": "a'b"}, "用户名包含不规则字符，请更换用户名"),
        ({"userName": "a:b"}, "用户名包含不规则字符，请更换用户名"),
        ({"userName": ""}, "用户名为空，请填写用户名"),
        ({"userName": "taken"}, "用户名已被注册，请更换用户名"),
        ({"userName": "x", "email": "t@example.com"}, "电子邮件地址已被注册，请更换邮箱"),
        ({"userName": "x", "email": "taken"}, "电子邮件地址已被注册，请更换邮箱"),
        ({"userName": "x", "mobile": "13900000000"}, "手机号码已被注册，请更换手机号码"),
        ({"userName": "x", "password": ""}, "密码不能为空"),
        ({"userName": "x", "password": "a1"}, "密码长度必须大于等于6"),
        ({"userName": "x", "password": "abcdefgh"}, "密码不符合规则，请包含字母和数字组合"),
    ],
)
async def test_create_validation(
    client: Client, sim: SiteServerSimulator, user: dict[str, Any], message: str
) -> None:
    sim.add_user("taken", email="t@example.com", mobile="13900000000")
    status, body = await client.create(sim, **user)
    assert (status, body) == (400, {"message": message})
    assert len(sim.users) == 1


@both
async def test_dots_and_at_signs_are_fine_in_a_user_name(
    client: Client, sim: SiteServerSimulator
) -> None:
    assert (await client.create(sim, userName="first.last@corp"))[0] == 200


@both
async def test_a_mobile_like_user_name_becomes_the_mobile(
    client: Client, sim: SiteServerSimulator
) -> None:
    _, body = await client.create(sim, userName="13812345678")
    assert user_of(sim, body)["mobile"] == "13812345678"
    _, body = await client.create(sim, userName="13812345679", mobile="13700000000")
    assert user_of(sim, body)["mobile"] == "13700000000"


@both
async def test_the_registration_rate_limit_per_ip(
    client: Client, sim: SiteServerSimulator, clock: Clock
) -> None:
    sim.registration_min_minutes = 5
    assert (await client.create(sim, userName="a"))[0] == 200
    assert await client.create(sim, userName="b") == (
        400,
        {"message": "同一IP在5分钟内只能注册一次"},
    )
    clock.now += 5 * 60
    assert (await client.create(sim, userName="b"))[0] == 200


@both
async def test_registration_can_be_disabled(client: Client, sim: SiteServerSimulator) -> None:
    sim.registration_allowed = False
    assert await client.create(sim, userName="a") == (
        400,
        {"message": "对不起，系统已禁止新用户注册！"},
    )


@both
async def test_a_stricter_password_rule(client: Client, sim: SiteServerSimulator) -> None:
    sim.password_restriction = "LetterAndDigitAndSymbol"
    sim.password_min_length = 10
    status, body = await client.create(sim, userName="a", password="abcde12345")
    assert (status, body["message"]) == (400, "密码不符合规则，请包含字母、数字以及符号组合")
    assert (await client.create(sim, userName="a", password="abcde1234!"))[0] == 200


@v7
async def test_v7_create_takes_group_names_and_ignores_unknown_ones(
    client: Client, sim: SiteServerSimulator
) -> None:
    sim.groups = {"staff"}
    status, _ = await client.call(
        "POST",
        "/api/v1/users",
        {"user": {"userName": "a", "password": "abc12345"}, "groupNames": ["staff", "nope"]},
    )
    assert status == 200
    assert sim.memberships == {1: ["staff"]}


@v7
async def test_v7_create_needs_the_user_wrapper(client: Client, sim: SiteServerSimulator) -> None:
    status, body = await client.call("POST", "/api/v1/users", {"userName": "a", "password": "x1"})
    assert (status, body["status"]) == (400, 400)


# -- update ----------------------------------------------------------------------------------


@v6
async def test_v6_put_is_a_partial_merge(client: Client, sim: SiteServerSimulator) -> None:
    user_id = sim.add_user("alice", displayName="Alice", email="a@example.com", bio="hi")
    status, body = await client.update(sim, user_id, {"displayName": "Alice L."})
    assert status == 200
    assert body["value"]["displayName"] == "Alice L."
    assert (sim.users[user_id]["email"], sim.users[user_id]["bio"]) == ("a@example.com", "hi")
    assert sim.passwords[user_id] == "Seed-1234"  # PUT never writes a password


@v6
async def test_v6_put_with_an_id_overwrites_that_other_row(
    client: Client, sim: SiteServerSimulator
) -> None:
    first = sim.add_user("first", displayName="First")
    second = sim.add_user("second", displayName="Second")
    status, _ = await client.update(sim, first, {"id": second, "displayName": "Changed"})
    assert status == 200
    assert sim.users[first]["displayName"] == "First"
    assert (sim.users[second]["userName"], sim.users[second]["displayName"]) == (
        "first",
        "Changed",
    )


@v6
async def test_v6_put_checks_uniqueness_only_for_camel_case_keys(
    client: Client, sim: SiteServerSimulator
) -> None:
    sim.add_user("taken", email="t@example.com")
    user_id = sim.add_user("alice")
    assert await client.update(sim, user_id, {"email": "t@example.com"}) == (
        400,
        {"message": "电子邮件地址已被注册，请更换邮箱"},
    )
    # Load() is case-insensitive but the validation is not: the vendor's own hole.
    assert (await client.update(sim, user_id, {"Email": "t@example.com"}))[0] == 200
    assert sim.users[user_id]["email"] == "t@example.com"


@v6
async def test_v6_put_errors(client: Client, sim: SiteServerSimulator) -> None:
    user_id = sim.add_user("alice")
    assert await client.update(sim, 99, {"displayName": "x"}) == (404, None)
    assert await client.call("PUT", f"/api/v1/users/{user_id}", data=b"nope") == (
        400,
        {"message": "Could not read user from body"},
    )
    assert (await client.update(sim, user_id, {"userName": "a b"}))[0] == 400


@v7
async def test_v7_update_replaces_the_row_and_keeps_the_user_name(
    client: Client, sim: SiteServerSimulator
) -> None:
    user_id = sim.add_user(
        "alice", displayName="Alice", email="a@example.com", checked=True, openId="wx"
    )
    status, body = await client.update(
        sim, user_id, {"id": 77, "userName": "mallory", "displayName": "A.", "password": "x"}
    )
    assert status == 200
    stored = sim.users[user_id]
    assert body == stored
    assert (stored["id"], stored["userName"], stored["displayName"]) == (user_id, "alice", "A.")
    # Omitted keys went back to their defaults, as on the real server.
    assert (stored["email"], stored["checked"], stored["openId"]) == ("", False, "")
    assert sim.passwords[user_id] == "Seed-1234"


@v7
async def test_v7_update_and_delete_of_a_missing_id_are_500s(
    client: Client, sim: SiteServerSimulator
) -> None:
    status, body = await client.update(sim, 99, {"displayName": "x"})
    assert (status, body["message"]) == (
        500,
        "Object reference not set to an instance of an object.",
    )
    assert DATE.match(body["createdDate"])
    assert (await client.delete(sim, 99))[0] == 500


@v7
async def test_v7_update_keeps_email_and_mobile_unique(
    client: Client, sim: SiteServerSimulator
) -> None:
    sim.add_user("taken", mobile="13900000000")
    user_id = sim.add_user("alice")
    assert await client.update(sim, user_id, {"mobile": "13900000000"}) == (
        400,
        {"message": "手机号码已被注册，请更换手机号码"},
    )


# -- delete ----------------------------------------------------------------------------------


@both
async def test_delete_answers_the_deleted_user(client: Client, sim: SiteServerSimulator) -> None:
    user_id = sim.add_user("alice")
    status, body = await client.delete(sim, user_id)
    assert (status, user_of(sim, body)["userName"]) == (200, "alice")
    assert sim.users == {}


@v6
async def test_v6_delete_of_a_missing_id_is_an_empty_404(client: Client) -> None:
    assert await client.call("DELETE", "/api/v1/users/5") == (404, None)


# -- avatars ---------------------------------------------------------------------------------


@both
async def test_an_avatar_upload_is_stored_and_served(
    client: Client, sim: SiteServerSimulator, served: Listening
) -> None:
    user_id = sim.add_user("alice")
    status, body = await client.call("GET", f"/api/v1/users/{user_id}/avatar")
    assert (status, body["value"]) == (
        200,
        served.url + "/sitefiles/assets/images/default_avatar.png",
    )
    status, body = await client.upload(user_id, "me.jpg", JPEG)
    assert status == 200
    url = user_of(sim, body)["avatarUrl"]
    assert url.endswith(".jpg")
    assert sim.photo_of("alice") == JPEG
    _, body = await client.call("GET", f"/api/v1/users/{user_id}/avatar")
    assert body["value"] == served.url + url
    async with client.http.get(served.url + url) as response:
        assert await response.read() == JPEG


@both
@pytest.mark.parametrize(
    ("filename", "content"), [("me.exe", JPEG), ("me.png", b"MZ not an image")]
)
async def test_an_avatar_must_be_an_image(
    client: Client, sim: SiteServerSimulator, filename: str, content: bytes
) -> None:
    user_id = sim.add_user("alice")
    status, body = await client.upload(user_id, filename, content)
    assert status == 400
    assert body["message"] in ("image file extension is not correct", "此图片格式已被禁止上传!")
    assert sim.photo_of("alice") is None


@v7
async def test_v7_avatar_needs_the_file_field_and_a_known_user(
    client: Client, sim: SiteServerSimulator
) -> None:
    user_id = sim.add_user("alice")
    assert await client.upload(user_id, "me.png", PNG, field="other") == (
        400,
        {"message": "请选择有效的文件上传!"},
    )
    assert await client.upload(99, "me.png", PNG) == (400, {"message": "未找到该数据!"})


@v6
async def test_v6_avatar_takes_any_file_field_and_404s_an_unknown_user(
    client: Client, sim: SiteServerSimulator
) -> None:
    user_id = sim.add_user("alice")
    assert (await client.upload(user_id, "me.png", PNG, field="whatever"))[0] == 200
    assert sim.photo_of("alice") == PNG
    assert await client.upload(99, "me.png", PNG) == (404, None)


# -- login, inspection, faults ---------------------------------------------------------------


@both
async def test_login_takes_the_md5_of_the_password(
    client: Client, sim: SiteServerSimulator
) -> None:
    await client.create(sim, userName="alice", password="abc12345")
    digest = hashlib.md5(b"abc12345", usedforsecurity=False).hexdigest()
    status, body = await client.call(
        "POST", "/api/v1/users/actions/login", {"account": "alice", "password": digest}
    )
    assert status == 200
    assert isinstance(body["accessToken"], str)
    wrong = await client.call(
        "POST", "/api/v1/users/actions/login", {"account": "alice", "password": "abc12345"}
    )
    assert wrong == (400, {"message": "帐号或密码错误"})


@both
async def test_the_uniform_inspection_api(sim: SiteServerSimulator) -> None:
    sim.add_person("p1", "张三")
    assert sim.person_names() == {"p1": "张三"}
    assert sim.photo_of("p1") is None
    assert sim.photo_of("nobody") is None


@both
async def test_faults_answer_in_the_vendors_error_shape(
    client: Client, sim: SiteServerSimulator
) -> None:
    sim.faults.fail_next = [503]
    status, body = await client.call("GET", "/api/v1/users")
    assert (status, body) == (503, {"message": "Service Unavailable"})
    assert sim.log.entries[-1].status == 503


@both
async def test_writes_are_counted_with_their_route_templates(
    client: Client, sim: SiteServerSimulator
) -> None:
    _status, body = await client.create(sim, userName="alice")
    user_id = user_of(sim, body)["id"]
    await client.upload(user_id, "me.png", PNG)
    await client.update(sim, user_id, {"displayName": "A"})
    await client.delete(sim, user_id)
    await client.call("GET", "/api/v1/users")
    assert sim.log.writes() == 4
    assert sim.log.count("POST", "/api/v1/users/{id}/avatar") == 1
    assert [e.items for e in sim.log.entries if e.write] == [1, 1, 1, 1]
