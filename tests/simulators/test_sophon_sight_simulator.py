"""The SophonSight simulator over real loopback HTTP: signing, pictures, departments, users, faults.

Every test serves the simulator on 127.0.0.1 and talks to it with an aiohttp ClientSession.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import aiohttp
import orjson
import pytest

from reconciler.daemon.server import Listening
from reconciler.simulators.base import Faults, serve
from reconciler.simulators.sophon_sight import (
    APPKEY_ERROR,
    CONFLICT,
    NOT_FOUND,
    PARAM_ERROR,
    TIME_ERROR,
    TOKEN_ERROR,
    SophonSightSimulator,
    sign,
)

APPKEY, SECRET = "7ea24d0a", "platform-secret-1"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(32)
PNG = b"\x89PNG\r\n\x1a\n" + bytes(32)
TIMEOUT = aiohttp.ClientTimeout(total=10)

Reply = tuple[int, dict[str, Any]]


class Raw(NamedTuple):
    status: int
    content_type: str
    body: bytes


@pytest.fixture
def sim() -> SophonSightSimulator:
    return SophonSightSimulator(appkey=APPKEY, secret=SECRET, faults=Faults(seed=3))


@pytest.fixture
async def served(sim: SophonSightSimulator) -> AsyncIterator[Listening]:
    async with await serve(sim) as server:
        yield server


@pytest.fixture
async def client(served: Listening) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        yield Client(http, served.url)


class Client:
    """A thin signed caller that returns (HTTP status, decoded envelope)."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url

    def body(self, fields: dict[str, Any], **common: Any) -> bytes:
        document = {"appkey": APPKEY, "time": int(time.time() * 1000)} | common | fields
        return orjson.dumps(document)

    async def raw(
        self,
        route: str,
        body: bytes,
        *,
        token: str | None = None,
        secret: str = SECRET,
        content_type: str = "application/json;charset=UTF-8",
    ) -> Raw:
        path = f"/openapi/v1/{route}"
        params = {"token": sign(path, body, secret) if token is None else token}
        async with self.http.post(
            self.url + path, data=body, params=params, headers={"Content-Type": content_type}
        ) as response:
            return Raw(response.status, response.content_type, await response.read())

    async def call(self, route: str, fields: dict[str, Any], **options: Any) -> Reply:
        body = options.pop("body", None)
        sent = body if body is not None else self.body(fields)
        response = await self.raw(route, sent, **options)
        return response.status, orjson.loads(response.body)

    async def ok(self, route: str, fields: dict[str, Any]) -> Any:
        status, envelope = await self.call(route, fields)
        assert (status, envelope["status"], envelope["message"]) == (200, 0, "SUCCESS"), envelope
        return envelope.get("data")

    async def refused(self, route: str, fields: dict[str, Any], code: int) -> str:
        status, envelope = await self.call(route, fields)
        assert (status, envelope["status"], envelope["data"]) == (200, code, None), envelope
        message: str = envelope["message"]
        return message

    async def upload(self, image: bytes = JPEG) -> str:
        data = await self.ok(
            "pic/upload", {"photoName": "p.jpg", "photoByteStr": base64.b64encode(image).decode()}
        )
        photo_id: str = data["photoId"]
        return photo_id

    async def dept(self, third_id: str, parent: str = "", name: str = "Dept") -> Any:
        return await self.ok(
            "syncdept/addOrEdit", {"name": name, "thirdId": third_id, "thirdParentId": parent}
        )

    async def user(self, third_id: str, dept: str = "HQ", **fields: Any) -> Any:
        return await self.ok(
            "syncuser/addOrEdit",
            {"name": f"用户{third_id}", "thirdId": third_id, "thirdDeptId": dept, **fields},
        )


async def test_a_signed_add_answers_the_documented_envelope(
    client: Client, sim: SophonSightSimulator
) -> None:
    assert await client.dept("HQ") == {"id": "1"}
    status, envelope = await client.call(
        "syncuser/addOrEdit",
        {
            "name": "张三",
            "thirdId": "1",
            "jobNumber": "001",
            "mail": "zhangsan@company.com",
            "phone": "13800138000",
            "thirdDeptId": "HQ",
            "facePicture": "",
        },
    )
    assert (status, envelope) == (
        200,
        {"status": 0, "message": "SUCCESS", "data": {"id": "2", "thirdid": "1"}},
    )
    assert sim.users["1"]["mail"] == "zhangsan@company.com"
    status, envelope = await client.call("syncuser/delete", {"thirdIds": ["1"]})
    assert (status, envelope) == (200, {"status": 0, "message": "SUCCESS"})


