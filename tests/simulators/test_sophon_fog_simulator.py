"""The SophonFogSys simulator over real loopback HTTP: persons, faces, paging, groups, errors, log.

Every test serves the simulator on 127.0.0.1 and talks to it with an aiohttp ClientSession.
"""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson
import pytest

from reconciler.daemon.server import Listening
from reconciler.simulators.base import Faults, serve
from reconciler.simulators.sophon_fog import GROUPS, USERS, WIPE, SophonFogSimulator

JPEG_BYTES = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(32)
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(32)
FACELESS = b"\xff\xd8\xff\xe0" + b"wall" * 8
BLURRY = b"\xff\xd8\xff\xe0" + b"blur" * 8
JPEG = base64.b64encode(JPEG_BYTES).decode()
PNG = base64.b64encode(PNG_BYTES).decode()
TIMEOUT = aiohttp.ClientTimeout(total=10)

Reply = tuple[int, dict[str, Any]]


@pytest.fixture
def sim() -> SophonFogSimulator:
    return SophonFogSimulator(faceless={FACELESS}, low_quality={BLURRY}, faults=Faults(seed=3))


@pytest.fixture
async def served(sim: SophonFogSimulator) -> AsyncIterator[Listening]:
    async with await serve(sim) as server:
        yield server


@pytest.fixture
async def box(served: Listening) -> AsyncIterator[Box]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        yield Box(http, served.url)


