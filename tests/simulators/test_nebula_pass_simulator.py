"""The SenseNebula Pass simulator over real loopback HTTP: auth, users, batches, faults, log, TLS.

Every test serves the simulator on 127.0.0.1 and talks to it with an aiohttp ClientSession.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import trustme

from reconciler.daemon.server import Listening
from reconciler.simulators.base import Faults, serve
from reconciler.simulators.nebula_pass import NebulaPassSimulator

JPEG = base64.b64encode(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(32)).decode()
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(32)).decode()
GIF = base64.b64encode(b"GIF89a" + bytes(32)).decode()
#: The avatar of the vendor's own batch example: a JPEG header without base64 padding.
VENDOR_EXAMPLE_AVATAR = "/9j/4AAQSkZJRgABAQAAAQABAA"

LIST = "/v1/user/offset/{offset}/limit/{limit}"
BATCH = "/v2/user"
TIMEOUT = aiohttp.ClientTimeout(total=10)
USERNAME, PASSWORD = "admin", "admin123"

Reply = tuple[int, dict[str, Any]]


@pytest.fixture
def sim() -> NebulaPassSimulator:
    return NebulaPassSimulator(faults=Faults(seed=7))


@pytest.fixture
async def served(sim: NebulaPassSimulator) -> AsyncIterator[Listening]:
    async with await serve(sim) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        yield session


@pytest.fixture
async def client(
    served: Listening, http: aiohttp.ClientSession, sim: NebulaPassSimulator
) -> Client:
    client = Client(http, served.url)
    await client.login()
    sim.log.clear()
    return client


class Client:
    """A thin caller that returns (HTTP status, decoded envelope)."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.headers: dict[str, str] = {}

    async def login(self, password: str = PASSWORD, **extra: object) -> Reply:
        status, body = await self.call(
            "POST", "/v1/auth/login", {"username": USERNAME, "password": password, **extra}
        )
        if body["code"] == 200:
            self.headers = {"Authorization": f"Bearer {body['data']['token']}"}
        return status, body

    async def call(self, method: str, path: str, payload: object = None) -> Reply:
        data = None if payload is None else orjson.dumps(payload)
        async with self.http.request(
            method, self.url + path, data=data, headers=self.headers
        ) as response:
            return response.status, orjson.loads(await response.read())

    async def batch(self, *users: object) -> list[dict[str, Any]]:
        status, body = await self.call("POST", BATCH, {"user_list": list(users)})
        assert (status, body["code"], body["msg"]) == (200, 200, "OK")
        errors: list[dict[str, Any]] = body["data"]["errors"]
        return errors


def stored(sim: NebulaPassSimulator, user_id: str, create_at: int) -> None:
    sim.add_user(user_id, name=f"name {user_id}", create_at=create_at, update_at=create_at)


async def test_ping_needs_no_auth_and_no_fault_touches_it(
    served: Listening, http: aiohttp.ClientSession, sim: NebulaPassSimulator
) -> None:
    sim.faults.fail_next = [503]
    status, body = await Client(http, served.url).call("GET", "/v2/datasync/ping")
    assert (status, body) == (200, {"code": 200, "msg": "OK", "data": None})
    assert sim.faults.fail_next == [503]


async def test_login_issues_a_bearer_token(served: Listening, http: aiohttp.ClientSession) -> None:
    client = Client(http, served.url)
    status, body = await client.login(validTime=1440)
    assert (status, body["code"], body["msg"]) == (200, 200, "OK")
    assert isinstance(body["data"]["token"], str)
    status, body = await client.call("GET", "/v2/datasync/info")
    assert (status, body["code"]) == (200, 200)


async def test_wrong_credentials_answer_http_200_with_an_error_code(
    served: Listening, http: aiohttp.ClientSession
) -> None:
    client = Client(http, served.url)
    assert await client.login(password="nope") == (
        200,
        {"code": 1001, "msg": "Password Wrong", "data": None},
    )
    status, body = await client.call(
        "POST", "/v1/auth/login", {"username": "root", "password": "admin123"}
    )
    assert (status, body["code"], body["msg"]) == (200, 1000, "Account Not Exist")