async def test_the_token_covers_the_exact_bytes_received(client: Client) -> None:
    await client.dept("HQ")
    fields = {"name": "Spaced", "thirdId": "S", "thirdParentId": ""}
    spaced = orjson.dumps({"appkey": APPKEY, "time": int(time.time() * 1000), **fields}).replace(
        b",", b", "
    )
    status, envelope = await client.call("syncdept/addOrEdit", {}, body=spaced)
    assert (status, envelope["status"]) == (200, 0)

    # Signed compact, sent re-serialised: the same JSON, other bytes, so a refused token.
    compact = client.body(fields)
    path = "/openapi/v1/syncdept/addOrEdit"
    token = sign(path, compact, SECRET)
    resent = orjson.dumps(orjson.loads(compact), option=orjson.OPT_INDENT_2)
    status, envelope = await client.call("syncdept/addOrEdit", {}, body=resent, token=token)
    assert (status, envelope) == (
        200,
        {"status": TOKEN_ERROR, "message": "token error", "data": None},
    )


@pytest.mark.parametrize(
    "options",
    [{"secret": "wrong"}, {"token": ""}, {"token": "lower"}],
    ids=["wrong-secret", "no-token", "lowercase-hex"],
)
async def test_a_bad_token_is_refused(client: Client, options: dict[str, Any]) -> None:
    if options.get("token") == "lower":
        body = client.body({"name": "A", "thirdId": "A"})
        options = {
            "body": body,
            "token": sign("/openapi/v1/syncdept/addOrEdit", body, SECRET).lower(),
        }
    status, envelope = await client.call(
        "syncdept/addOrEdit", {"name": "A", "thirdId": "A"}, **options
    )
    assert (status, envelope["status"], envelope["message"]) == (200, TOKEN_ERROR, "token error")


async def test_an_unknown_appkey_is_refused_and_the_http_status_is_configurable(
    client: Client, sim: SophonSightSimulator
) -> None:
    fields = {"name": "A", "thirdId": "A"}
    body = client.body(fields, appkey="someone-else")
    status, envelope = await client.call("syncdept/addOrEdit", {}, body=body)
    assert (status, envelope["status"], envelope["message"]) == (
        200,
        APPKEY_ERROR,
        "appkey not exist",
    )
    sim.auth_http_status = 401
    assert (await client.call("syncdept/addOrEdit", fields, secret="wrong"))[0] == 401
    assert (await client.call("syncdept/addOrEdit", {}, body=body))[0] == 401
    assert sim.departments == {}


async def test_time_must_be_fresh_milliseconds(client: Client, sim: SophonSightSimulator) -> None:
    fields = {"name": "A", "thirdId": "A"}
    stale = client.body(fields, time=int((time.time() - 601) * 1000))
    status, envelope = await client.call("syncdept/addOrEdit", {}, body=stale)
    assert (status, envelope["status"]) == (200, TIME_ERROR)
    assert "clock" in envelope["message"]
    for bad in ("1551196800000", 1.5e12, True, None):
        body = client.body(fields, time=bad)
        assert (await client.call("syncdept/addOrEdit", {}, body=body))[1]["status"] == TIME_ERROR
    sim.time_window = None
    assert (await client.call("syncdept/addOrEdit", {}, body=stale))[1]["status"] == 0


async def test_a_body_that_is_not_a_json_object_or_not_json_typed_is_refused(
    client: Client,
) -> None:
    for body in (b"{not json", b"[1, 2]"):
        status, envelope = await client.call("syncdept/addOrEdit", {}, body=body)
        assert (status, envelope["status"]) == (200, PARAM_ERROR)
    response = await client.raw(
        "syncdept/addOrEdit", client.body({"name": "A", "thirdId": "A"}), content_type="text/plain"
    )
    assert response.status == 415