class Box:
    """A thin caller that returns (HTTP status, decoded body)."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url

    async def call(
        self,
        method: str,
        path: str,
        payload: object = None,
        params: Mapping[str, str] | None = None,
    ) -> Reply:
        # A stream, not bytes: aiohttp warns about raw bodies over 1 MB (the oversized photo).
        data = None if payload is None else io.BytesIO(orjson.dumps(payload))
        headers = {"Content-Type": "application/json"} if data is not None else {}
        async with self.http.request(
            method, self.url + path, data=data, params=params, headers=headers
        ) as response:
            return response.status, orjson.loads(await response.read())

    async def create(self, identity_id: str, **body: Any) -> Reply:
        body.setdefault("group_name", "default_group")
        body.setdefault("info", {"name": f"name {identity_id}", "type": 1})
        if "reg_photo" not in body:
            body.setdefault("need_bring_pic", False)
        return await self.call("POST", USERS, {"identity_id": identity_id, **body})

    async def listing(self, **params: str) -> Reply:
        return await self.call("GET", USERS, params={"group_name": "default_group", **params})


def error(code: int, status: str) -> tuple[int, int, str]:
    return code // 100, code, status


def refusal(reply: Reply) -> tuple[int, int, str]:
    status, body = reply
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "status"}
    assert body["error"]["message"]
    return status, body["error"]["code"], body["error"]["status"]


# -- create -------------------------------------------------------------------------------------


async def test_create_with_a_photo_and_the_documented_defaults(
    box: Box, sim: SophonFogSimulator
) -> None:
    status, body = await box.call(
        "POST",
        USERS,
        {
            "identity_id": "001",
            "group_name": "default_group",
            "reg_photo": JPEG,
            "info": {"name": "张三"},
        },
    )
    assert status == 200
    assert set(body) == {"data"}
    data = body["data"]
    assert (data["identity_id"], data["reg_photo"], data["group_name"]) == (
        "001",
        "",
        ["default_group"],
    )
    info = data["info"]
    # type defaults to 1 (staff), permission_ids to ["0"], user_id to the identity_id.
    assert (info["name"], info["type"], info["permission_ids"], info["user_id"]) == (
        "张三",
        1,
        ["0"],
        "001",
    )
    assert len(info["image_ids"]) == len(info["face_ids"]) == 1
    assert info["image_id"] == info["image_ids"][0]
    assert sim.photo_of("001") == JPEG_BYTES
    assert sim.person_names() == {"001": "张三"}


async def test_a_photo_is_required_unless_need_bring_pic_is_false(
    box: Box, sim: SophonFogSimulator
) -> None:
    info = {"name": "x"}
    reply = await box.call(
        "POST", USERS, {"identity_id": "1", "group_name": "default_group", "info": info}
    )
    assert refusal(reply) == error(40091, "PARAM_ERROR")
    status, _ = await box.create("1")
    assert status == 200
    assert sim.faces_of("1") == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"identity_id": 7}, error(40091, "PARAM_ERROR")),
        ({"identity_id": ""}, error(40091, "PARAM_ERROR")),
        ({"identity_id": "x" * 65}, error(40091, "PARAM_ERROR")),
        ({"group_name": "nowhere"}, error(40012, "GROUP_NAME_ERROR")),
        ({"group_name": "default_group,nowhere"}, error(40012, "GROUP_NAME_ERROR")),
        ({"group_name": None}, error(40091, "PARAM_ERROR")),
        ({"ignore_exist": "yes"}, error(40005, "BOOLEAN_ARGUMENT_ERROR")),
        ({"support_single_face": 1}, error(40005, "BOOLEAN_ARGUMENT_ERROR")),
        ({"info": None}, error(40091, "PARAM_ERROR")),
        ({"info": {"type": 1}}, error(40091, "PARAM_ERROR")),
        ({"info": {"name": "n" * 65}}, error(40091, "PARAM_ERROR")),
        ({"info": {"name": "x", "type": 6}}, error(40091, "PARAM_ERROR")),
        ({"info": {"name": "x", "type": True}}, error(40091, "PARAM_ERROR")),
        ({"info": {"name": "x", "type": "1"}}, error(40091, "PARAM_ERROR")),
        ({"info": {"name": "x", "permission_ids": "1"}}, error(40091, "PARAM_ERROR")),
        ({"info": {"name": "x", "permission_ids": [1]}}, error(40091, "PARAM_ERROR")),
        ({"info": {"name": "x", "ext_info": {"mobile": 138}}}, error(40091, "PARAM_ERROR")),
        ({"info": {"name": "x", "ext_info": {"email": "e" * 129}}}, error(40091, "PARAM_ERROR")),
        ({"fiqa_level": "extreme"}, error(40091, "PARAM_ERROR")),
        ({"import_mode": True}, error(50100, "NOT_IMPLEMENTED")),
    ],
)
async def test_create_validation(
    box: Box, sim: SophonFogSimulator, body: dict[str, Any], expected: tuple[int, int, str]
) -> None:
    full = {"identity_id": "1", "group_name": "default_group", "need_bring_pic": False}
    full["info"] = {"name": "x"}
    assert refusal(await box.call("POST", USERS, full | body)) == expected
    assert sim.identities == {}
    assert sim.log.entries[-1].write


@pytest.mark.parametrize(
    ("photo", "expected"),
    [
        (base64.b64encode(b"GIF89a" + bytes(16)).decode(), error(40003, "IMAGE_ERROR")),
        ("not base64!", error(40003, "IMAGE_ERROR")),
        ("", error(40003, "IMAGE_ERROR")),  # '' counts as present, and is no image
        (42, error(40003, "IMAGE_ERROR")),
        (base64.b64encode(FACELESS).decode(), error(40004, "NO_FACE")),
        (base64.b64encode(BLURRY).decode(), error(40006, "LOW_QUALITY_ERROR")),
        (
            base64.b64encode(b"\xff\xd8\xff" + bytes(4 * 1024 * 1024)).decode(),
            error(40007, "IMAGE_SIZE_TOO_LARGE_ERROR"),
        ),
    ],
)
async def test_photo_checks(
    box: Box, sim: SophonFogSimulator, photo: object, expected: tuple[int, int, str]
) -> None:
    assert refusal(await box.create("1", reg_photo=photo)) == expected
    assert sim.identities == {}
    assert sim.images == {}


async def test_the_quality_check_can_be_switched_off_and_data_urls_are_accepted(
    box: Box, sim: SophonFogSimulator
) -> None:
    blurry = base64.b64encode(BLURRY).decode()
    assert (await box.create("1", reg_photo=blurry, fiqa_level="no"))[0] == 200
    assert (await box.create("2", reg_photo=f"data:image/png;base64,{PNG}"))[0] == 200
    assert sim.photo_of("2") == PNG_BYTES
    faceless = base64.b64encode(FACELESS).decode()
    assert refusal(await box.create("3", reg_photo=faceless, fiqa_level="no"))[1] == 40004


async def test_an_existing_identity_is_40011_unless_ignore_exist(
    box: Box, sim: SophonFogSimulator
) -> None:
    assert (await box.create("1", info={"name": "A", "permission_ids": ["p"]}))[0] == 200
    reply = await box.create("1", info={"name": "B"})
    assert refusal(reply) == error(40011, "IDENTITY_EXSIT_ERROR")
    assert sim.person_names() == {"1": "A"}

    sim.add_group("visitors")
    status, body = await box.create(
        "1", group_name="visitors", ignore_exist=True, info={"name": "B", "permission_ids": ["q"]}
    )
    assert status == 200
    assert body["data"]["group_name"] == ["default_group", "visitors"]
    assert sim.person_names() == {"1": "B"}
    assert sim.identities["1"]["info"]["permission_ids"] == ["q"]

    sim.honour_ignore_exist = False
    assert refusal(await box.create("1", ignore_exist=True))[1] == 40011


async def test_faces_are_added_unless_support_single_face(
    box: Box, sim: SophonFogSimulator
) -> None:
    assert (await box.create("1", reg_photo=JPEG))[0] == 200
    assert (await box.create("1", reg_photo=PNG, ignore_exist=True))[0] == 200
    assert sim.faces_of("1") == [JPEG_BYTES, PNG_BYTES]
    assert sim.photo_of("1") == PNG_BYTES
    assert len(sim.identities["1"]["info"]["face_ids"]) == 2

    status, _ = await box.create("1", reg_photo=JPEG, ignore_exist=True, support_single_face=True)
    assert status == 200
    assert sim.faces_of("1") == [JPEG_BYTES]
    assert list(sim.images.values()) == [JPEG_BYTES]  # the dropped faces' images are gone too


async def test_a_full_group_refuses_new_persons_but_not_updates(box: Box) -> None:
    sim = SophonFogSimulator(capacity=1)
    async with await serve(sim) as server, aiohttp.ClientSession(timeout=TIMEOUT) as http:
        small = Box(http, server.url)
        assert (await small.create("1"))[0] == 200
        assert refusal(await small.create("2")) == error(40015, "GROUP_LEN_ERROR")
        assert (await small.create("1", ignore_exist=True, info={"name": "again"}))[0] == 200
        assert sim.person_names() == {"1": "again"}


# -- update -------------------------------------------------------------------------------------


async def test_update_resets_an_omitted_permission_ids_to_the_default(
    box: Box, sim: SophonFogSimulator
) -> None:
    info = {"name": "A", "type": 2, "permission_ids": ["p1"], "ext_info": {"mobile": "1"}}
    await box.create("1", info=info)
    status, body = await box.call("PUT", USERS, {"identity_id": "1", "info": {"name": "B"}})
    assert status == 200
    assert set(body["data"]) == {"identity_id", "image_id", "group_name", "info"}
    stored = sim.identities["1"]["info"]
    assert (stored["name"], stored["type"], stored["permission_ids"]) == ("B", 2, ["0"])
    assert stored["ext_info"] == {"mobile": "1"}  # keys left out are kept

    full = {"name": "B", "permission_ids": ["p1"], "ext_info": {"email": "e"}}
    assert (await box.call("PUT", USERS, {"identity_id": "1", "info": full}))[0] == 200
    assert sim.identities["1"]["info"]["permission_ids"] == ["p1"]
    assert sim.identities["1"]["info"]["ext_info"] == {"email": "e"}  # replaced whole

    assert (await box.call("PUT", USERS, {"identity_id": "1", "info": {}}))[0] == 200
    assert sim.identities["1"]["info"]["name"] == "B"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"identity_id": "missing", "info": {}}, error(40401, "ID_NOT_FOUND")),
        ({"identity_id": "1"}, error(40091, "PARAM_ERROR")),
        ({"identity_id": "1", "info": []}, error(40091, "PARAM_ERROR")),
        ({"identity_id": "1", "info": {"user_id": "2"}}, error(40091, "PARAM_ERROR")),
        ({"identity_id": "1", "info": {"type": 9}}, error(40091, "PARAM_ERROR")),
        ({"identity_id": "1", "info": {}, "reg_photo": "bad"}, error(40003, "IMAGE_ERROR")),
    ],
)
async def test_update_validation(
    box: Box, sim: SophonFogSimulator, body: dict[str, Any], expected: tuple[int, int, str]
) -> None:
    await box.create("1", info={"name": "A", "permission_ids": ["p"]})
    assert refusal(await box.call("PUT", USERS, body)) == expected
    assert sim.identities["1"]["info"]["permission_ids"] == ["p"]


async def test_a_photo_sent_by_put_adds_a_face(box: Box, sim: SophonFogSimulator) -> None:
    await box.create("1", reg_photo=JPEG)
    payload = {"identity_id": "1", "info": {}, "reg_photo": PNG}
    status, body = await box.call("PUT", USERS, payload)
    assert status == 200
    assert sim.faces_of("1") == [JPEG_BYTES, PNG_BYTES]
    assert body["data"]["image_id"] == sim.identities["1"]["info"]["image_ids"][1]


# -- read ---------------------------------------------------------------------------------------


async def test_get_one_identity(box: Box, sim: SophonFogSimulator) -> None:
    sim.add_person("7", "Seven", photo=JPEG_BYTES, ext_info={"mobile": "1"})
    status, body = await box.call("GET", USERS, params={"identity_id": "7"})
    assert status == 200
    (item,) = body["data"]["identities_list"]
    assert (item["identity_id"], item["reg_photo"], item["group_name"]) == (
        "7",
        "",
        ["default_group"],
    )
    assert item["info"]["ext_info"] == {"mobile": "1"}
    assert item["info"]["group_ids"] == [sim.groups["default_group"]["group_id"]]
    reply = await box.call("GET", USERS, params={"identity_id": "8"})
    assert refusal(reply) == error(40401, "ID_NOT_FOUND")


async def test_listing_pages_by_offset_with_pagination(box: Box, sim: SophonFogSimulator) -> None:
    for n in range(25):
        sim.add_person(f"p{n:02d}", f"name {n}")
    sim.add_person("other", "x", group="visitors")
    status, body = await box.listing(skip_num="10", limit="10")
    assert status == 200
    assert [i["identity_id"] for i in body["data"]["identities_list"]] == [
        f"p{n:02d}" for n in range(10, 20)
    ]
    assert body["data"]["pagination"] == {
        "skip_num": 10,
        "limit": 10,
        "num_pages": 3,
        "total_count": 25,
    }
    _, body = await box.listing(skip_num="3", limit="2")
    assert [i["identity_id"] for i in body["data"]["identities_list"]] == ["p03", "p04"]
    _, body = await box.listing()  # documented defaults: skip_num 0, limit 10
    assert len(body["data"]["identities_list"]) == 10


async def test_listing_pages_by_index_and_without_pagination(
    box: Box, sim: SophonFogSimulator
) -> None:
    for n in range(25):
        sim.add_person(f"p{n:02d}", f"name {n}")
    sim.paging, sim.pagination = "page", False
    _, body = await box.listing(skip_num="2", limit="10")
    assert set(body["data"]) == {"identities_list"}
    assert [i["identity_id"] for i in body["data"]["identities_list"]] == [
        f"p{n:02d}" for n in range(20, 25)
    ]


async def test_listing_filters_by_name_and_follows_changes(
    box: Box, sim: SophonFogSimulator
) -> None:
    sim.add_person("1", "张三")
    sim.add_person("2", "李四")
    _, body = await box.listing(identity_name="张")
    assert [i["identity_id"] for i in body["data"]["identities_list"]] == ["1"]
    del sim.identities["1"]  # edited directly: the listing must see it at once
    _, body = await box.listing()
    assert body["data"]["pagination"]["total_count"] == 1


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, error(40091, "PARAM_ERROR")),
        ({"group_name": "nowhere"}, error(40012, "GROUP_NAME_ERROR")),
        ({"group_name": "default_group", "limit": "0"}, error(40091, "PARAM_ERROR")),
        ({"group_name": "default_group", "limit": "1001"}, error(40091, "PARAM_ERROR")),
        ({"group_name": "default_group", "skip_num": "-1"}, error(40091, "PARAM_ERROR")),
        ({"group_name": "default_group", "skip_num": "x"}, error(40091, "PARAM_ERROR")),
    ],
)
async def test_listing_validation(
    box: Box, params: dict[str, str], expected: tuple[int, int, str]
) -> None:
    assert refusal(await box.call("GET", USERS, params=params)) == expected


async def test_images_are_served_by_image_id(box: Box, sim: SophonFogSimulator) -> None:
    sim.add_person("1", "One", photo=PNG_BYTES)
    image_id = sim.identities["1"]["info"]["image_id"]
    async with box.http.get(f"{box.url}/SophonFace/api/images/{image_id}") as response:
        assert response.status == 200
        assert response.content_type == "image/png"
        assert await response.read() == PNG_BYTES
    reply = await box.call("GET", "/SophonFace/api/images/nope")
    assert refusal(reply) == error(40400, "NOT_FOUND")


# -- delete -------------------------------------------------------------------------------------


async def test_delete_one_and_many(box: Box, sim: SophonFogSimulator) -> None:
    for pid in ("1", "2", "3", "4"):
        sim.add_person(pid, f"n{pid}", photo=JPEG_BYTES)
    status, body = await box.call("DELETE", USERS, {"identity_id": "1"})
    assert (status, body["data"]["identity_id"], body["data"]["group_name"]) == (
        200,
        "1",
        ["default_group"],
    )
    reply = await box.call("DELETE", USERS, {"identity_id": "1"})
    assert refusal(reply) == error(40401, "ID_NOT_FOUND")

    status, body = await box.call("DELETE", USERS, {"identity_ids": ["2", "missing", "3"]})
    assert status == 200
    assert body["data"]["identity_ids"] == ["2", "3"]  # the unknown id is left out
    assert set(sim.identities) == {"4"}
    assert len(sim.images) == 1  # faces go with their persons
    assert sim.log.entries[-1].items == 3


async def test_a_batch_delete_can_be_refused_whole_for_one_unknown_id(
    box: Box, sim: SophonFogSimulator
) -> None:
    sim.missing_in_batch = "fail"
    sim.add_person("1", "One")
    reply = await box.call("DELETE", USERS, {"identity_ids": ["1", "missing"]})
    assert refusal(reply) == error(40401, "ID_NOT_FOUND")
    assert set(sim.identities) == {"1"}


@pytest.mark.parametrize(
    "body",
    [{}, {"identity_id": "1", "identity_ids": ["1"]}, {"identity_ids": []}, {"identity_ids": "1"}],
)
async def test_delete_validation(box: Box, sim: SophonFogSimulator, body: object) -> None:
    sim.add_person("1", "One")
    assert refusal(await box.call("DELETE", USERS, body)) == error(40091, "PARAM_ERROR")
    assert set(sim.identities) == {"1"}


# -- groups, wipe, envelope, faults -------------------------------------------------------------


async def test_groups(box: Box, sim: SophonFogSimulator) -> None:
    status, body = await box.call("GET", GROUPS)
    assert status == 200
    assert [g["group_name"] for g in body["data"]["groups_list"]] == ["default_group"]
    assert body["data"]["pagination"]["total_count"] == 1
    status, _ = await box.call("POST", GROUPS, {"group_name": "lobby", "description": "L"})
    assert status == 200
    _, body = await box.call("GET", GROUPS, params={"group_name": "lobby"})
    assert body["data"]["groups_list"][0]["description"] == "L"
    assert refusal(await box.call("POST", GROUPS, {"group_name": "lobby"}))[1] == 40012
    assert refusal(await box.call("POST", GROUPS, {"group_name": "a,b"}))[1] == 40012
    reply = await box.call("GET", GROUPS, params={"group_name": "nope"})
    assert refusal(reply) == error(40012, "GROUP_NAME_ERROR")


async def test_wipe_data_is_counted_as_dangerous(box: Box, sim: SophonFogSimulator) -> None:
    sim.add_person("1", "One", photo=JPEG_BYTES)
    sim.add_group("lobby")
    status, _ = await box.call("POST", WIPE, {})
    assert status == 200
    assert sim.dangerous_calls == 1
    assert (sim.identities, sim.images, list(sim.groups)) == ({}, {}, ["default_group"])


async def test_bodies_must_be_json_objects(box: Box, sim: SophonFogSimulator) -> None:
    async def raw(data: bytes, content_type: str) -> Reply:
        headers = {"Content-Type": content_type}
        async with box.http.post(box.url + USERS, data=data, headers=headers) as response:
            return response.status, orjson.loads(await response.read())

    assert refusal(await raw(b"", "application/json")) == error(40002, "EMPTY_REQUEST_JSON")
    assert refusal(await raw(b"identity_id=1", "application/x-www-form-urlencoded")) == error(
        40001, "UNSUPPORT_CONTENT_TYPE"
    )
    assert refusal(await raw(b"{nope", "application/json")) == error(40000, "BAD_REQUEST")
    assert refusal(await raw(b"[1]", "application/json")) == error(40000, "BAD_REQUEST")
    assert sim.identities == {}


async def test_faults_and_unknown_routes_answer_in_the_vendor_shape(
    box: Box, sim: SophonFogSimulator
) -> None:
    sim.faults.fail_next = [503]
    assert refusal(await box.listing()) == (503, 50300, "SERVICE_UNAVAILABLE")
    assert refusal(await box.call("GET", "/SophonFogSys/api/nothing")) == error(40400, "NOT_FOUND")


async def test_the_log_counts_writes_and_items(box: Box, sim: SophonFogSimulator) -> None:
    await box.create("1")
    await box.call("PUT", USERS, {"identity_id": "1", "info": {}})
    await box.listing()
    await box.call("DELETE", USERS, {"identity_ids": ["1", "2"]})
    assert sim.log.writes() == 3
    assert [(e.method, e.items) for e in sim.log.entries] == [
        ("POST", 1),
        ("PUT", 1),
        ("GET", None),
        ("DELETE", 2),
    ]


async def test_add_person_seeds_as_if_enrolled_by_hand(sim: SophonFogSimulator) -> None:
    sim.add_person("9", "Nine", group="visitors", photo=JPEG_BYTES, type=2)
    assert sim.person_names() == {"9": "Nine"}
    assert sim.photo_of("9") == JPEG_BYTES
    assert sim.members("visitors") == ["9"]
    assert sim.members("default_group") == []
    assert sim.identities["9"]["info"]["type"] == 2
    assert sim.photo_of("nobody") is None