@pytest.mark.parametrize("valid_time", [0, 1441, "5", True])
async def test_login_refuses_a_valid_time_out_of_range(
    served: Listening, http: aiohttp.ClientSession, valid_time: object
) -> None:
    status, body = await Client(http, served.url).login(validTime=valid_time)
    assert (status, body["code"]) == (400, 400)


@pytest.mark.parametrize("authorization", [None, "Bearer forged", "Basic !!!", "Token x"])
async def test_requests_without_a_valid_token_get_401_in_status_and_body(
    served: Listening, http: aiohttp.ClientSession, authorization: str | None
) -> None:
    client = Client(http, served.url)
    if authorization is not None:
        client.headers = {"Authorization": authorization}
    assert await client.call("GET", "/v2/datasync/info") == (
        401,
        {"code": 401, "msg": "Unauthorized", "data": None},
    )


async def test_a_token_expires_after_token_ttl(http: aiohttp.ClientSession) -> None:
    async with await serve(NebulaPassSimulator(token_ttl=0.2)) as server:
        client = Client(http, server.url)
        await client.login()
        assert (await client.call("GET", "/v2/datasync/info"))[0] == 200
        await asyncio.sleep(0.3)
        assert (await client.call("GET", "/v2/datasync/info"))[0] == 401
        await client.login()
        assert (await client.call("GET", "/v2/datasync/info"))[0] == 200


async def test_basic_auth_with_the_device_credentials_is_accepted(
    served: Listening, http: aiohttp.ClientSession
) -> None:
    client = Client(http, served.url)
    client.headers = {"Authorization": aiohttp.encode_basic_auth(USERNAME, PASSWORD)}
    assert (await client.call("GET", "/v2/datasync/info"))[0] == 200
    client.headers = {"Authorization": aiohttp.encode_basic_auth(USERNAME, "wrong")}
    assert (await client.call("GET", "/v2/datasync/info"))[0] == 401


async def test_every_response_carries_the_device_headers(
    served: Listening, http: aiohttp.ClientSession
) -> None:
    async with http.get(served.url + "/v2/datasync/ping") as response:
        assert {"model", "sn", "timestamp", "account"} <= set(response.headers)
        assert response.headers["account"] == "admin"
        assert response.headers["timestamp"].isdigit()


async def test_paging_over_250_users_is_complete_and_stable(
    client: Client, sim: NebulaPassSimulator
) -> None:
    # create_at repeats every 50 users, so the order depends on the user_id tie-break too.
    for n in range(250):
        stored(sim, f"u{n:03d}", create_at=1_000 + (n * 7) % 50)
    expected = sorted(sim.users, key=lambda user_id: (sim.users[user_id]["create_at"], user_id))

    pages = []
    for offset in (0, 100, 200, 300):
        status, body = await client.call("GET", f"/v1/user/offset/{offset}/limit/100")
        assert (status, body["code"]) == (200, 200)
        pages.append(body["data"])
    assert [page["count"] for page in pages] == [100, 100, 50, 0]
    assert {page["total"] for page in pages} == {250}
    assert [(page["offset"], page["limit"]) for page in pages[:2]] == [(0, 100), (100, 100)]
    listed = [item["user_id"] for page in pages for item in page["items"]]
    assert listed == expected
    assert "avatar" in pages[0]["items"][0]

    status, again = await client.call("GET", "/v1/user/offset/100/limit/100")
    assert [item["user_id"] for item in again["data"]["items"]] == expected[100:200]


@pytest.mark.parametrize(
    ("offset", "limit"), [(0, 101), (100_001, 10), ("x", 10), (0, "-1"), (0, "1e2")]
)
async def test_paging_out_of_range_is_refused(
    client: Client, offset: object, limit: object
) -> None:
    status, body = await client.call("GET", f"/v1/user/offset/{offset}/limit/{limit}")
    assert (status, body["code"], body["data"]) == (400, 400, None)
    assert body["msg"]


async def test_limit_zero_gives_an_empty_page_with_the_total(
    client: Client, sim: NebulaPassSimulator
) -> None:
    stored(sim, "a", 1)
    status, body = await client.call("GET", "/v1/user/offset/0/limit/0")
    assert status == 200
    assert body["data"] == {"offset": 0, "limit": 0, "count": 0, "total": 1, "items": []}


