"""A SophonSight management platform in memory: its signed person OpenAPI (vendors.md §3).

No I/O of its own (`base.serve()` puts it on a socket); the choices the docs leave open are listed
on `SophonSightSimulator`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeGuard

import orjson
from aiohttp import web

from reconciler.simulators.base import Faults, Handler, Route, Simulator, note_items

PREFIX = "/openapi/v1"
#: Body status of success; every other status is an error.
OK = 0

#: Error statuses [I]: the docs give none, so these are the simulator's own.
APPKEY_ERROR = 1001
TOKEN_ERROR = 1002
TIME_ERROR = 1003
PARAM_ERROR = 2001
NOT_FOUND = 2002
CONFLICT = 2003

MAX_THIRD_ID = 100
MAX_DELETE = 50
#: Seconds `time` may be away from the platform's clock; None disables the check [I].
DEFAULT_TIME_WINDOW = 600.0

#: A route's handler once the shared checks have passed: the request and its JSON body.
_BodyHandler = Callable[[web.Request, dict[str, Any]], web.Response]

_MAGICS = {b"\xff\xd8\xff": ("jpg", "image/jpeg"), b"\x89PNG": ("png", "image/png")}


def sign(path: str, body: bytes, secret: str) -> str:
    """The documented token: uppercase hex MD5 of URI path + exact body + secret."""
    digest = hashlib.md5(path.encode() + body + secret.encode(), usedforsecurity=False)
    return digest.hexdigest().upper()


class _Refused(Exception):
    """A request the platform answers with a non-zero status (HTTP 200)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class SophonSightSimulator(Simulator):
    """The SophonSight `/openapi/v1` person, department and picture API, with signed requests.

    Choices where the docs are silent [I], which the adapter must not rely on beyond this list:

    - Every route is POST with a JSON object body carrying `appkey` and `time` (ms); the token in
      `?token=` must equal `sign(path, raw body bytes, secret)` exactly (uppercase hex). A request
      whose Content-Type is not application/json is answered HTTP 415.
    - Refusals answer HTTP 200 with `{"status": <code>, "message": <text>, "data": null}`:
      1001 "appkey not exist" (missing or unknown appkey), 1002 "token error" (missing or wrong
      token), 1003 "time expired" (`time` more than `time_window` seconds from the platform clock,
      or not an integer), 2001 "parameter error: …", 2002 "… not exist" (a referenced department,
      parent or photo is unknown), 2003 a conflict (department cycle, or deleting a department
      that still has users or sub-departments). `auth_http_status` (default 200) changes the HTTP
      status of the 1001/1002 answers, e.g. to 401, for clients that must handle both.
      `messages` replaces the text of a refusal code: the platform may word it otherwise, or in
      Chinese ("appkey不存在"), and the adapter must still tell what it means.
    - Checks run in this order: body is a JSON object, appkey, token, time, then the fields.
    - `syncuser/addOrEdit` replaces the whole user: an omitted optional field is stored as "",
      and an omitted or empty `facePicture` deletes the photo on an edit (stated for empty) and
      means "no photo" on an add. Platform ids are sequential integers as strings, kept on edit.
    - `syncdept/addOrEdit`: an empty or omitted `thirdParentId` is the top level; a parent must
      exist; a move under itself or a descendant is refused (2003).
    - `syncuser/delete` and `syncdept/delete` ignore unknown thirdIds (success). A department
      delete is atomic: if any listed department still has users, or sub-departments not listed
      in the same call, nothing is deleted (2003). At most 50 ids per call (2001 above).
    - `pic/upload` needs standard base64 of JPEG or PNG bytes and answers a photoId
      `<32 hex>.<jpg|png>`; photos stay stored after users stop pointing at them.
      `pic/download` answers the bytes with their image Content-Type, or a JSON refusal.
    - Length limits: thirdId / thirdDeptId / thirdParentId <= 100 characters; no other limits.
    """

    LOGIN: ClassVar[Mapping[str, str]] = {"appkey": "7ea24d0a", "secret": "sophon-sim-secret"}

    def __init__(
        self,
        *,
        appkey: str = LOGIN["appkey"],
        secret: str = LOGIN["secret"],
        time_window: float | None = DEFAULT_TIME_WINDOW,
        auth_http_status: int = 200,
        clock: Callable[[], float] = time.time,
        faults: Faults | None = None,
    ) -> None:
        super().__init__(faults=faults)
        self.appkey = appkey
        self.secret = secret
        self.time_window = time_window
        self.auth_http_status = auth_http_status
        self.clock = clock
        #: Refusal code -> the message text answered in place of the simulator's own.
        self.messages: dict[int, str] = {}
        #: thirdId -> {"id", "name", "thirdId", "thirdParentId"}.
        self.departments: dict[str, dict[str, str]] = {}
        #: thirdId -> {"id", "thirdId", "name", "jobNumber", "mail", "phone", "thirdDeptId",
        #: "facePicture"}.
        self.users: dict[str, dict[str, str]] = {}
        #: photoId -> image bytes.
        self.photos: dict[str, bytes] = {}
        self._ids = itertools.count(1)

    # -- the uniform inspection API --------------------------------------------------------

    def person_names(self) -> dict[str, str]:
        return {third_id: user["name"] for third_id, user in self.users.items()}

    def photo_of(self, person_id: str) -> bytes | None:
        user = self.users.get(person_id)
        if user is None or not user["facePicture"]:
            return None
        return self.photos.get(user["facePicture"])

    def add_person(self, person_id: str, name: str) -> None:
        """A user created by hand in the web UI, in no synced department."""
        self.users[person_id] = _user(str(next(self._ids)), person_id, name=name)

    def add_department(self, third_id: str, name: str, parent: str = "") -> None:
        """A department created by hand (for seeding)."""
        self.departments[third_id] = {
            "id": str(next(self._ids)),
            "name": name,
            "thirdId": third_id,
            "thirdParentId": parent,
        }

    # -- the server ----------------------------------------------------------------------

    def routes(self) -> list[Route]:
        return [
            Route("POST", f"{PREFIX}/pic/upload", self._signed(self._upload), write=True),
            Route("POST", f"{PREFIX}/pic/download", self._signed(self._download)),
            Route("POST", f"{PREFIX}/syncdept/addOrEdit", self._signed(self._dept), write=True),
            Route("POST", f"{PREFIX}/syncdept/delete", self._signed(self._dept_delete), write=True),
            Route("POST", f"{PREFIX}/syncuser/addOrEdit", self._signed(self._user), write=True),
            Route("POST", f"{PREFIX}/syncuser/delete", self._signed(self._user_delete), write=True),
        ]

    def error_response(self, status: int, message: str) -> web.Response:
        return _envelope(None, http_status=status, status=status, message=message)

    def _signed(self, handler: _BodyHandler) -> Handler:
        """The checks every route shares: content type, JSON object body, appkey, token, time."""

        async def checked(request: web.Request) -> web.StreamResponse:
            if request.content_type != "application/json":
                return self.error_response(415, "Content-Type must be application/json")
            raw = await request.read()
            try:
                body = self._authenticate(request, raw)
                return handler(request, body)
            except _Refused as refused:
                auth = refused.status in (APPKEY_ERROR, TOKEN_ERROR)
                return _envelope(
                    None,
                    http_status=self.auth_http_status if auth else 200,
                    status=refused.status,
                    message=self.messages.get(refused.status, refused.message),
                )

        return checked

    def _authenticate(self, request: web.Request, raw: bytes) -> dict[str, Any]:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _Refused(PARAM_ERROR, "parameter error: body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _Refused(PARAM_ERROR, "parameter error: body must be a JSON object")
        if not isinstance(body.get("appkey"), str) or body["appkey"] != self.appkey:
            raise _Refused(APPKEY_ERROR, "appkey not exist")
        # The signature covers the bytes received, so any re-serialisation by a client breaks it.
        expected = sign(request.path, raw, self.secret)
        if not hmac.compare_digest(request.query.get("token", "").encode(), expected.encode()):
            raise _Refused(TOKEN_ERROR, "token error")
        sent = body.get("time")
        if not _is_int(sent):
            raise _Refused(TIME_ERROR, "time expired: time must be milliseconds since the epoch")
        window = self.time_window
        if window is not None and abs(self.clock() * 1000 - sent) > window * 1000:
            raise _Refused(TIME_ERROR, "time expired: check the caller's clock")
        return body

    # -- pictures --------------------------------------------------------------------------

    def _upload(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        note_items(request, 0)  # a photo alone carries no person
        _required(body, "photoName")
        encoded = _required(body, "photoByteStr")
        try:
            image = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise _Refused(PARAM_ERROR, "parameter error: photoByteStr is not base64") from None
        found = _image_kind(image)
        if found is None:
            raise _Refused(PARAM_ERROR, "parameter error: the photo must be a JPEG or PNG image")
        photo_id = f"{uuid.uuid4().hex}.{found[0]}"
        self.photos[photo_id] = image
        return _envelope({"photoId": photo_id})

    def _download(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        photo_id = _required(body, "photoId")
        image = self.photos.get(photo_id)
        if image is None:
            raise _Refused(NOT_FOUND, f"photo not exist: {photo_id}")
        found = _image_kind(image)
        media_type = found[1] if found is not None else "application/octet-stream"
        return web.Response(body=image, content_type=media_type)

    # -- departments -----------------------------------------------------------------------

    def _dept(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        note_items(request, 0)  # a department is not a person
        name = _required(body, "name")
        third_id = _third_id(body, "thirdId", required=True)
        parent = _third_id(body, "thirdParentId", required=False)
        if parent:
            if parent not in self.departments:
                raise _Refused(NOT_FOUND, f"parent department not exist: {parent}")
            ancestor = parent
            while ancestor:
                if ancestor == third_id:
                    raise _Refused(CONFLICT, f"department {third_id} cannot be its own ancestor")
                ancestor = self.departments[ancestor]["thirdParentId"]
        existing = self.departments.get(third_id)
        platform_id = existing["id"] if existing is not None else str(next(self._ids))
        self.departments[third_id] = {
            "id": platform_id,
            "name": name,
            "thirdId": third_id,
            "thirdParentId": parent,
        }
        return _envelope({"id": platform_id})

    def _dept_delete(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        note_items(request, 0)
        listed = {i for i in _id_list(body) if i in self.departments}
        populated = {user["thirdDeptId"] for user in self.users.values()}
        for third_id in sorted(listed):
            if third_id in populated:
                raise _Refused(CONFLICT, f"department {third_id} still has users")
            if any(
                d["thirdParentId"] == third_id and d["thirdId"] not in listed
                for d in self.departments.values()
            ):
                raise _Refused(CONFLICT, f"department {third_id} still has sub-departments")
        for third_id in listed:
            del self.departments[third_id]
        return _envelope(None)

    # -- users -----------------------------------------------------------------------------

    def _user(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        note_items(request, 1)
        name = _required(body, "name")
        third_id = _third_id(body, "thirdId", required=True)
        dept = _third_id(body, "thirdDeptId", required=True)
        if dept not in self.departments:
            raise _Refused(NOT_FOUND, f"department not exist: {dept}")
        optional = {key: _optional(body, key) for key in ("jobNumber", "mail", "phone")}
        picture = _optional(body, "facePicture")
        if picture and picture not in self.photos:
            raise _Refused(NOT_FOUND, f"facePicture not exist: {picture}")
        existing = self.users.get(third_id)
        platform_id = existing["id"] if existing is not None else str(next(self._ids))
        # A whole replacement: an empty facePicture on an edit deletes the stored photo.
        self.users[third_id] = _user(
            platform_id, third_id, name=name, dept=dept, picture=picture, **optional
        )
        return _envelope({"id": platform_id, "thirdid": third_id})

    def _user_delete(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        ids = _id_list(body)
        note_items(request, len(ids))
        for third_id in ids:
            self.users.pop(third_id, None)  # an unknown thirdId is not an error
        return _envelope(None)


def _envelope(
    data: object, *, http_status: int = 200, status: int = OK, message: str = "SUCCESS"
) -> web.Response:
    document: dict[str, Any] = {"status": status, "message": message}
    # The documented successes without a payload carry no data key; refusals carry null.
    if data is not None or status != OK:
        document["data"] = data
    return web.Response(
        status=http_status,
        body=orjson.dumps(document),
        content_type="application/json",
        charset="UTF-8",
    )


def _user(
    platform_id: str,
    third_id: str,
    *,
    name: str,
    dept: str = "",
    picture: str = "",
    jobNumber: str = "",  # the vendor's field names, so a body's fields pass straight in
    mail: str = "",
    phone: str = "",
) -> dict[str, str]:
    return {
        "id": platform_id,
        "thirdId": third_id,
        "name": name,
        "jobNumber": jobNumber,
        "mail": mail,
        "phone": phone,
        "thirdDeptId": dept,
        "facePicture": picture,
    }


def _is_int(value: object) -> TypeGuard[int]:
    # bool is an int subclass; JSON true is not a time.
    return isinstance(value, int) and not isinstance(value, bool)


def _required(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise _Refused(PARAM_ERROR, f"parameter error: {key} is required")
    return value


def _optional(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Refused(PARAM_ERROR, f"parameter error: {key} must be a string")
    return value


def _third_id(body: dict[str, Any], key: str, *, required: bool) -> str:
    value = _required(body, key) if required else _optional(body, key)
    if len(value) > MAX_THIRD_ID:
        raise _Refused(PARAM_ERROR, f"parameter error: {key} is longer than {MAX_THIRD_ID}")
    return value


def _id_list(body: dict[str, Any]) -> list[str]:
    ids = body.get("thirdIds")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise _Refused(PARAM_ERROR, "parameter error: thirdIds must be a non-empty string array")
    if len(ids) > MAX_DELETE:
        raise _Refused(PARAM_ERROR, f"parameter error: at most {MAX_DELETE} thirdIds per call")
    return ids


def _image_kind(image: bytes) -> tuple[str, str] | None:
    for magic, found in _MAGICS.items():
        if image.startswith(magic):
            return found
    return None