async def test_pictures_upload_and_download(client: Client, sim: SophonSightSimulator) -> None:
    jpeg_id, png_id = await client.upload(JPEG), await client.upload(PNG)
    assert jpeg_id.endswith(".jpg")
    assert png_id.endswith(".png")
    assert sim.photos == {jpeg_id: JPEG, png_id: PNG}
    assert sim.log.entries[-1].items == 0  # a photo is no person

    response = await client.raw("pic/download", client.body({"photoId": png_id}))
    assert (response.status, response.content_type) == (200, "image/png")
    assert response.body == PNG
    await client.refused("pic/download", {"photoId": "nope.jpg"}, NOT_FOUND)

    gif = base64.b64encode(b"GIF89a" + bytes(32)).decode()
    for fields in (
        {"photoName": "p.gif", "photoByteStr": gif},
        {"photoName": "p.jpg", "photoByteStr": "not base64!"},
        {"photoName": "p.jpg"},
        {"photoByteStr": base64.b64encode(JPEG).decode()},
    ):
        await client.refused("pic/upload", fields, PARAM_ERROR)
    assert len(sim.photos) == 2


async def test_departments_upsert_by_third_id_and_need_their_parent(
    client: Client, sim: SophonSightSimulator
) -> None:
    assert await client.dept("HQ", name="Headquarters") == {"id": "1"}
    assert await client.dept("D01", parent="HQ", name="R&D") == {"id": "2"}
    assert await client.dept("D01", parent="HQ", name="Research") == {"id": "2"}
    assert sim.departments["D01"] == {
        "id": "2",
        "name": "Research",
        "thirdId": "D01",
        "thirdParentId": "HQ",
    }
    # No thirdParentId at all: the top level.
    assert await client.ok("syncdept/addOrEdit", {"name": "Top", "thirdId": "T"}) == {"id": "3"}
    assert sim.departments["T"]["thirdParentId"] == ""

    assert "X" in await client.refused(
        "syncdept/addOrEdit", {"name": "Orphan", "thirdId": "O", "thirdParentId": "X"}, NOT_FOUND
    )
    await client.refused(
        "syncdept/addOrEdit", {"name": "Loop", "thirdId": "HQ", "thirdParentId": "D01"}, CONFLICT
    )
    await client.refused(
        "syncdept/addOrEdit", {"name": "Self", "thirdId": "T", "thirdParentId": "T"}, CONFLICT
    )
    await client.refused("syncdept/addOrEdit", {"name": "Long", "thirdId": "x" * 101}, PARAM_ERROR)
    await client.refused("syncdept/addOrEdit", {"name": "", "thirdId": "E"}, PARAM_ERROR)
    await client.dept("x" * 100)
    assert set(sim.departments) == {"HQ", "D01", "T", "x" * 100}


async def test_users_need_a_known_department_and_photo(
    client: Client, sim: SophonSightSimulator
) -> None:
    await client.dept("HQ")
    assert "D9" in await client.refused(
        "syncuser/addOrEdit", {"name": "A", "thirdId": "A", "thirdDeptId": "D9"}, NOT_FOUND
    )
    await client.refused("syncuser/addOrEdit", {"name": "A", "thirdId": "A"}, PARAM_ERROR)
    await client.refused(
        "syncuser/addOrEdit",
        {"name": "A", "thirdId": "A", "thirdDeptId": "HQ", "facePicture": "nope.jpg"},
        NOT_FOUND,
    )
    await client.refused(
        "syncuser/addOrEdit", {"name": "A", "thirdId": "a" * 101, "thirdDeptId": "HQ"}, PARAM_ERROR
    )
    await client.refused(
        "syncuser/addOrEdit",
        {"name": "A", "thirdId": "A", "thirdDeptId": "HQ", "mail": 5},
        PARAM_ERROR,
    )
    assert sim.users == {}
    assert sim.log.entries[-1].items == 1


async def test_an_empty_face_picture_means_no_photo_on_add_and_deletes_it_on_edit(
    client: Client, sim: SophonSightSimulator
) -> None:
    await client.dept("HQ")
    assert await client.user("1", facePicture="") == {"id": "2", "thirdid": "1"}
    assert sim.photo_of("1") is None

    photo_id = await client.upload(PNG)
    assert await client.user("1", facePicture=photo_id, jobNumber="7") == {
        "id": "2",
        "thirdid": "1",
    }
    assert sim.photo_of("1") == PNG
    # An edit that sends the photoId again keeps the photo; one that sends it blank deletes it.
    await client.user("1", facePicture=photo_id, phone="139")
    assert (sim.photo_of("1"), sim.users["1"]["phone"], sim.users["1"]["jobNumber"]) == (
        PNG,
        "139",
        "",
    )
    await client.user("1", facePicture="")
    assert sim.photo_of("1") is None
    await client.user("1", facePicture=photo_id)
    await client.user("1")  # omitted is blank too
    assert sim.photo_of("1") is None
    assert sim.users["1"]["id"] == "2"