async def test_datasync_info_lists_ids_update_at_and_groups(
    client: Client, sim: NebulaPassSimulator
) -> None:
    assert await client.batch({"user_id": "3", "name": "张三", "groups": ["1", "2"]}) == []
    status, body = await client.call("GET", "/v2/datasync/info")
    assert status == 200
    assert body["data"] == {
        "users": [{"id": "3", "update_at": sim.users["3"]["update_at"], "groups": ["1", "2"]}],
        "groups": [],
        "rules": [],
    }


async def test_the_feed_knob_breaks_datasync_info_as_asked(
    client: Client, sim: NebulaPassSimulator
) -> None:
    assert await client.batch({"user_id": "3", "name": "张三"}) == []
    sim.feed = "no_update_at"
    _, body = await client.call("GET", "/v2/datasync/info")
    assert body["data"]["users"] == [{"id": "3", "groups": []}]
    sim.feed = "repeated_ids"
    _, body = await client.call("GET", "/v2/datasync/info")
    assert [u["id"] for u in body["data"]["users"]] == ["3", "3"]


async def test_an_edit_at_the_device_moves_update_at_and_keeps_the_rest(
    client: Client, sim: NebulaPassSimulator
) -> None:
    assert await client.batch({"user_id": "3", "name": "张三", "remark": "a"}) == []
    before = dict(sim.users["3"])
    sim.edit_user("3", remark="b")
    after = sim.users["3"]
    assert after["update_at"] > before["update_at"]
    assert after == before | {"remark": "b", "update_at": after["update_at"]}


async def test_a_mixed_batch_applies_the_valid_items_and_reports_the_others(
    client: Client, sim: NebulaPassSimulator
) -> None:
    errors = await client.batch(
        {"user_id": "3", "name": "张三", "type": 1, "avatar": VENDOR_EXAMPLE_AVATAR},
        {"name": "no id"},
        {"user_id": 7, "name": "int id"},
        {"user_id": "new", "type": 2},
        {"user_id": "old-blacklist", "name": "x", "type": 3},
        {"user_id": "gif", "name": "x", "avatar": GIF},
        {"user_id": "garbage", "name": "x", "avatar": "not base64!"},
        {"user_id": "remark", "name": "x", "remark": "r" * 257},
        {"user_id": "x" * 129, "name": "long id"},
        {"user_id": "cjk", "name": "名" * 43},
        {"user_id": "groups", "name": "x", "groups": ["g"] * 101},
        {"user_id": "admin", "name": "x", "is_admin": "yes"},
        {"user_id": "guest", "name": "x", "guest_time_start": -1},
        "not an object",
        {"user_id": "4", "name": "李四", "type": 5, "avatar": PNG, "create_at": 1, "update_at": 2},
    )
    assert set(sim.users) == {"3", "4"}
    assert sim.users["4"]["type"] == 5
    assert sim.users["4"]["create_at"] > 2
    assert sim.users["3"]["avatar"] == VENDOR_EXAMPLE_AVATAR

    assert all(set(error) == {"user_id", "code", "msg"} for error in errors)
    assert all(error["code"] == 400 and error["msg"] for error in errors)
    assert [error["user_id"] for error in errors] == [
        None,
        None,
        "new",
        "old-blacklist",
        "gif",
        "garbage",
        "remark",
        "x" * 129,
        "cjk",
        "groups",
        "admin",
        "guest",
        None,
    ]
    by_id = {error["user_id"]: error["msg"] for error in errors}
    assert "name" in by_id["new"]
    assert "5" in by_id["old-blacklist"]
    assert sim.log.entries[-1].items == 15


async def test_type_cannot_change_after_creation(client: Client, sim: NebulaPassSimulator) -> None:
    assert await client.batch({"user_id": "v", "name": "Visitor", "type": 2}) == []
    errors = await client.batch({"user_id": "v", "name": "Renamed", "type": 1})
    assert errors == [{"user_id": "v", "code": 409, "msg": "type cannot be changed"}]
    assert (sim.users["v"]["type"], sim.users["v"]["name"]) == (2, "Visitor")
    assert await client.batch({"user_id": "v", "name": "Renamed", "type": 2}) == []
    assert sim.users["v"]["name"] == "Renamed"

    status, body = await client.call("PUT", "/v1/user/id/v", {"name": "Again", "type": 5})
    assert (status, body["code"], body["msg"]) == (409, 409, "type cannot be changed")


async def test_an_update_keeps_every_key_the_item_omits(
    client: Client, sim: NebulaPassSimulator
) -> None:
    full = {
        "user_id": "p",
        "name": "Person",
        "avatar": JPEG,
        "feature": "EqQAAAAA",
        "ic_number": "1234",
        "job_number": "2338",
        "groups": ["1"],
        "is_admin": True,
        "guest_time_start": 1_700_000_000_000,
    }
    assert await client.batch(full) == []
    before = dict(sim.users["p"])
    assert await client.batch({"user_id": "p", "remark": "moved desk"}) == []
    after = sim.users["p"]
    assert after["remark"] == "moved desk"
    assert {key: after[key] for key in full} == full
    assert after["create_at"] == before["create_at"]
    assert after["update_at"] > before["update_at"]


async def test_avatar_and_feature_both_empty_clear_the_face(
    client: Client, sim: NebulaPassSimulator
) -> None:
    assert (
        await client.batch({"user_id": "f", "name": "Face", "avatar": JPEG, "feature": "F"}) == []
    )
    assert await client.batch({"user_id": "f", "name": "Renamed"}) == []
    assert (sim.users["f"]["avatar"], sim.users["f"]["feature"]) == (JPEG, "F")
    assert await client.batch({"user_id": "f", "avatar": "", "feature": None}) == []
    assert (sim.users["f"]["avatar"], sim.users["f"]["feature"]) == ("", "")


async def test_a_batch_that_is_not_a_user_list_is_refused_whole(
    client: Client, sim: NebulaPassSimulator
) -> None:
    for payload in ({}, {"user_list": {"user_id": "1"}}, ["user_list"]):
        status, body = await client.call("POST", BATCH, payload)
        assert (status, body["code"], body["data"]) == (400, 400, None)
    async with client.http.post(
        client.url + BATCH, data=b"{not json", headers=client.headers
    ) as response:
        assert response.status == 400
        assert orjson.loads(await response.read())["code"] == 400
    assert sim.users == {}


async def test_creates_stop_at_max_users_but_updates_go_on(http: aiohttp.ClientSession) -> None:
    sim = NebulaPassSimulator(max_users=2)
    async with await serve(sim) as server:
        client = Client(http, server.url)
        await client.login()
        errors = await client.batch(
            {"user_id": "a", "name": "A"},
            {"user_id": "b", "name": "B"},
            {"user_id": "c", "name": "C"},
            {"user_id": "a", "name": "A2"},
        )
        assert errors == [{"user_id": "c", "code": 507, "msg": "user capacity reached"}]
        assert {user_id: user["name"] for user_id, user in sim.users.items()} == {
            "a": "A2",
            "b": "B",
        }


async def test_a_batch_delete_reports_the_ids_it_did_not_find(
    client: Client, sim: NebulaPassSimulator
) -> None:
    stored(sim, "a", 1)
    stored(sim, "b", 2)
    status, body = await client.call("DELETE", BATCH, {"ids": ["a", "missing", 5]})
    assert (status, body["code"]) == (200, 200)
    assert body["data"]["errors"] == [
        {"user_id": "missing", "code": 404, "msg": "user not found"},
        {"user_id": None, "code": 400, "msg": "id must be a string"},
    ]
    assert set(sim.users) == {"b"}
    assert sim.log.entries[-1].items == 3

    status, body = await client.call("DELETE", BATCH, {"ids": "b"})
    assert (status, body["code"]) == (400, 400)
    assert set(sim.users) == {"b"}