async def test_user_delete_ignores_unknown_ids_and_takes_at_most_50(
    client: Client, sim: SophonSightSimulator
) -> None:
    await client.dept("HQ")
    for n in range(3):
        await client.user(str(n))
    assert await client.ok("syncuser/delete", {"thirdIds": ["0", "missing", "0"]}) is None
    assert set(sim.users) == {"1", "2"}
    assert sim.log.entries[-1].items == 3

    await client.refused("syncuser/delete", {"thirdIds": [str(n) for n in range(51)]}, PARAM_ERROR)
    await client.refused("syncuser/delete", {"thirdIds": []}, PARAM_ERROR)
    await client.refused("syncuser/delete", {"thirdIds": "1"}, PARAM_ERROR)
    await client.refused("syncuser/delete", {"thirdIds": [1]}, PARAM_ERROR)
    assert set(sim.users) == {"1", "2"}
    await client.ok("syncuser/delete", {"thirdIds": [str(n) for n in range(50)]})
    assert sim.users == {}


async def test_department_delete_is_atomic_and_refuses_populated_departments(
    client: Client, sim: SophonSightSimulator
) -> None:
    await client.dept("HQ")
    await client.dept("D01", parent="HQ")
    await client.dept("D02", parent="D01")
    await client.user("1", dept="D02")

    assert "D02" in await client.refused("syncdept/delete", {"thirdIds": ["D02"]}, CONFLICT)
    assert "D01" in await client.refused("syncdept/delete", {"thirdIds": ["D01"]}, CONFLICT)
    await client.ok("syncuser/delete", {"thirdIds": ["1"]})
    # The same call may hold a child and its parent, in any order; unknown ids are ignored.
    await client.ok("syncdept/delete", {"thirdIds": ["D01", "gone", "D02"]})
    assert set(sim.departments) == {"HQ"}
    await client.refused("syncdept/delete", {"thirdIds": [f"d{n}" for n in range(51)]}, PARAM_ERROR)


async def test_the_inspection_api(client: Client, sim: SophonSightSimulator) -> None:
    sim.add_person("hand-1", "Added By Hand")
    sim.add_department("HQ", "Made By Hand")
    photo_id = await client.upload(JPEG)
    await client.user("1", facePicture=photo_id)
    assert sim.person_names() == {"hand-1": "Added By Hand", "1": "用户1"}
    assert sim.photo_of("1") == JPEG
    assert sim.photo_of("hand-1") is None
    assert sim.photo_of("missing") is None
    assert sim.users["1"]["thirdDeptId"] == "HQ"
    assert sim.departments["HQ"]["name"] == "Made By Hand"
    # A hand-made user is a user like any other: deletable by thirdId.
    await client.ok("syncuser/delete", {"thirdIds": ["hand-1"]})
    assert set(sim.person_names()) == {"1"}


async def test_writes_are_logged_and_faults_answer_in_the_envelope(
    client: Client, sim: SophonSightSimulator
) -> None:
    await client.dept("HQ")
    photo_id = await client.upload(JPEG)
    await client.user("1", facePicture=photo_id)
    await client.raw("pic/download", client.body({"photoId": photo_id}))
    assert sim.log.writes() == 3
    assert sim.log.count("POST", "/openapi/v1/syncuser/addOrEdit") == 1

    sim.faults.fail_next = [503]
    assert await client.call("syncdept/addOrEdit", {"name": "A", "thirdId": "A"}) == (
        503,
        {"status": 503, "message": "Service Unavailable", "data": None},
    )
    status, envelope = await client.call("nothing/here", {})
    assert (status, envelope["status"]) == (404, 404)

    sim.faults.malformed_rate = 1.0
    response = await client.raw("syncdept/addOrEdit", client.body({"name": "A", "thirdId": "A"}))
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(response.body)
    assert "A" not in sim.departments