async def test_the_single_user_endpoints(client: Client, sim: NebulaPassSimulator) -> None:
    status, body = await client.call("POST", "/v1/user", {"user_id": "s", "name": "Single"})
    assert (status, body["code"], body["data"]["name"]) == (200, 200, "Single")
    assert (await client.call("GET", "/v1/user/id/s"))[1]["data"] == sim.users["s"]

    status, body = await client.call("PUT", "/v1/user/id/s", {"remark": "no name"})
    assert (status, body["code"]) == (400, 400)
    status, body = await client.call("PUT", "/v1/user/id/s", {"user_id": "t", "name": "N"})
    assert (status, body["code"]) == (400, 400)
    status, body = await client.call("PUT", "/v1/user/id/s", {"name": "Put", "pin": "1"})
    assert (status, body["data"]["name"], body["data"]["pin"]) == (200, "Put", "1")

    status, body = await client.call("POST", "/v1/user", {"user_id": "bad", "name": ""})
    assert (status, body["code"]) == (400, 400)

    assert await client.call("DELETE", "/v1/user/id/s") == (
        200,
        {"code": 200, "msg": "OK", "data": None},
    )
    for method in ("GET", "PUT", "DELETE"):
        status, body = await client.call(method, "/v1/user/id/s", {"name": "x"})
        assert (status, body["code"], body["msg"]) == (404, 404, "user not found")


async def test_datasync_clear_wipes_everything_and_is_counted(
    client: Client, sim: NebulaPassSimulator
) -> None:
    stored(sim, "a", 1)
    assert sim.dangerous_calls == 0
    assert (await client.call("GET", "/v2/datasync/clear"))[0] == 200
    assert (sim.users, sim.dangerous_calls) == ({}, 1)


async def test_an_unknown_route_answers_a_404_envelope(
    client: Client, sim: NebulaPassSimulator
) -> None:
    status, body = await client.call("GET", "/v9/nothing")
    assert (status, body["code"]) == (404, 404)
    assert (sim.log.entries[-1].route, sim.log.entries[-1].status) == ("/v9/nothing", 404)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"null",
        b"[]",
        b"123",
        b"\xff\xfe",
        b"[" * 5000,
        b'{"user_list": [null, 1, [], {"user_id": null}, {"user_id": "x", "name": 5}]}',
        b'{"ids": [null, {}, []], "username": 1, "password": [], "validTime": 1e9}',
        b'{"user_id": "x", "name": "x", "type": 2.5, "groups": "g", "avatar": 7}',
    ],
)
async def test_bad_input_always_gets_an_error_envelope_never_a_500(
    client: Client, sim: NebulaPassSimulator, body: bytes
) -> None:
    stored(sim, "x", 1)
    routes = [
        ("POST", "/v1/auth/login"),
        ("POST", BATCH),
        ("DELETE", BATCH),
        ("POST", "/v1/user"),
        ("PUT", "/v1/user/id/x"),
    ]
    for method, path in routes:
        async with client.http.request(
            method, client.url + path, data=body, headers=client.headers
        ) as response:
            envelope = orjson.loads(await response.read())
            assert response.status < 500
            assert set(envelope) == {"code", "msg", "data"}
    assert all(entry.status < 500 for entry in sim.log.entries)


async def test_fail_next_answers_each_status_once_then_recovers(
    client: Client, sim: NebulaPassSimulator
) -> None:
    sim.faults.fail_next = [503, 503]
    replies = [await client.call("GET", "/v2/datasync/info") for _ in range(3)]
    assert [status for status, _ in replies] == [503, 503, 200]
    assert replies[0][1] == {"code": 503, "msg": "Service Unavailable", "data": None}
    assert sim.faults.fail_next == []


async def test_a_fault_is_answered_before_the_handler_runs(
    client: Client, sim: NebulaPassSimulator
) -> None:
    sim.faults.fail_next = [500]
    status, _ = await client.call("POST", BATCH, {"user_list": [{"user_id": "a", "name": "A"}]})
    assert status == 500
    assert sim.users == {}
    assert sim.log.entries[-1].items is None


async def test_error_rate_answers_503(client: Client, sim: NebulaPassSimulator) -> None:
    sim.faults.error_rate = 1.0
    status, body = await client.call("GET", "/v2/datasync/info")
    assert (status, body["code"]) == (503, 503)


async def test_throttling_answers_429_with_retry_after(
    client: Client, sim: NebulaPassSimulator
) -> None:
    sim.faults.throttle_rate = 1.0
    sim.faults.retry_after = 0.5
    async with client.http.get(
        client.url + "/v2/datasync/info", headers=client.headers
    ) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "0.5"
        assert orjson.loads(await response.read())["code"] == 429
    sim.faults.throttle_rate = 0.0
    sim.faults.fail_next = [429]
    async with client.http.get(
        client.url + "/v2/datasync/info", headers=client.headers
    ) as response:
        assert (response.status, response.headers["Retry-After"]) == (429, "0.5")


async def test_malformed_answers_are_200_but_not_json(
    client: Client, sim: NebulaPassSimulator
) -> None:
    sim.faults.malformed_rate = 1.0
    for _ in range(6):
        async with client.http.get(
            client.url + "/v2/datasync/info", headers=client.headers
        ) as response:
            assert response.status == 200
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(await response.read())


async def test_latency_delays_but_does_not_fail(client: Client, sim: NebulaPassSimulator) -> None:
    sim.faults.latency = 0.05
    assert (await client.call("GET", "/v2/datasync/info"))[0] == 200


async def test_a_hang_trips_the_client_timeout_and_does_not_hold_the_server_on_close(
    http: aiohttp.ClientSession,
) -> None:
    sim = NebulaPassSimulator(faults=Faults(timeout_rate=1.0, hang_seconds=30.0))
    server = await serve(sim)
    try:
        with pytest.raises(TimeoutError):
            async with http.get(
                server.url + "/v2/datasync/info", timeout=aiohttp.ClientTimeout(total=0.2)
            ):
                pass
    finally:
        await asyncio.wait_for(server.close(), timeout=5)


async def test_a_short_hang_then_answers_normally(client: Client, sim: NebulaPassSimulator) -> None:
    sim.faults.timeout_rate = 1.0
    sim.faults.hang_seconds = 0.05
    assert (await client.call("GET", "/v2/datasync/info"))[0] == 200


def test_seeded_faults_repeat_their_draws() -> None:
    first, second = Faults(seed=3), Faults(seed=3)
    assert [first.roll(0.5) for _ in range(50)] == [second.roll(0.5) for _ in range(50)]
    assert not any(Faults().roll(0.0) for _ in range(50))


async def test_the_request_log_counts_routes_writes_and_items(
    client: Client, sim: NebulaPassSimulator
) -> None:
    await client.login()
    await client.batch({"user_id": "a", "name": "A"}, {"user_id": "b", "name": "B"})
    await client.call("GET", "/v1/user/offset/0/limit/10")
    await client.call("GET", "/v1/user/offset/10/limit/10")
    await client.call("POST", "/v1/user", {"user_id": "c", "name": "C"})
    await client.call("PUT", "/v1/user/id/c", {"name": "C2"})
    await client.call("DELETE", "/v1/user/id/c")
    await client.call("DELETE", BATCH, {"ids": ["a"]})
    await client.call("GET", "/v2/datasync/info")

    log = sim.log
    assert log.count() == 9
    assert log.count(route=LIST) == 2
    assert log.count(method="GET") == 3
    assert log.count(method="POST", route=BATCH) == 1
    assert log.count(route="/v1/user/id/{id}") == 2
    assert log.writes() == 5
    assert [entry.items for entry in log.entries if entry.write] == [2, 1, 1, 1, 1]
    assert log.entries[2].path == "/v1/user/offset/0/limit/10"
    assert all(entry.status == 200 for entry in log.entries)
    assert [entry.at for entry in log.entries] == sorted(entry.at for entry in log.entries)
    log.clear()
    assert (log.count(), log.writes()) == (0, 0)


async def test_serve_over_tls_with_a_trusted_ca(sim: NebulaPassSimulator) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    async with await serve(sim, ssl_context=server_context) as server:
        assert server.url == f"https://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
            async with http.get(server.url + "/v2/datasync/ping", ssl=client_context) as response:
                assert response.status == 200
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with http.get(server.url + "/v2/datasync/ping"):
                    pass
